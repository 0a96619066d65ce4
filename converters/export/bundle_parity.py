"""Parity of a bundle against its own checkpoint: the checker a conversion uses as it goes, and `parity` on a
finished bundle. The PyTorch reference is cached in the bundle; with the cache, checking imports neither torch
nor cn_clip (the checkpoint is loaded only when the reference must be computed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.errors import ArtifactError
from converters.export.config import ModelConfig
from converters.progress import Progress
from converters.validate.client import CppClient
from converters.validate.fidelity import Embeddings
from converters.validate.parity import ParityChecker, parity_set_for, reference_embeddings
from converters.validate.report import ParityReport


def parity_checker(config: ModelConfig, manifest: Manifest, model: Callable[[], object], progress: Progress) -> ParityChecker:
    """A checker for the bundle's artifacts; `model()` gives the loaded checkpoint when the reference is not cached."""
    parity_set = parity_set_for(manifest)

    def compute(parity_set) -> Embeddings:
        return model().reference(parity_set, manifest.tokenizer["context_length"])

    reference = reference_embeddings(manifest, parity_set, compute, progress)
    return ParityChecker(config.parity_settings(), manifest, parity_set, reference, progress)


def run_parity(config: ModelConfig, layout: BundleLayout, progress: Progress,
               clients: Sequence[CppClient] = ()) -> ParityReport:
    """Check an existing bundle, holding its lock (a conversion may not write into it meanwhile)."""
    with layout.exclusive():
        manifest = Manifest.load(layout.manifest)
        manifest.require_model(config.name)
        if not manifest.stages():
            raise ArtifactError(f"{layout.manifest} lists no artifacts, so there is nothing to check; run convert first.")

        def recorded_checkpoint():
            from converters.export.checkpoint import load_recorded

            return load_recorded(config, manifest)

        return parity_checker(config, manifest, recorded_checkpoint, progress).finish(clients)
