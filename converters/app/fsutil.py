"""File operations every stage shares: hashing, atomic writes, staged publishing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from filelock import FileLock, Timeout

from converters.errors import ArtifactError, UserError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def make_readable(path: Path) -> None:
    """Give a file the permissions a plain `open(…, "w")` would have.

    mkstemp (and onnx's external-data writer) create files readable by the
    owner only; bundles are handed to other people and build machines.
    """
    os.chmod(path, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file name beside `path` for a writer that wants a name (not a handle); when the block
    ends, the file it wrote replaces `path` whole, and never in part.

    The file is fsynced, renamed over `path`, and the folder is fsynced so the
    rename itself survives a power cut.
    """
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder where a file belongs; move the folder away, then run the same command again.")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # it names the temporary file, which the user never asked for
        raise OSError(error.errno, error.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file handle whose content replaces `path` whole when the block ends, and never in part."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that `path` holds either the old content or all of the new."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A scratch folder inside the bundle (same filesystem, so publishing is a rename), removed on exit."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(files: list[Path], destination: Path) -> list[Path]:
    """Move finished files from a staging folder into the bundle, each by an atomic rename."""
    published = []
    for file in files:
        target = destination / file.name
        make_readable(file)
        os.replace(file, target)
        published.append(target)
    return published


def own_folder(path: Path) -> Path:
    """`path` as a real folder of its own: a symlink there is removed first, so that nothing written into
    the folder lands outside it (a bundle from elsewhere may carry such links)."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ArtifactError(
            f"Cannot write into {directory}: {exc.strerror}. Choose another output directory (OUT=... or --out)."
        ) from None


@contextlib.contextmanager
def exclusive(lock_file: Path, busy: str, error: type[UserError] = UserError) -> Iterator[None]:
    """Hold `lock_file` for the block; if another process holds it, fail at once with `error(busy)`."""
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise error(busy) from None
    try:
        yield
    finally:
        lock.release()
