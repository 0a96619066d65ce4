"""Run parity for every artifact a bundle lists, and write `parity.json` / `parity.md`.

The PyTorch reference embeddings are computed once per checkpoint and parity
set and cached in the bundle, so re-checking a bundle needs no model load.
"""

from __future__ import annotations

import io

import numpy as np

from converters import golden, parity
from converters.config import ModelConfig
from converters.fsutil import atomic_write_bytes, sha256_text
from converters.layout import PARITY_SET_DIR, BundleLayout
from converters.manifest import Manifest
from converters.parity_set import ParitySet, load_parity_set
from converters.pipeline import STAGES, Progress
from converters.runtimes import TowerPair, open_tower
from converters.tokenizer import Tokenizer


# One thread: a multi-threaded reduction may sum in another order on a machine
# with another core count, and the golden vectors must come out the same there.
# It also spares ncnn's OpenMP workers from spinning against other processes
# (tiny-rn: 7 ms for 14 images on one thread, 5 s on two on a loaded 2-core box).
PARITY_THREADS = 1


def run_parity(config: ModelConfig, layout: BundleLayout, progress: Progress) -> parity.ParityReport:
    manifest = Manifest.load(layout.manifest)
    parity_set = load_parity_set(PARITY_SET_DIR, config.image_resolution, Tokenizer.from_vocab(layout.vocab, config.context_length))
    reference = reference_embeddings(manifest, config, parity_set, layout, progress)
    results, embeddings = [], {"pytorch": reference}
    for stage in (name for name in STAGES if name in manifest.stages()):
        progress(f"parity: {stage}")
        visual, text = (manifest.artifact(tower, stage) for tower in ("visual", "text"))
        runners = TowerPair(open_tower(visual, PARITY_THREADS), open_tower(text, PARITY_THREADS))
        embeddings[stage] = parity.embed(runners, parity_set)
        results.append(parity.compare(stage, visual.runtime, reference, embeddings[stage], config.tolerance(stage)))
    report = parity.ParityReport(config.name, manifest.data["checkpoint"]["description"], parity_set.summary(), results)
    parity.write(report, layout.parity_json, layout.parity_md)
    golden.write(manifest, parity_set, embeddings)
    manifest.save()
    return report


def reference_embeddings(
    manifest: Manifest, config: ModelConfig, parity_set: ParitySet, layout: BundleLayout, progress: Progress
) -> parity.Embeddings:
    key = sha256_text(manifest.data["checkpoint"]["sha256"], parity_set.digest)
    if layout.reference.is_file():
        with np.load(layout.reference) as cached:
            if str(cached["key"]) == key:
                return parity.Embeddings(cached["images"], cached["texts"])
    progress("parity: computing the PyTorch reference")
    from converters.runtimes.torch_runtime import TorchEmbedder
    from converters.stages import checkpoint

    reference = parity.embed(TorchEmbedder(checkpoint.load_recorded(config, manifest).model), parity_set)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), images=reference.images, texts=reference.texts)
    atomic_write_bytes(layout.reference, buffer.getvalue())
    return reference
