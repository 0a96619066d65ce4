"""The reference photo search engine: index a folder with any converted artifact, search it by text or image.

    store.py     the index database (SQLite): batches written, the rows loaded (again: only what changed)
    schema.py    its tables and format version
    photos.py    the loaded photos: facts, float16 vectors, int8 codes; wall-clock times
    stamp.py     which artifact made the embeddings; others are refused
    vectors.py   float16 rows read on demand, int8 codes, normalizing and quantizing
    scanner.py   finding photos under a folder, reading their pixels and capture times
    updater.py   the incremental indexer
    query.py     text and image queries, the time filter, top-k with rescoring
    backends.py  the int8 / exact / faiss scans that propose candidates
    render.py    results as a terminal table, JSON or a self-contained HTML page
    commands.py  the `index`, `search` and `serve` commands; options.py the options they share
    serve.py     the web app: routes and the middleware stack
    library.py   what the server holds, reloaded when the index or bundle changes under it
    network.py   Host check, body limits, same-origin POSTs, security headers
    auth.py      the household password: hash, sessions, Basic, delays
    pages.py     the search, status and sign-in pages

Torch-free, like the rest of the app side: it uses the bundle API and nothing
of the converter (tests/search/test_commands.py checks this).
"""
