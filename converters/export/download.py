"""Fetching an official checkpoint once into a cache, never using a half-done file.

The download goes into a staging folder through cn_clip's own route (Hugging
Face hub, or ModelScope with CNCLIP_DOWNLOAD_SOURCE=modelscope); the hub
resumes from its `.incomplete` file there after an interruption. Only a
complete file whose sha256 matches (when the config states one) is renamed
into the cache, so a file in the cache is always whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock

from converters.app.fsutil import sha256_file
from converters.errors import CheckpointError

Fetch = Callable[[str, Path], Path]

DOWNLOAD_HINT = (
    "Download the checkpoint on a machine with network access (the official releases are listed in "
    "Chinese-CLIP's README) and pass it with CKPT=path/to/file.pt (make) or --checkpoint (CLI), "
    "or use WEIGHTS=random for an offline pipeline check."
)


def cn_clip_fetch(release: str, staging: Path) -> Path:
    from cn_clip.clip.utils import _download

    use_modelscope = os.environ.get("CNCLIP_DOWNLOAD_SOURCE", "huggingface") == "modelscope"
    return Path(_download(release, str(staging), use_modelscope))


def fetch_release(
    release: str, file_name: str, expected_sha256: str | None, cache_dir: Path, fetch: Fetch = cn_clip_fetch
) -> Path:
    target = cache_dir / file_name
    if target.is_file():
        return target
    staging = cache_dir / ".partial" / release
    staging.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{file_name}.lock"):
        if target.is_file():  # another process finished it while we waited
            return target
        try:
            downloaded = fetch(release, staging)
        except Exception as exc:  # no network, no hub package, auth: all end the same way
            raise CheckpointError(
                f"Could not download the {release} checkpoint into {cache_dir} ({type(exc).__name__}: {exc}). "
                f"A partial download is kept in {staging} and resumed next time. {DOWNLOAD_HINT}"
            ) from None
        if expected_sha256 and (actual := sha256_file(downloaded)) != expected_sha256:
            downloaded.unlink()
            raise CheckpointError(
                f"The downloaded {release} checkpoint has sha256 {actual}, expected {expected_sha256}; it was deleted. "
                "Try again; if it persists, the mirror serves another file than the config expects."
            )
        os.replace(downloaded, target)
        shutil.rmtree(staging, ignore_errors=True)
    return target
