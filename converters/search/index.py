"""The photo index: one file of embeddings and photo facts, and the incremental indexer that keeps it current.

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

import contextlib
import dataclasses
import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import ExifTags, Image

from converters import __version__
from converters.bundle import Bundle
from converters.errors import ArtifactError, UserError
from converters.preprocess import ImageError, load_image

INDEX_FILE = "index.cnclip"
LOCK_FILE = "index.lock"
# Photos per model call when indexing: the `index` command's default.
DEFAULT_BATCH_SIZE = 16
DEFAULT_INDEX_DIR = Path(os.environ.get("CNCLIP_INDEX", Path.home() / ".cache" / "cnclip" / "index"))
FORMAT = "cnclip-photo-index"
VERSION = 1
MAGIC = b"CNCLIPIX"
TRAILER = struct.Struct("<Q32s8s")
ALIGN = 64
CHUNK_ROWS = 65536
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
HEIF_SUFFIXES = frozenset({".heic", ".heif"})
# Photo times are wall-clock seconds since this naive epoch: EXIF DateTimeOriginal carries no time
# zone, so capture times and modification times are both compared as local wall-clock time.
WALL_EPOCH = datetime(1970, 1, 1)


class IndexFileError(UserError):
    """The index file is missing, truncated, corrupt or of another format version."""


class ArtifactMismatchError(UserError):
    """Embeddings from two different artifacts would be mixed or compared."""


class IndexBusyError(UserError):
    """Another `index` run holds the index."""


@dataclass(frozen=True)
class ArtifactStamp:
    """Which artifact made an index's embeddings; embeddings from different ids never mix."""

    id: str
    model: str
    runtime: str
    dim: int
    bundle: str

    @classmethod
    def of(cls, bundle: Bundle, runtime: str) -> "ArtifactStamp":
        root = str(Path(bundle.manifest.root).resolve())
        return cls(bundle.artifact_id(runtime), bundle.model, runtime, bundle.embedding_dim, root)

    def describe(self) -> str:
        return f"{self.model} / {self.runtime} (artifact {self.id[:12]}, bundle {self.bundle})"

    def require_same(self, other: "ArtifactStamp", index_file: Path) -> None:
        if other.id != self.id:
            raise ArtifactMismatchError(
                f"The index {index_file} was made with {self.describe()}, but this run uses {other.describe()}. "
                "Embeddings from different artifacts cannot be compared: use the same bundle and --runtime, "
                "or index into another directory with --index."
            )

    def open_bundle(self, artifacts: Path | None, index_file: Path) -> Bundle:
        """The bundle at `artifacts` (default: where this stamp's bundle was), refused unless it is this artifact."""
        if artifacts is None and not Path(self.bundle).is_dir():
            raise ArtifactError(
                f"The index {index_file} was made with the bundle at {self.bundle}, which is no longer there; "
                f"pass --artifacts with the directory of that {self.model} bundle."
            )
        bundle = Bundle.open(artifacts or self.bundle)
        self.require_same(ArtifactStamp.of(bundle, self.runtime), index_file)
        return bundle


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
class Int8Codes:
    """The vectors as int8 with one float32 scale per vector, laid out [D, N] for the int8 scan."""

    codes: np.ndarray  # int8 [D, N]
    scales: np.ndarray  # float32 [N]


class VectorFile:
    """The index's float16 vectors [N, D], read from the file on demand with `pread`.

    A search reads only the rows it rescores. A memory map would do the same,
    but keeps every page it faulted in (and the kernel's read-ahead around
    it) in the process's resident memory: measured, 1M x 512 grew by about
    40 MB per query, past 1.5 GB after 20 queries.
    """

    def __init__(self, file: Path, offset: int, count: int, dim: int):
        self._handle = open(file, "rb")
        self.offset, self.count, self.dim = offset, count, dim
        self.dtype = np.dtype(np.float16)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.count, self.dim)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        """Rows by slice, index array or int, like an array's first axis."""
        if isinstance(key, slice):
            return self._read_rows(np.arange(*key.indices(self.count)))
        rows = np.asarray(key, dtype=np.int64)
        if rows.size and (rows.min() < -self.count or rows.max() >= self.count):
            raise IndexError(f"row out of range for {self.count} vectors")
        rows = np.where(rows < 0, rows + self.count, rows)
        return self._read_rows(rows[None])[0] if rows.ndim == 0 else self._read_rows(rows)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), self.dtype)
        if not len(rows):
            return out
        row_bytes = self.dim * self.dtype.itemsize
        # One read per run of consecutive rows: the kept rows of an update are long runs.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            size = int(stop - start) * row_bytes
            data = os.pread(self._handle.fileno(), size, self.offset + int(rows[start]) * row_bytes)
            out[start:stop] = np.frombuffer(data, self.dtype).reshape(-1, self.dim)
        return out


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


