"""onnxruntime runner for the ONNX towers: on the CPU, or on a CUDA GPU with onnxruntime-gpu.

An artifact's `runtime_options` are onnxruntime session config entries, on or off; the ONNX stages record
`RUNTIME_OPTIONS`, so an app sets what parity measured with.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from converters.app.artifact import Artifact
from converters.errors import ArtifactError, UserError


# Denormal floats flushed to zero: heavy-tailed (trained-like) weights make them, and each costs a slow
# microcode path on x86 (the stress ViT-B-16 onnx-int8 image tower went from 141 to 96 ms with it when the work
# was planned); they are below 1.2e-38, so no embedding moves (parity checks). onnxruntime sets the flags on its
# own threads, and on the calling thread when the process's first session asks for them: the rest of that
# thread's arithmetic (numpy's too) then flushes as well (tests/app/runtimes/test_onnx_runtime.py).
RUNTIME_OPTIONS = {"session.set_denormal_as_zero": True}
KNOWN_OPTIONS = frozenset(RUNTIME_OPTIONS)
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDER = "CUDAExecutionProvider"  # onnxruntime-gpu's, on the device CUDA_VISIBLE_DEVICES (Ray) leaves first


def session(
    model: str | bytes, threads: int = 0, runtime_options: dict[str, bool] | None = None, gpu: bool = False,
) -> ort.InferenceSession:
    """A session for a model file (or serialized model) with an artifact's `runtime_options` (none: onnxruntime's
    defaults), on the CPU or the `gpu`; `threads=0` lets onnxruntime use every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise to a user
    for key, on in (runtime_options or {}).items():
        options.add_session_config_entry(key, "1" if on else "0")
    return ort.InferenceSession(model, options, providers=[GPU_PROVIDER, CPU_PROVIDER] if gpu else [CPU_PROVIDER])


def _require_cuda() -> None:
    """onnxruntime runs a GPU session on the CPU when its build has no CUDA: a GPU run refuses that instead."""
    available = ort.get_available_providers()
    if GPU_PROVIDER not in available:
        raise UserError(
            f"onnxruntime {ort.__version__} on this machine has no {GPU_PROVIDER} (it has {', '.join(available)}): "
            "a GPU needs onnxruntime-gpu, and CUDA, in place of onnxruntime."
        )


class OnnxTower:
    def __init__(self, artifact: Artifact, threads: int = 0, gpu: bool = False):
        unknown = [key for key, value in artifact.runtime_options.items() if key not in KNOWN_OPTIONS or not isinstance(value, bool)]
        if unknown:
            raise ArtifactError(f"{artifact.key}: this runner knows no onnxruntime option {unknown} "
                                f"(it knows {sorted(KNOWN_OPTIONS)}, on or off); convert again.")
        if gpu:
            _require_cuda()
        try:
            self.session = session(str(artifact.model_file), threads, artifact.runtime_options, gpu)
        except Exception as error:  # onnxruntime reports a bad file as InvalidProtobuf, Fail, …
            raise ArtifactError(f"onnxruntime cannot load {artifact.model_file}: {error}") from None
        if gpu:
            if self.session.get_providers()[0] != GPU_PROVIDER:  # CUDA's libraries missing: a warning, then the CPU
                raise UserError(f"onnxruntime could not start CUDA for {artifact.model_file} (it would run on "
                                f"{', '.join(self.session.get_providers())}); see its warning above.")
            self.session.disable_fallback()  # a failed GPU run is an error, not a silent rerun on the CPU
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
