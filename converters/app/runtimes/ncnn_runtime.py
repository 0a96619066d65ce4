"""ncnn runner for the towers converted by `converters.export.ncnn.pnnx`. Torch-free.

The graphs take one sample at a time (batch 1, as an app runs them): the
visual tower one [3, R, R] float32 image, the text tower one unpadded row of
token ids with the position of each id, both int32 (ncnn reads integer
blobs as int32). Blob names, dtypes and roles come from the artifact's spec,
the `ncnn::Option` settings from its `runtime_options`.
"""

from __future__ import annotations

from collections.abc import Iterator

import ncnn
import numpy as np

from converters.app.artifact import Artifact
from converters.errors import ArtifactError

# Denormal floats flushed to zero, as the ONNX artifacts ask onnxruntime (onnx_runtime.py says why). ncnn's
# Option.flush_denormals is a 0–3 field (DAZ and FTZ bits; 3, both, is ncnn's default, and ncnn sets them on x86
# only): a manifest says on or off. The Python bindings (1.0.20261020) do not expose the field, so this runner can
# only run it on, as ncnn does unless told otherwise; the C++ client sets it.
DENORMALS_FLUSHED = {"flush_denormals": True}


class NcnnTower:
    def __init__(self, artifact: Artifact, threads: int = 0):
        self.spec = artifact.spec
        self.net = ncnn.Net()
        set_options(self.net.opt, artifact.runtime_options, artifact.key)
        if threads:
            self.net.opt.num_threads = threads
        if len(artifact.files) != 2:
            raise ArtifactError(f"{artifact.key}: an ncnn model is a .param and a .bin, but {len(artifact.files)} files are listed.")
        param, binary = artifact.files
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(binary)) != 0:
            raise ArtifactError(f"ncnn cannot load {param} with {binary}; convert again.")
        self.output = self.spec.outputs[0]
        self.is_text = any(t.role == "token_ids" for t in self.spec.inputs)

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """[N, 3, R, R] float32 pixels, or [N, L] token ids padded with 0 → [N, D] float32."""
        return np.stack([self.extract(feed, [self.output.name])[0].reshape(-1) for feed in self.feeds(inputs)])

    def feeds(self, inputs: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """The ncnn inputs of each sample of a batch `embed` takes, by blob name."""
        return self._text_feeds(inputs) if self.is_text else self._image_feeds(inputs)

    def extract(self, feed: dict[str, np.ndarray], blobs: list[str]) -> list[np.ndarray]:
        """The values of `blobs` (the output, or any intermediate blob) for one sample's feed."""
        extractor = self.net.create_extractor()
        # ncnn.Mat wraps the array's memory; `feed` keeps the arrays alive until extraction.
        for name, array in feed.items():
            extractor.input(name, ncnn.Mat(array))
        values = []
        for blob in blobs:
            status, out = extractor.extract(blob)
            if status != 0:
                raise RuntimeError(f"ncnn failed to compute {blob} (status {status})")
            values.append(np.array(out, dtype=np.float32))
        return values

    def _image_feeds(self, pixels: np.ndarray):
        (spec,) = self.spec.inputs
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(spec.shape):
            raise ValueError(f"pixels must be [N, {', '.join(map(str, spec.shape))}], got {list(pixels.shape)}")
        for image in pixels:
            yield {spec.name: np.ascontiguousarray(image, dtype=spec.dtype)}

    def _text_feeds(self, token_ids: np.ndarray):
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be [N, L] padded with 0, got {list(token_ids.shape)}")
        ids, positions = self.spec.input("token_ids"), self.spec.input("position_ids")
        for row in token_ids:
            # Keeping every nonzero id at its own position is what cn_clip's mask (ids != 0) computes.
            kept = np.flatnonzero(row)
            if kept.size == 0 or kept[0] != 0:
                raise ValueError("each row of token_ids must start with [CLS] (a nonzero id)")
            yield {
                ids.name: np.ascontiguousarray(row[kept], dtype=ids.dtype),
                positions.name: kept.astype(positions.dtype),
            }


def set_options(opt: ncnn.Option, runtime_options: dict[str, bool], key: str) -> None:
    """Give an ncnn Option an artifact's `runtime_options`: Option booleans, and `flush_denormals`."""
    for option, value in runtime_options.items():
        if option in DENORMALS_FLUSHED:
            if value is not True:
                raise ArtifactError(f"{key}: runtime_options asks for flush_denormals {value!r}; this runner runs ncnn "
                                    "with its default, denormals flushed (its Python bindings cannot change it).")
        elif isinstance(value, bool) and isinstance(getattr(opt, option, None), bool):
            setattr(opt, option, value)
        else:
            raise ArtifactError(f"{key}: ncnn has no boolean Option '{option}' to set to {value!r} (ncnn {ncnn.__version__}).")
