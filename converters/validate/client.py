"""Parity of the C++ reference client (`clients/cpp`), run as an app runs it, on x86_64 or aarch64.

The client reads the bundle, tokenizes the captions and decodes and resizes
the photos itself, then runs ncnn with the manifest's Options; its
embeddings are compared with the PyTorch reference under the stage's usual
tolerance. On an x86 machine an aarch64 client runs under `qemu-aarch64
-cpu max`, an emulated ARMv8.2 core with fp16 arithmetic, which ncnn's fp16
Options use there (x86 never computes in fp16). Emulation is slow, so the
client sees every caption and a few photos (those of the golden vectors).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from converters.app.manifest import Manifest
from converters.app.preprocess import Transform, load_image
from converters.cpu import cpu_description
from converters.data.parity_set import ParitySet
from converters.errors import ArtifactError, UserError
from converters.progress import Note, Progress
from converters.validate.golden import golden_rows
from converters.validate.fidelity import Embeddings, judge_client_inputs, measure
from converters.validate.report import ClientParity
from converters.validate.settings import ParitySettings

ARCHES = ("x86_64", "aarch64")
CLIENT_STAGES = ("ncnn-fp32", "ncnn-fp16", "ncnn-int8")
# Debian's qemu-user and the arm64 C library of g++-aarch64-linux-gnu.
QEMU = ("qemu-aarch64", "-cpu", "max", "-L", "/usr/aarch64-linux-gnu")
EMULATED = {"aarch64": "aarch64 emulated by qemu -cpu max (ARMv8.2, fp16 arithmetic)"}


class ClientError(UserError):
    """The C++ client is missing, cannot run here, or did not answer for every input."""


def default_binary(arch: str) -> Path:
    return Path("build") / "client" / arch / "cnclip-embed"


@dataclass
class CppClient:
    binary: Path
    arch: str

    def __post_init__(self) -> None:
        if not self.binary.is_file():
            raise ClientError(
                f"No C++ client at {self.binary}: build it with `make client ARCH={self.arch}` in the project checkout."
            )
        if self.emulated:
            if (platform.machine(), self.arch) != ("x86_64", "aarch64"):
                raise ClientError(f"An {self.arch} client cannot run on this {platform.machine()} machine.")
            if not shutil.which(QEMU[0]):
                raise ClientError(f"{QEMU[0]} is not installed, so the {self.arch} client cannot run here: "
                                  "apt-get install qemu-user (or `make client-packages ARCH=aarch64`).")

    @property
    def emulated(self) -> bool:
        return self.arch != platform.machine()

    def run(self, bundle: Path, inputs: int, arguments: list[str]) -> list[dict]:
        """One JSON record per input, in order (`arguments` name the `inputs` inputs and the stage or --no-embed)."""
        command = [*(QEMU if self.emulated else ()), str(self.binary), str(bundle), *arguments]
        done = subprocess.run(command, capture_output=True)
        if done.returncode not in (0, 1):
            raise ClientError(f"The C++ client failed (exit {done.returncode}): {done.stderr.decode(errors='replace').strip()}")
        # Split on \n only: texts may hold U+2028, which str.splitlines would also cut at.
        records = [json.loads(line) for line in done.stdout.decode().split("\n") if line]
        if len(records) != inputs:
            raise ClientError(f"The C++ client answered {len(records)} times for {inputs} inputs.")
        failed = [r["error"] for r in records if "error" in r]
        if failed:
            raise ClientError(f"The C++ client could not process {len(failed)} input(s), e.g.: {failed[0]}")
        return records

    def texts(self, bundle: Path, texts: list[str], stage: str | None, threads: int = 1) -> list[dict]:
        broken = [text for text in texts if "\n" in text]
        if broken:
            raise ClientError(f"The client reads one text per line, and {broken[0]!r} holds a line break.")
        with tempfile.TemporaryDirectory() as scratch:
            lines = Path(scratch) / "texts.txt"
            lines.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
            return self.run(bundle, len(texts), ["--texts", str(lines), *_stage_arguments(stage, threads)])

    def images(self, bundle: Path, files: list[Path], stage: str | None, threads: int = 1,
               resized_dir: Path | None = None) -> list[dict]:
        """`resized_dir`: where the client also writes each resized image, as N.png."""
        saving = ["--save-resized", str(resized_dir)] if resized_dir else []
        return self.run(bundle, len(files), ["--images", *map(str, files), *saving, *_stage_arguments(stage, threads)])


def _stage_arguments(stage: str | None, threads: int) -> list[str]:
    return ["--no-embed"] if stage is None else ["--stage", stage, "--threads", str(threads)]


def resized_rgb_differences(client: CppClient, bundle: Path, files: list[Path], transform: Transform) -> list[int]:
    """Per photo: the largest difference between the client's resized image and Pillow's, per channel value."""
    with tempfile.TemporaryDirectory() as scratch:
        client.images(bundle, files, None, resized_dir=Path(scratch))
        return [
            int(np.abs(np.asarray(Image.open(Path(scratch) / f"{n}.png"), np.int16)
                       - np.asarray(transform.resized_rgb(load_image(f)), np.int16)).max())
            for n, f in enumerate(files)
        ]


def client_parity(client: CppClient, settings: ParitySettings, manifest: Manifest, parity_set: ParitySet,
                  reference: Embeddings, threads: int, progress: Progress) -> list[ClientParity]:
    """Each ncnn stage of the bundle, run by the client on every caption and the golden photos."""
    stages = [s for s in CLIENT_STAGES if s in manifest.complete_stages()]
    if not stages:
        raise ArtifactError(f"{manifest.root} has no complete ncnn stage for the C++ client to run.")
    image_rows, _ = golden_rows(parity_set)
    files = [parity_set.image_files[row] for row in image_rows]
    captions = list(parity_set.captions)
    expected_ids = [row[row != 0].tolist() for row in parity_set.token_ids]
    resized_differences = resized_rgb_differences(client, manifest.root, files, parity_set.transform)
    rows = []
    for stage in stages:
        progress(Note(f"parity: {stage} through the C++ client on {client.arch}"))
        started = time.monotonic()
        images = _embeddings(client.images(manifest.root, files, stage, threads))
        text_records = client.texts(manifest.root, captions, stage, threads)
        seconds = time.monotonic() - started
        texts = _embeddings(text_records)
        target = settings.target(stage)
        measured = {"visual": measure(reference.images[image_rows], images, target),
                    "text": measure(reference.texts, texts, target)}
        identical = sum(r["token_ids"] == e for r, e in zip(text_records, expected_ids))
        for tower, failures in judge_client_inputs(identical, len(captions), resized_differences).items():
            measured[tower].failures += failures
        rows.append(ClientParity(
            stage=stage,
            platform=EMULATED[client.arch] if client.emulated else cpu_description(),
            visual=measured["visual"],
            text=measured["text"],
            token_ids_identical=identical,
            resized_rgb_max_differences=resized_differences,
            outputs_in_fp16=all(_fp16_values(e) for e in (images, texts)),
            seconds=round(seconds, 1),
            tolerance=target.model_dump(exclude_none=True),
        ))
    return rows


def _fp16_values(embeddings: np.ndarray) -> bool:
    """Whether every value is a float16 number: the sign that ncnn ran its fp16 kernels."""
    return bool(np.array_equal(embeddings.astype(np.float16).astype(np.float32), embeddings))


def _embeddings(records: list[dict]) -> np.ndarray:
    return np.array([r["embedding"] for r in records], dtype=np.float32)
