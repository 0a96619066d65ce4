"""The pipeline is the ordered list of stages; `convert` runs the selected ones, checking each artifact as it goes.

Each stage runs per tower, consumes its parent's artifact and is skipped when
the digest of its inputs (parent content, stage options) matches what the
manifest recorded and the recorded files still verify. A stage writes into a
staging folder, its files are renamed into the bundle, and only then does the
manifest list them: an interrupted run leaves nothing the manifest calls good.

With parity on, every artifact is checked against PyTorch as soon as it
exists, and a stage is not built on a parent that failed its check.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

from converters import __version__
from converters.app.artifact import Artifact
from converters.app.fsutil import (
    ensure_writable,
    own_folder,
    publish,
    sha256_text,
    staging_dir,
)
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.specs import DEFAULT_STAGES, STAGE_NAMES, STAGE_SPECS, TOWERS
from converters.errors import ConversionError, UserError
from converters.export import bundle_facts, checkpoint, smoothing
from converters.export.bundle_parity import parity_checker
from converters.export.config import ModelConfig
from converters.export.context import StageContext
from converters.export.stages import Stage, registered
from converters.export.towers import ModelTower
from converters.progress import Note, Progress, StageStep
from converters.validate.parity import ParityChecker
from converters.validate.report import ParityReport


@dataclass(frozen=True)
class ConvertRequest:
    config: ModelConfig
    out_dir: Path
    checkpoint: str | None  # a path, "random", or None for the official release
    cache_dir: Path
    stages: tuple[str, ...] = DEFAULT_STAGES  # as the command line: the stages asked for by name are not built unasked
    parity: bool = True


@dataclass(frozen=True)
class Conversion:
    manifest: Manifest
    parity: ParityReport | None  # None when parity was not asked for


def parse_stages(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGE_SPECS]
    if unknown or not names:
        raise UserError(f"Unknown stage(s) {', '.join(unknown) or '(none given)'}; the stages are: {', '.join(STAGE_NAMES)}.")
    return tuple(name for name in STAGE_NAMES if name in names)


def descendants(stage: str) -> list[str]:
    children = [name for name, candidate in STAGE_SPECS.items() if candidate.parent == stage]
    return children + [d for child in children for d in descendants(child)]


def ancestry(stage: str) -> list[str]:
    """The stage and every stage it is built from, first one first."""
    parent = STAGE_SPECS[stage].parent
    return [*(ancestry(parent) if parent else []), stage]


def convert(request: ConvertRequest, progress: Progress) -> Conversion:
    layout = BundleLayout(request.out_dir)
    # The weights first: a checkpoint refused up front leaves no folder behind.
    source = checkpoint.resolve(request.config, request.checkpoint, request.cache_dir)
    ensure_writable(layout.root)
    with layout.exclusive():
        conversion = _Conversion(request, source, layout, progress)
        manifest = conversion.run()
        report = conversion.checker.finish() if conversion.checker else None
        if conversion.checker is None and conversion.built:
            conversion.forget_checks()
        shutil.rmtree(layout.staging, ignore_errors=True)
    return Conversion(manifest, report)


class _Conversion:
    def __init__(self, request: ConvertRequest, source: checkpoint.CheckpointSource, layout: BundleLayout, progress: Progress):
        self.request, self.config, self.layout, self.progress = request, request.config, layout, progress
        # Holding the lock, anything in the staging folder is left over from a killed run.
        shutil.rmtree(layout.staging, ignore_errors=True)
        self.source = source
        # Artifacts of other weights or another model are never reused.
        self.manifest = Manifest.load_or_new(layout.manifest, self.config.name, self.source.digest)
        bundle_facts.record(self.manifest, self.config, self.source, lambda: self.loaded().logit_scale)
        self.manifest.save()
        self.checker = self._checker() if request.parity else None
        self.built = False

    @functools.cache
    def loaded(self) -> checkpoint.LoadedModel:
        self.progress(Note(f"loading {self.source.description}"))
        return checkpoint.run(self.config, self.source)

    @functools.cache
    def exported_model(self):
        """What the export stages read: the checkpoint's model, smoothed when the config asks (parity's reference
        stays the checkpoint's own, so the fp32 stages check that smoothing changed nothing)."""
        return smoothing.smooth(self.loaded().model, self.config, self.manifest.image_transform())

    def _checker(self) -> ParityChecker:
        return parity_checker(self.config, self.manifest, self.loaded, self.progress)

    def run(self) -> Manifest:
        steps = [(name, tower) for name in self.request.stages for tower in TOWERS]
        for number, (name, tower) in enumerate(steps, start=1):
            step = functools.partial(StageStep, number, len(steps), tower, name)
            stage, options = registered()[name], self.config.stage_options(name)
            digest = self._digest(stage, tower, options)
            if self.manifest.is_current(tower, name, digest):
                self.progress(step("up to date"))
                continue
            parent = self._parent(stage, tower)
            if isinstance(parent, str):
                self.progress(step("not built", parent))
                continue
            self.progress(step("running"))
            self._build(stage, tower, options, parent, digest)
        return self.manifest

    def _parent(self, stage: Stage, tower: str) -> Artifact | ModelTower | str:
        """What the stage consumes, or why it cannot be built (a parent missing or failing parity)."""
        if stage.parent is None:
            return ModelTower(self.exported_model(), self.config, tower)
        artifact = self.manifest.artifact(tower, stage.parent)
        if self.checker and not self.checker.check(artifact).passed:
            return f"its parent {artifact.key} fails parity"
        return artifact

    def _digest(self, stage: Stage, tower: str, options) -> str:
        if stage.parent is None:
            smoothing = self.config.smoothing.model_dump_json() if self.config.smoothing.enabled else ""
            parent_digest = sha256_text(self.source.digest, tower, smoothing)
        elif (entry := self.manifest.entry(tower, stage.parent)) is None:
            raise UserError(
                f"Stage '{stage.name}' needs the '{stage.parent}' artifact of the {tower} tower first; "
                f"run convert with --stages {','.join(ancestry(stage.name))}."
            )
        else:
            parent_digest = sha256_text(*(f.sha256 for f in entry.files))
        # The package version is part of the digest: a new converter rebuilds what an old one made; so is a tool
        # environment's version and revision.
        tool_env = [stage.tool_env.name, stage.tool_env.key] if stage.tool_env else []
        return sha256_text(stage.name, __version__, *tool_env, options.model_dump_json(), parent_digest)

    def _build(self, stage: Stage, tower: str, options, parent, digest: str) -> None:
        with staging_dir(self.layout.staging) as workdir:
            try:
                artifact: Artifact = stage.run(parent, options, StageContext(self.manifest, workdir))
            except ConversionError as error:
                raise self._with_log(error) from None
            for stale in (stage.name, *descendants(stage.name)):
                self.manifest.forget(f"{tower}.{stale}")
            self.manifest.save()
            self.manifest.record(artifact.moved_to(publish(list(artifact.files), self.layout.root)), digest)
            self.manifest.save()
            self.built = True
        if self.checker:
            self.checker.check(self.manifest.artifact(tower, stage.name))

    def forget_checks(self) -> None:
        """Artifacts rebuilt without a parity check: the report and golden vectors of the old ones would lie."""
        for stale in (self.layout.parity_json, self.layout.parity_md, self.layout.golden):
            stale.unlink(missing_ok=True)
        for role in [role for role in self.manifest.files if role.startswith("golden")]:
            del self.manifest.files[role]
        self.manifest.save()

    def _with_log(self, error: ConversionError) -> ConversionError:
        """Keep a failed converter's log in the bundle, where the message says it is."""
        if error.log is None:
            return error
        name, text = error.log
        path = own_folder(self.layout.logs) / name
        path.write_text(text, encoding="utf-8")
        return ConversionError(f"{error} Full log: {path}")
