"""The reference photo search engine: index a folder with any converted artifact, search it by text or image.

    store.py     the index file (atomic, checksummed): embeddings, int8 codes, photo facts
    stamp.py     which artifact made the embeddings; others are refused
    vectors.py   float16 rows read on demand, int8 codes, normalizing and quantizing
    scanner.py   finding photos under a folder, reading their pixels and capture times
    updater.py   the incremental indexer
    query.py     text and image queries, the time filter, top-k with rescoring
    backends.py  the int8 / exact / faiss scans that propose candidates
    render.py    results as a terminal table, JSON or a self-contained HTML page
    commands.py  the `index` and `search` commands

Torch-free, like the rest of the app side: it uses the bundle API and nothing
of the converter (tests/search/test_commands.py checks this).
"""
