"""onnxruntime (CPU) runner for the ONNX towers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from converters.app.artifact import Artifact
from converters.errors import ArtifactError


def session(model: str | bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU session for a model file (or serialized model); `threads=0` lets onnxruntime use every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise to a user
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxTower:
    def __init__(self, artifact: Artifact, threads: int = 0):
        try:
            self.session = session(str(artifact.model_file), threads)
        except Exception as error:  # onnxruntime reports a bad file as InvalidProtobuf, Fail, …
            raise ArtifactError(f"onnxruntime cannot load {artifact.model_file}: {error}") from None
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != [t.name for t in artifact.spec.inputs]:
            raise ArtifactError(
                f"{artifact.model_file} takes {graph_inputs}, but the manifest says {artifact.key} takes "
                f"{[t.name for t in artifact.spec.inputs]}: the file is not that artifact; convert again."
            )
        self.input = artifact.spec.inputs[0]
        self.is_text = self.input.role == "token_ids"

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if self.is_text:
            inputs = trim_padding(inputs)
        feed = {self.input.name: inputs.astype(self.input.dtype, copy=False)}
        return self.session.run(None, feed)[0]


def trim_padding(token_ids: np.ndarray) -> np.ndarray:
    """Drop the columns that are padding in every row.

    The attention mask gives padded positions a weight of exp(-10000) == 0 in
    fp32, so the embedding does not depend on them; a 10-character query then
    costs 12 positions instead of 52.
    """
    used = np.flatnonzero(token_ids.any(axis=0))
    return token_ids[:, : used[-1] + 1] if used.size else token_ids
