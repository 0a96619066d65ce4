"""The reference photo search engine: index a folder with any converted artifact, search it by text or image.

    index.py     the index file (atomic, checksummed) and the incremental indexer
    query.py     queries, the time filter, top-k with the int8 / exact / faiss backends
    render.py    results as a terminal table, JSON or a self-contained HTML page
    scale.py     latency, memory and recall at scale, for the `bench` command
    commands.py  the `index` and `search` commands

Torch-free, like the rest of the app side: it uses the bundle API and nothing
of the converter (tests/search/test_commands.py checks this).
"""
