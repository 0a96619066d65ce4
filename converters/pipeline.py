"""The pipeline is the ordered list of stages; `convert` runs the selected ones.

Each stage runs per tower, consumes its parent's artifact and is skipped when
the digest of its inputs (parent content, stage options) matches what the
manifest recorded and the recorded files still verify. A stage writes into a
staging folder, its files are renamed into the bundle, and only then does the
manifest list them: an interrupted run leaves nothing the manifest calls good.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from converters import __version__, bundle_facts
from converters.artifact import Artifact
from converters.config import ModelConfig
from converters.errors import ArtifactError, UserError
from converters.fsutil import ensure_writable, publish, sha256_text, staging_dir
from converters.layout import BundleLayout
from converters.manifest import Manifest
from converters.stages import checkpoint, int8, ncnn, ncnn_fp32, ncnn_int8, onnx_export, simplify
from converters.towers import TOWERS, onnx_tower_specs

STAGES = {stage.NAME: stage for stage in (onnx_export, simplify, int8, ncnn_fp32, ncnn, ncnn_int8)}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertRequest:
    config: ModelConfig
    out_dir: Path
    checkpoint: str | None  # a path, "random", or None for the official release
    cache_dir: Path
    stages: tuple[str, ...] = tuple(STAGES)


def parse_stages(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise UserError(f"Unknown stage(s) {', '.join(unknown) or '(none given)'}; the stages are: {', '.join(STAGES)}.")
    return tuple(name for name in STAGES if name in names)


def descendants(stage: str) -> list[str]:
    children = [name for name, module in STAGES.items() if module.PARENT == stage]
    return children + [d for child in children for d in descendants(child)]


def convert(request: ConvertRequest, progress: Progress) -> Manifest:
    layout = BundleLayout(request.out_dir)
    ensure_writable(layout.root)
    try:
        with FileLock(layout.lock, timeout=0):
            return _convert_locked(request, layout, progress)
    except Timeout:
        raise UserError(
            f"Another conversion is writing into {layout.root} right now (lock {layout.lock}). "
            "Wait for it to finish, or choose another output directory."
        ) from None


def _convert_locked(request: ConvertRequest, layout: BundleLayout, progress: Progress) -> Manifest:
    config = request.config
    # Holding the lock, anything in the staging folder is left over from a killed run.
    shutil.rmtree(layout.staging, ignore_errors=True)
    source = checkpoint.resolve(config, request.checkpoint, request.cache_dir)
    # Artifacts of other weights or another model are never reused.
    manifest = Manifest.load_or_new(layout.manifest, config.name, source.digest)

    @functools.cache
    def loaded() -> checkpoint.LoadedModel:
        progress(f"loading {source.description}")
        return checkpoint.run(config, source)

    specs = onnx_tower_specs(config)
    bundle_facts.record(manifest, config, source, lambda: loaded().logit_scale)
    manifest.save()
    def parent_of(stage, tower: str) -> tuple[str, Callable[[], object]]:
        """The parent's content digest, and a thunk that produces the parent only if the stage must run."""
        if stage.PARENT == checkpoint.NAME:
            return sha256_text(source.digest, tower), lambda: loaded().tower(config, specs[tower])
        artifact = _parent_artifact(manifest, tower, stage.PARENT, stage.NAME)
        return sha256_text(*(f["sha256"] for f in manifest.entry(tower, stage.PARENT)["files"])), lambda: artifact

    steps = [(name, tower) for name in request.stages for tower in TOWERS]
    for number, (name, tower) in enumerate(steps, start=1):
        stage, options = STAGES[name], config.stage_options(name)
        parent_digest, parent = parent_of(stage, tower)
        # The package version is part of the digest: a new converter rebuilds what an old one made.
        digest = sha256_text(name, __version__, options.model_dump_json(), parent_digest)
        if manifest.is_current(tower, name, digest):
            progress(f"[{number}/{len(steps)}] {tower}.{name}: up to date")
            continue
        progress(f"[{number}/{len(steps)}] {tower}.{name}: running")
        with staging_dir(layout.staging) as workdir:
            artifact: Artifact = stage.run(parent(), options, workdir)
            for stale in (name, *descendants(name)):
                manifest.forget(f"{tower}.{stale}")
            manifest.save()
            manifest.record(artifact.moved_to(publish(list(artifact.files), layout.root)), digest)
            manifest.save()
    return manifest


def _parent_artifact(manifest: Manifest, tower: str, parent: str, stage: str) -> Artifact:
    try:
        return manifest.artifact(tower, parent)
    except ArtifactError as exc:
        raise UserError(f"Stage '{stage}' needs the '{parent}' artifact first. {exc}") from None
