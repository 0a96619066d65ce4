"""The pipe protocol between the project and a worker in a vendor toolkit's environment.

Imported by the worker scripts (`bm1684x/worker.py`, `rknn/worker.py`), which run under the toolkit's own
Python with its own numpy: so this module needs numpy and the standard library only. Each message is one
`.npz` (numpy's stable file format, so the two numpy versions agree on it) behind an 8-byte little-endian
length: a JSON `request`/`response` string and arrays.
"""

import io
import json
import struct

import numpy as np


def read_message(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    with np.load(io.BytesIO(stream.read(size)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_message(stream, response, **arrays):
    stream.write(encode({"response": response}, arrays))
    stream.flush()


def encode(header: dict, arrays: dict) -> bytes:
    """One message: the JSON header under its key (`request` or `response`), then the arrays."""
    buffer = io.BytesIO()
    ((key, value),) = header.items()
    np.savez(buffer, **{key: np.array(json.dumps(value))}, **arrays)
    payload = buffer.getvalue()
    return struct.pack("<Q", len(payload)) + payload