# ---- embeddings -------------------------------------------------------------------------------


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, D] → int8 codes [n, D] and scales [n], with vector ≈ codes × scale.

    A scale per vector (its largest magnitude / 127) rather than one for the
    whole index keeps every vector's full 8-bit range; the scan only proposes
    candidates, which are then rescored on the float16 vectors.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1, initial=0.0) / np.float32(127)
    scales[scales == 0] = 1
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float32)


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
    with _atomic_file(file) as handle:
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


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator:
    """A file handle whose content replaces `path` only once complete and on disk.

    Like fsutil.atomic_write_bytes, but streamed: an index of 1M photos is 1.5 GB.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    header = json.loads(body)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        found = f"{header.get('format')} version {header.get('version')}"
        raise _corrupt(file, f"it is {found}; this tool reads {FORMAT} version {VERSION}")
    return header, body_start


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


# ---- finding and reading photos ---------------------------------------------------------------


def image_suffixes() -> frozenset[str]:
    """The suffixes indexed; HEIC and HEIF only where pillow-heif is installed to decode them."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return IMAGE_SUFFIXES
    register_heif_opener()
    return IMAGE_SUFFIXES | HEIF_SUFFIXES


@dataclass(frozen=True)
class FoundFile:
    path: str
    size: int
    mtime_ns: int


def find_photos(root: Path, suffixes: frozenset[str], skipped: list[str]) -> list[FoundFile]:
    """Image files under `root`, recursively, in a stable order; what cannot be listed goes to `skipped`."""
    found = []

    def note(error: OSError) -> None:
        skipped.append(f"{error.filename}: cannot list this folder: {error.strerror}.")

    for folder, folders, files in os.walk(root, onerror=note):
        # Hidden folders hold caches, thumbnails and app data (and often the index itself), not photos.
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError as error:
                skipped.append(f"{path}: cannot read its size and date: {error.strerror}.")
                continue
            found.append(FoundFile(path, stat.st_size, stat.st_mtime_ns))
    return found


