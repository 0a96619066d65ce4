"""The photo index file: embeddings and photo facts in one checksummed file, written atomically.

`<index dir>/index.cnclip` is laid out as

    b"CNCLIPIX" | sections, each 64-byte aligned | header (UTF-8 JSON) | trailer
    trailer = header length (uint64, little-endian) | sha256 of the header (32 bytes) | b"CNCLIPIX"

The header names the artifact that made the embeddings, the indexed folders,
and each section's dtype, shape, offset, length and sha256. It is written
last so that a save streams sections of any size without holding them twice;
the trailer at the very end makes a truncated file detectable from its last
48 bytes. A save writes a temporary file beside the index, fsyncs it and
renames it over the old one, so a crash or Ctrl-C leaves the old index whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from converters import __version__
from converters.app.fsutil import atomic_writer
from converters.errors import UserError
from converters.search.stamp import ArtifactStamp
from converters.search.vectors import Int8Codes, VectorFile, quantize

INDEX_FILE = "index.cnclip"
FORMAT = "cnclip-photo-index"
# 2: the artifact stamp names its stage (onnx-sim, …) where version 1 named a runtime (onnx, …).
VERSION = 2
MAGIC = b"CNCLIPIX"
TRAILER = struct.Struct("<Q32s8s")
ALIGN = 64
CHUNK_ROWS = 65536
# Each section's dtype and axes ("count" photos, "dim" embedding values; "n" any length).
SECTIONS = {
    "vectors": ("float16", ("count", "dim")),
    "codes": ("int8", ("dim", "count")),
    "scales": ("float32", ("count",)),
    "size": ("int64", ("count",)),
    "mtime_ns": ("int64", ("count",)),
    "time": ("int64", ("count",)),
    "captured": ("bool", ("count",)),
    "paths": ("uint8", ("n",)),
}
# Photo times are wall-clock seconds since this naive epoch: EXIF DateTimeOriginal carries no time
# zone, so capture times and modification times are both compared as local wall-clock time.
WALL_EPOCH = datetime(1970, 1, 1)


class IndexFileError(UserError):
    """The index file is missing, truncated, corrupt or of another format version."""


@dataclass
class PhotoFacts:
    """One row per photo, in the order of the index's vectors."""

    paths: list[str]
    size: np.ndarray  # int64 bytes
    mtime_ns: np.ndarray  # int64; with size, tells whether a file changed
    time: np.ndarray  # int64 wall-clock seconds since WALL_EPOCH: the EXIF capture time, else the mtime
    captured: np.ndarray  # bool: `time` comes from EXIF

    @classmethod
    def empty(cls) -> "PhotoFacts":
        return cls([], *(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.int64, bool)))

    def select(self, rows: np.ndarray) -> "PhotoFacts":
        paths = [self.paths[i] for i in rows]
        return PhotoFacts(paths, self.size[rows], self.mtime_ns[rows], self.time[rows], self.captured[rows])

    @classmethod
    def concat(cls, parts: list["PhotoFacts"]) -> "PhotoFacts":
        parts = [cls.empty(), *parts]
        columns = ("size", "mtime_ns", "time", "captured")
        return cls(
            [path for part in parts for path in part.paths],
            *(np.concatenate([getattr(part, name) for part in parts]) for name in columns),
        )


@dataclass
class PhotoIndex:
    file: Path
    artifact: ArtifactStamp
    roots: list[str]
    complete: bool  # False for a checkpoint of an interrupted run
    photos: PhotoFacts
    vectors: VectorFile | np.ndarray  # float16 [N, D], L2-normalized
    int8: Int8Codes

    def __len__(self) -> int:
        return len(self.photos.paths)


# ---- file format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Iterable[np.ndarray]


def save_index(
    file: Path, artifact: ArtifactStamp, roots: list[str], photos: PhotoFacts,
    vector_parts: list[tuple[np.ndarray, np.ndarray | None]], complete: bool,
) -> None:
    """Write the index atomically. `vector_parts` are (array, rows or None for all) in photo order."""
    count, dim = len(photos.paths), artifact.dim
    int8 = _quantize_parts(vector_parts, count, dim)
    paths = np.frombuffer(_path_blob(photos.paths), np.uint8)
    sections = [
        _Section("vectors", "float16", (count, dim), _vector_chunks(vector_parts)),
        _Section("codes", "int8", (dim, count), [int8.codes]),
        _Section("scales", "float32", (count,), [int8.scales]),
        _Section("size", "int64", (count,), [photos.size]),
        _Section("mtime_ns", "int64", (count,), [photos.mtime_ns]),
        _Section("time", "int64", (count,), [photos.time]),
        _Section("captured", "bool", (count,), [photos.captured]),
        _Section("paths", "uint8", paths.shape, [paths]),
    ]
    header = {
        "format": FORMAT,
        "version": VERSION,
        "artifact": dataclasses.asdict(artifact),
        "roots": roots,
        "count": count,
        "complete": complete,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"cnclip-converters {__version__}",
    }
    with atomic_writer(file) as handle:
        handle.write(MAGIC)
        header["sections"] = [_write_section(handle, section) for section in sections]
        body = json.dumps(header, ensure_ascii=False).encode("utf-8")
        handle.write(body)
        handle.write(TRAILER.pack(len(body), hashlib.sha256(body).digest(), MAGIC))


