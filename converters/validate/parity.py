"""Parity: every artifact, run in its real runtime on the parity set, against the PyTorch fp32 model.

A `ParityChecker` checks one tower artifact at a time and remembers the
result, so the pipeline can check each artifact as its stage finishes (and
never build a child from a parent that failed), and the report at the end
reuses those checks. The PyTorch reference embeddings are computed once per
checkpoint and parity set and cached in the bundle (`reference.npz`): with
the cache, a parity check imports neither torch nor cn_clip.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import numpy as np

from converters.app.artifact import Artifact
from converters.app.fsutil import atomic_write_bytes, sha256_text
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.runtimes import Embedder, open_tower
from converters.app.specs import TOWERS, runtime_of
from converters.cpu import cpu_description
from converters.data import PARITY_SET_DIR
from converters.data.parity_set import ParitySet, load_parity_set
from converters.errors import ArtifactError
from converters.progress import Note, Progress
from converters.validate import golden
from converters.validate.client import CppClient, client_parity
from converters.validate.fidelity import Embeddings, Fidelity, as_output_of, judge_top1, measure, top1_agreement
from converters.validate.report import CmodelParity, ParityReport, StageParity, write
from converters.validate.settings import ParitySettings

# One sample per call: dynamic int8 quantizes activations over the whole call, so a sample's
# embedding would depend on its batch mates. Batch 1 is what an app runs for a query, and it makes
# the golden vectors reproducible.
BATCH = 1
# One thread: a multi-threaded reduction may sum in another order on a machine with another core
# count, and the golden vectors must come out the same there. It also spares ncnn's OpenMP workers
# from spinning against other processes (tiny-rn: 7 ms for 14 images on one thread, 5 s on two on a
# loaded 2-core box).
THREADS = 1


def batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)])


def embed(embedder: Embedder, parity_set: ParitySet) -> Embeddings:
    return Embeddings(
        batched(embedder.embed_images, parity_set.pixels), batched(embedder.embed_texts, parity_set.token_ids)
    )


class ParityChecker:
    def __init__(self, settings: ParitySettings, manifest: Manifest, parity_set: ParitySet, reference: Embeddings,
                 progress: Progress):
        self.settings, self.manifest, self.parity_set = settings, manifest, parity_set
        self.reference, self.progress = reference, progress
        self._checked: dict[str, tuple[np.ndarray, Fidelity]] = {}
        self._cmodel_checked: dict[str, list[CmodelParity]] = {}

    def check(self, artifact: Artifact) -> Fidelity:
        """The artifact's parity on its tower of the parity set, measured once per content."""
        return self._measured(artifact)[1]

    def _content_key(self, artifact: Artifact) -> str:
        return sha256_text(artifact.key, *(f.sha256 for f in self.manifest.entry(artifact.tower, artifact.stage).files))

    def _tower_set(self, tower: str) -> tuple[np.ndarray, np.ndarray]:
        """The tower's inputs of the parity set and PyTorch's embeddings of them."""
        if tower == "visual":
            return self.parity_set.pixels, self.reference.images
        return self.parity_set.token_ids, self.reference.texts

    def _measured(self, artifact: Artifact) -> tuple[np.ndarray, Fidelity]:
        key = self._content_key(artifact)
        if key not in self._checked:
            runner = open_tower(artifact, THREADS)
            inputs, reference = self._tower_set(artifact.tower)
            embeddings = batched(runner.embed, inputs)
            measured = measure(as_output_of(artifact.spec, reference), embeddings, self.settings.target(artifact.stage))
            if measured.failures:
                self.progress(Note(f"parity: {artifact.key} fails: {'; '.join(measured.failures)}"))
            self._checked[key] = (embeddings, measured)
        return self._checked[key]

    def report(self) -> tuple[ParityReport, dict[str, Embeddings]]:
        """Every stage the manifest lists, each tower checked (a missing one reported missing)."""
        stages, complete = [], {"pytorch": self.reference}
        for stage in self.manifest.stages():
            self.progress(Note(f"parity: {stage}"))
            artifacts = {t: self.manifest.artifact(t, stage) for t in TOWERS if self.manifest.entry(t, stage)}
            measured = {t: self.check(a) for t, a in artifacts.items()}
            top1 = None
            # Top-1 needs both towers' embeddings, and numbers: a structural failure leaves NaN in their place.
            if len(artifacts) == len(TOWERS) and all(m.is_embedding for m in measured.values()):
                complete[stage] = Embeddings(*(self._measured(artifacts[t])[0] for t in TOWERS))
                top1 = top1_agreement(self.reference, complete[stage])
            target = self.settings.target(stage)
            failures = []
            for tower in TOWERS:
                if tower not in measured:
                    failures.append(f"{tower}: artifact missing (the conversion stopped before it); run convert again")
                else:
                    failures += [f"{tower}: {failure}" for failure in measured[tower].failures]
            failures += judge_top1(top1, target)
            stages.append(StageParity(stage, runtime_of(stage), measured.get("visual"), measured.get("text"), top1,
                                      target.model_dump(exclude_none=True), failures))
        mixed_precision = {
            f"{tower}.{stage.stage}": artifact.mixed_precision
            for stage in stages for tower in TOWERS
            if self.manifest.entry(tower, stage.stage) and (artifact := self.manifest.artifact(tower, stage.stage)).mixed_precision
        }
        report = ParityReport(
            self.settings.model, self.manifest.checkpoint.description, self.parity_set.summary(), stages, cpu_description(),
            mixed_precision,
        )
        report.cmodel = [
            row for stage in stages for tower in TOWERS
            if runtime_of(stage.stage) == "bmruntime" and self.manifest.entry(tower, stage.stage)
            for row in self.cmodel_rows(self.manifest.artifact(tower, stage.stage))
        ]
        return report, complete

    def cmodel_rows(self, artifact: Artifact) -> list[CmodelParity]:
        """Each bmodel of a bm1684x artifact on the bit-accurate simulator, on the first samples of the parity set;
        measured once per content (minutes per ViT-B-16 sample)."""
        key = self._content_key(artifact)
        if key not in self._cmodel_checked:
            self._cmodel_checked[key] = self._cmodel_rows(artifact)
        return self._cmodel_checked[key]

    def _cmodel_rows(self, artifact: Artifact) -> list[CmodelParity]:
        from converters.app.runtimes.bm1684x import BmTower

        sample = self.settings.cmodel
        count = sample.images if artifact.tower == "visual" else sample.captions
        inputs, reference = (values[:count] for values in self._tower_set(artifact.tower))
        nets = [net for net in artifact.bmodel["nets"] if sample.batch_sizes is None or net["batch"] in sample.batch_sizes]
        if not nets:
            raise ArtifactError(
                f"cmodel_parity.batch_sizes {list(sample.batch_sizes)} in {self.settings.source} matches none of "
                f"{artifact.key}'s bmodels (batch sizes {[net['batch'] for net in artifact.bmodel['nets']]}): "
                "its bit-accurate check would be empty."
            )
        rows = []
        for net in nets:
            what = "photo" if artifact.tower == "visual" else "caption"
            self.progress(Note(f"parity: {artifact.key}, batch-{net['batch']} bmodel on the bit-accurate cmodel "
                               f"({count} {what}{'s' if count > 1 else ''})"))
            started = time.perf_counter()
            runner = BmTower(artifact, THREADS, simulator="cmodel", batch=net["batch"])
            try:
                embeddings = runner.embed(inputs)
            finally:
                runner.close()
            seconds = round(time.perf_counter() - started, 1)
            target = self.settings.target(artifact.stage)
            measured = measure(as_output_of(artifact.spec, reference), embeddings, target)
            rows.append(CmodelParity(artifact.stage, artifact.tower, net["batch"], measured,
                                     seconds, target.model_dump(exclude_none=True)))
        return rows

    def finish(self, clients: Sequence[CppClient] = ()) -> ParityReport:
        """Write parity.json, parity.md and the golden vectors, and list them in the manifest;
        with `clients`, the C++ client's rows too."""
        layout = BundleLayout(self.manifest.root)
        report, complete = self.report()
        for client in clients:
            report.clients += client_parity(
                client, self.settings, self.manifest, self.parity_set, self.reference, THREADS, self.progress
            )
        write(report, layout.parity_json, layout.parity_md)
        golden.write(self.manifest, self.parity_set, complete)
        self.manifest.save()
        return report


def parity_set_for(manifest: Manifest) -> ParitySet:
    """The parity set, preprocessed and tokenized as the bundle's app does it."""
    return load_parity_set(PARITY_SET_DIR, manifest.image_transform(), manifest.text_tokenizer())


def reference_embeddings(
    manifest: Manifest, parity_set: ParitySet, compute: Callable[[ParitySet], Embeddings], progress: Progress
) -> Embeddings:
    """PyTorch's embeddings of the parity set (`compute`), from the bundle's cache when the weights and set are the same."""
    layout = BundleLayout(manifest.root)
    key = sha256_text(manifest.checkpoint.sha256, parity_set.digest)
    if layout.reference.is_file():
        try:
            with np.load(layout.reference) as cached:
                if str(cached["key"]) == key:
                    return Embeddings(cached["images"], cached["texts"])
        except Exception:  # a damaged cache (zip, npy or key errors) is computed again, like a stale one
            pass
    progress(Note("parity: computing the PyTorch reference"))
    reference = compute(parity_set)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), images=reference.images, texts=reference.texts)
    atomic_write_bytes(layout.reference, buffer.getvalue())
    return reference