def capture_time(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal as a naive local datetime, or None when absent or unreadable."""
    try:
        value = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        return datetime.strptime(str(value).strip("\0 ")[:19], "%Y:%m:%d %H:%M:%S") if value else None
    except Exception:  # EXIF in the wild is often malformed: such a photo is dated by its mtime instead.
        return None


def wall_seconds(moment: datetime) -> int:
    return int((moment - WALL_EPOCH).total_seconds())


def wall_time(seconds: int) -> datetime:
    return WALL_EPOCH + timedelta(seconds=int(seconds))


def _read_photo(found: FoundFile, bundle: Bundle) -> tuple[np.ndarray, datetime | None]:
    """One photo's model pixels and capture time; any reason it cannot be used is an ImageError."""
    image = load_image(found.path)
    try:
        # One photo at a time: a batch of full-size decoded photos would hold gigabytes.
        return bundle.pixels([image])[0], capture_time(image)
    except (OSError, ValueError) as error:
        raise ImageError(f"{found.path} cannot be converted to the model's pixels: {error}") from error


# ---- incremental indexing ---------------------------------------------------------------------


@dataclass
class UpdatePlan:
    root: str
    to_embed: list[FoundFile]
    removed: int
    unchanged: int
    skipped: list[str]  # one sentence per file or folder left out, naming it


@dataclass
class UpdateReport:
    index_file: Path
    root: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    total: int = 0
    skipped: list[str] = field(default_factory=list)


class IndexUpdater:
    """Brings an index up to date with a folder; holds the index's lock while open.

        with IndexUpdater(index_dir, bundle, "onnx") as updater:
            plan = updater.plan(photos_dir)
            report = updater.run(plan)

    Only files that are new, or whose size or mtime changed, are embedded;
    indexed files under the folder that are gone are dropped, and files under
    other indexed folders are left alone. Progress is saved every
    `checkpoint_seconds` and on Ctrl-C, so a re-run continues from it.
    """

    def __init__(self, index_dir: Path, bundle: Bundle, runtime: str, threads: int = 0):
        self.index_dir = Path(index_dir)
        self.file = self.index_dir / INDEX_FILE
        self.bundle, self.runtime, self.threads = bundle, runtime, threads
        self.stamp = ArtifactStamp.of(bundle, runtime)
        self._lock = FileLock(self.index_dir / LOCK_FILE)

    def __enter__(self) -> "IndexUpdater":
        self.index_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise IndexBusyError(
                f"Another `index` run is updating {self.index_dir}; wait for it to finish or use another --index."
            ) from None
        try:
            self._remove_leftover_temp_files()
            base = load_index(self.index_dir) if self.file.exists() else None
            if base is not None:
                base.artifact.require_same(self.stamp, self.file)
        except BaseException:
            self._lock.release()
            raise
        self._set_base(base)
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def _remove_leftover_temp_files(self) -> None:
        # A save killed before its rename leaves its temporary file; under the lock none is in use.
        for leftover in self.index_dir.glob(f".{INDEX_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def _set_base(self, base: PhotoIndex | None) -> None:
        self.base = base
        self.roots = list(base.roots) if base else []
        self.keep = np.ones(len(base) if base else 0, bool)
        self.row_of = {path: row for row, path in enumerate(base.photos.paths)} if base else {}
        self.new_vectors: list[np.ndarray] = []
        self.new_photos: list[PhotoFacts] = []
        self.changed = base is None or not base.complete  # something to save even if no file changed

    def plan(self, photos_dir: Path) -> UpdatePlan:
        root = str(Path(photos_dir).resolve())
        skipped: list[str] = []
        found = find_photos(Path(root), image_suffixes(), skipped)
        to_embed = [f for f in found if not self._is_current(f)]
        under_root = root.rstrip(os.sep) + os.sep
        seen = {f.path for f in found}
        gone = [path for path in self.row_of if path.startswith(under_root) and path not in seen]
        for path in gone:
            self._forget(path)
        if root not in self.roots:
            self.roots.append(root)
            self.changed = True
        return UpdatePlan(root, to_embed, len(gone), len(found) - len(to_embed), skipped)

    def _is_current(self, found: FoundFile) -> bool:
        row = self.row_of.get(found.path)
        if row is None:
            return False
        return self.base.photos.size[row] == found.size and self.base.photos.mtime_ns[row] == found.mtime_ns

    def run(
        self, plan: UpdatePlan, on_progress: Callable[[int], None] = lambda done: None,
        batch_size: int = 16, checkpoint_seconds: float = 60.0,
    ) -> UpdateReport:
        report = UpdateReport(
            self.file, plan.root, removed=plan.removed, unchanged=plan.unchanged, skipped=list(plan.skipped)
        )
        embedder = self.bundle.embedder(self.runtime, self.threads) if plan.to_embed else None
        last_save, save_seconds = time.monotonic(), 0.0
        try:
            for start in range(0, len(plan.to_embed), batch_size):
                batch = plan.to_embed[start : start + batch_size]
                self._embed(batch, embedder, report)
                on_progress(len(batch))
                # Never more than a tenth of the time goes to checkpoints, however large the index.
                if time.monotonic() - last_save >= max(checkpoint_seconds, 10 * save_seconds):
                    save_seconds = self._save(complete=False)
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            self._save(complete=False)
            raise
        if self.changed:
            self._save(complete=True)
        report.total = len(self.base)
        return report

    def _embed(self, batch: list[FoundFile], embedder, report: UpdateReport) -> None:
        pixels, taken, used = [], [], []
        for found in batch:
            was_indexed = self._forget(found.path)
            try:
                photo_pixels, moment = _read_photo(found, self.bundle)
            except ImageError as error:
                report.skipped.append(str(error))
                continue
            pixels.append(photo_pixels)
            taken.append(moment)
            used.append(found)
            report.updated += was_indexed
            report.added += not was_indexed
        if not used:
            return
        self.new_vectors.append(normalize_rows(embedder.embed_images(np.stack(pixels))).astype(np.float16))
        self.new_photos.append(_facts(used, taken))
        self.changed = True

    def _forget(self, path: str) -> bool:
        """Drop the indexed row of `path`, stale once the file changed; True if there was one."""
        row = self.row_of.pop(path, None)
        if row is not None:
            self.keep[row] = False
            self.changed = True
        return row is not None

    def _save(self, complete: bool) -> float:
        """Write the index, then continue from the file written (kept rows stay on disk, not in memory)."""
        started = time.monotonic()
        kept = np.flatnonzero(self.keep)
        parts = ([(self.base.vectors, kept)] if self.base else []) + [(v, None) for v in self.new_vectors]
        photos = PhotoFacts.concat(([self.base.photos.select(kept)] if self.base else []) + self.new_photos)
        try:
            save_index(self.file, self.stamp, self.roots, photos, parts, complete)
        except OSError as error:
            raise IndexFileError(
                f"Cannot write the index {self.file}: {error.strerror or error}. The previous index is kept; "
                "free some space or choose another --index, then run index again."
            ) from error
        self._set_base(load_index(self.index_dir, verify=False))
        return time.monotonic() - started


def _facts(found: list[FoundFile], taken: list[datetime | None]) -> PhotoFacts:
    modified = [datetime.fromtimestamp(f.mtime_ns / 1e9) for f in found]
    return PhotoFacts(
        [f.path for f in found],
        np.array([f.size for f in found], np.int64),
        np.array([f.mtime_ns for f in found], np.int64),
        np.array([wall_seconds(t or m) for t, m in zip(taken, modified)], np.int64),
        np.array([t is not None for t in taken], bool),
    )