def _vector_chunks(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[np.ndarray]:
    # Chunked so that the kept rows of a loaded index are copied without reading them all into memory.
    for array, rows in parts:
        rows = np.arange(len(array)) if rows is None else rows
        for start in range(0, len(rows), CHUNK_ROWS):
            yield np.asarray(array[rows[start : start + CHUNK_ROWS]], dtype=np.float16)


def _quantize_parts(parts: list[tuple[np.ndarray, np.ndarray | None]], count: int, dim: int) -> Int8Codes:
    int8 = Int8Codes(np.empty((dim, count), np.int8), np.empty(count, np.float32))
    start = 0
    for chunk in _vector_chunks(parts):
        codes, int8.scales[start : start + len(chunk)] = quantize(chunk)
        int8.codes[:, start : start + len(chunk)] = codes.T
        start += len(chunk)
    if start != count:
        raise ValueError(f"{start} vectors for {count} photos")
    return int8


def _path_blob(paths: list[str]) -> bytes:
    # NUL cannot occur in a file name; surrogateescape keeps non-UTF-8 names byte for byte.
    return "\0".join(paths).encode("utf-8", "surrogateescape")


def _write_section(handle, section: _Section) -> dict:
    handle.write(b"\0" * (-handle.tell() % ALIGN))
    offset, digest, written = handle.tell(), hashlib.sha256(), 0
    for chunk in section.chunks:
        data = np.ascontiguousarray(chunk, dtype=section.dtype)
        digest.update(data)
        handle.write(data)
        written += data.nbytes
    expected = int(np.prod(section.shape, dtype=np.int64)) * np.dtype(section.dtype).itemsize
    if written != expected:
        raise ValueError(f"section {section.name}: wrote {written} bytes, its shape needs {expected}")
    return {"name": section.name, "dtype": section.dtype, "shape": list(section.shape),
            "offset": offset, "bytes": written, "sha256": digest.hexdigest()}


def load_index(index_dir: Path, verify: bool = True) -> PhotoIndex:
    """Open the index in `index_dir`; every section is checked against its sha256 unless `verify` is False.

    The vectors stay in the file (see VectorFile); the rest is read into memory.
    """
    file = Path(index_dir) / INDEX_FILE
    if not file.is_file():
        raise IndexFileError(
            f"No photo index at {file}. Build one with `python -m converters index PHOTOS --artifacts BUNDLE`, "
            "or point --index at the directory that holds it."
        )
    header, arrays = _read_file(file, verify)
    photos = PhotoFacts(_split_paths(arrays["paths"], header["count"]), arrays["size"], arrays["mtime_ns"],
                        arrays["time"], arrays["captured"])
    return PhotoIndex(file, ArtifactStamp(**header["artifact"]), header["roots"], header["complete"], photos,
                      arrays["vectors"], Int8Codes(arrays["codes"], arrays["scales"]))


def read_artifact(index_dir: Path) -> ArtifactStamp | None:
    """The artifact an index was made with, from its header alone; None when there is no index."""
    file = Path(index_dir) / INDEX_FILE
    if not file.is_file():
        return None
    with open(file, "rb") as handle:
        header, _ = _read_header(handle, file, file.stat().st_size)
    return ArtifactStamp(**header["artifact"])


def _split_paths(blob: np.ndarray, count: int) -> list[str]:
    return blob.tobytes().decode("utf-8", "surrogateescape").split("\0") if count else []


def _corrupt(file: Path, why: str) -> IndexFileError:
    return IndexFileError(
        f"The photo index {file} is unusable: {why}. "
        "Delete it and run `python -m converters index` again to rebuild it."
    )


def _read_file(file: Path, verify: bool) -> tuple[dict, dict[str, np.ndarray]]:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise _corrupt(file, "it is not a cnclip photo index (wrong first bytes)")
        header, body_start = _read_header(handle, file, size)
        arrays = {}
        for section in header["sections"]:
            _check_bounds(section, body_start, file)
            arrays[section["name"]] = _read_section(handle, file, section, verify)
    return header, arrays


def _read_header(handle, file: Path, size: int) -> tuple[dict, int]:
    if size < len(MAGIC) + TRAILER.size:
        raise _corrupt(file, f"it is only {size} bytes long, so it is truncated")
    handle.seek(size - TRAILER.size)
    length, digest, magic = TRAILER.unpack(handle.read(TRAILER.size))
    body_start = size - TRAILER.size - length
    if magic != MAGIC or body_start < len(MAGIC):
        raise _corrupt(file, "its end marker is missing, so it is truncated or was overwritten")
    handle.seek(body_start)
    body = handle.read(length)
    if hashlib.sha256(body).digest() != digest:
        raise _corrupt(file, "its header fails its sha256 check")
    try:
        header = json.loads(body)
        found = f"{header.get('format')} version {header.get('version')}"
    except (ValueError, AttributeError):
        raise _corrupt(file, "its header is not a JSON object") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise _corrupt(file, f"it is {found}; this tool reads {FORMAT} version {VERSION}")
    try:
        _check_header(header, file)
    except (KeyError, TypeError, ValueError) as error:
        raise _corrupt(file, f"its header is malformed ({type(error).__name__}: {error})") from None
    return header, body_start


def _check_header(header: dict, file: Path) -> None:
    """Names, dtypes and shapes as this tool writes them, before anything is allocated from them."""
    ArtifactStamp(**header["artifact"])
    count, dim = header["count"], header["artifact"]["dim"]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (count, dim)) or count < 0 or not 0 < dim <= 65536:
        raise ValueError(f"count {count!r} and dim {dim!r} must be whole numbers, dim from 1 to 65536")
    sections = {section["name"]: section for section in header["sections"]}
    if sorted(sections) != sorted(SECTIONS) or len(header["sections"]) != len(SECTIONS):
        raise ValueError(f"sections {sorted(sections)}, expected {sorted(SECTIONS)}")
    declared = 0
    for name, section in sections.items():
        dtype, shape = SECTIONS[name]
        expected = {"count": count, "dim": dim}
        numbers = [*section["shape"], section["offset"], section["bytes"]]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise ValueError(f"section {name}: shape, offset and bytes must be whole numbers ≥ 0")
        if section["dtype"] != dtype or len(section["shape"]) != len(shape) or any(
            expected[axis] != n for axis, n in zip(shape, section["shape"]) if axis in expected
        ):
            raise ValueError(f"section {name} is {section['dtype']} {section['shape']}, expected {dtype} {list(shape)}")
        declared += section["bytes"]
    # A sparse file can claim any size while holding almost nothing: only allocate what is on disk.
    on_disk = getattr(file.stat(), "st_blocks", None)
    if on_disk is not None and declared > on_disk * 512 + (1 << 20):
        raise ValueError(f"it declares {declared:,} bytes of data but holds {on_disk * 512:,} on disk")


def _check_bounds(section: dict, body_start: int, file: Path) -> None:
    needed = int(np.prod(section["shape"], dtype=np.int64)) * np.dtype(section["dtype"]).itemsize
    if section["bytes"] != needed or section["offset"] + section["bytes"] > body_start:
        raise _corrupt(file, f"its section '{section['name']}' does not fit its declared shape or the file")


def _read_section(handle, file: Path, section: dict, verify: bool) -> np.ndarray:
    shape, dtype = tuple(section["shape"]), np.dtype(section["dtype"])
    if section["name"] == "vectors":
        if verify:
            _check_digest(file, section, _stream_digest(handle, section))
        return VectorFile(file, section["offset"], *shape)
    array = np.empty(shape, dtype)
    view = memoryview(array.reshape(-1).view(np.uint8))
    handle.seek(section["offset"])
    if handle.readinto(view) != section["bytes"]:
        raise _corrupt(file, f"its section '{section['name']}' is cut short")
    if verify:
        _check_digest(file, section, hashlib.sha256(view).hexdigest())
    return array


def _stream_digest(handle, section: dict) -> str:
    digest, remaining = hashlib.sha256(), section["bytes"]
    handle.seek(section["offset"])
    while remaining and (block := handle.read(min(remaining, 1 << 24))):
        digest.update(block)
        remaining -= len(block)
    return digest.hexdigest()


def _check_digest(file: Path, section: dict, actual: str) -> None:
    if actual != section["sha256"]:
        raise _corrupt(file, f"its section '{section['name']}' fails its sha256 check")


def wall_seconds(moment: datetime) -> int:
    return int((moment - WALL_EPOCH).total_seconds())


def wall_time(seconds: int) -> datetime:
    return WALL_EPOCH + timedelta(seconds=int(seconds))
