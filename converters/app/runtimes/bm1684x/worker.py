"""The half of the BM1684X runtime that lives in the tpu-mlir tool environment (Python 3.10, its own pins).

Run as a script by that environment's Python, never imported by the project:
tpu-mlir's numpy, protobuf and onnx pins cannot share a process with ours.
It reads requests from stdin and answers on stdout (`../worker_protocol.py`).

Requests:
- {"load": PATH, "simulator": "interpreter"} — a lowered graph (`*.tpu.mlir`, its weights beside it), run by
  tpu-mlir's interpreter: the compiler's numeric model of the chip, not bit-accurate.
- {"load": PATH, "simulator": "cmodel"} — a `.bmodel`, run by bmruntime on the cmodel, tpu-mlir's bit-accurate
  simulator of the chip (minutes per ViT-B-16 sample on a 2-core x86).
- {"run": true} with array `input` — the loaded model's first output for that input.
- {"ops": PATH} — the (name, type) of every op of a top-level MLIR file, for quantize tables.
A failure answers {"error": "..."}; the worker stays up for the next request.
"""

import json
import os
import sys
import traceback

import numpy as np

# The protocol's module lies one folder up; this script runs alone, with only the toolkit's libraries.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from worker_protocol import read_message, write_message  # noqa: E402

REEXEC_MARK = "CNCLIP_TPU_MLIR_ENV_SET"


def setup_environment():
    """tpu-mlir sets LD_LIBRARY_PATH and friends when imported, which only a new process sees: exec again."""
    if os.environ.get(REEXEC_MARK) != "1":
        import tpu_mlir  # noqa: F401  (its import fills os.environ)

        os.environ[REEXEC_MARK] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def protocol_streams():
    """The protocol gets the original stdout; fd 1 then points at stderr, where tpu-mlir's chatter (progress bars,
    cmodel banners, from C as well as Python) cannot corrupt a message."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return sys.stdin.buffer, out


class LoweredGraph:
    def __init__(self, path):
        import pymlir

        pymlir.set_mem_mode("value_mem")
        # The graph names its weight file relative to the working directory.
        os.chdir(os.path.dirname(os.path.abspath(path)))
        self.module = pymlir.module()
        self.module.load(os.path.basename(path))
        self.input_name, self.output_name = self.module.input_names[0], self.module.output_names[0]

    def describe(self):
        return {"inputs": list(self.module.input_names), "outputs": list(self.module.output_names)}

    def run(self, array):
        self.module.set_tensor(self.input_name, array.astype(np.float32), array.shape)
        self.module.invoke(True)
        return np.array(self.module.get_tensor(self.output_name), dtype=np.float32)


class CmodelBmodel:
    def __init__(self, path):
        import importlib

        from filelock import FileLock
        from tpu_mlir.python.tools import model_runner

        # model_runner switches the shared libcmodel.so link under this lock; so does any other tpu-mlir process.
        with FileLock("/tmp/cmodel_so.lock"):
            model_runner.link_cmodel_so("BM1684X")
            model_runner.link_bmlib_so("BM1684X")
            runtime = importlib.import_module("pyruntime_bm")
            model_runner.bind_cmodel_so("BM1684X")
        # The net lives inside the model: keep both, or the net is freed under us.
        self.model = runtime.Model(path, 0, "")
        self.net = self.model.Net(self.model.networks[0])

    def describe(self):
        def tensors(items):
            return [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.data.shape)} for t in items]

        return {"inputs": tensors(self.net.inputs), "outputs": tensors(self.net.outputs)}

    def run(self, array):
        (tensor,) = self.net.inputs
        if tuple(array.shape) != tuple(tensor.data.shape):
            raise ValueError(f"the bmodel takes {list(tensor.data.shape)}, got {list(array.shape)}")
        tensor.data[:] = array.astype(tensor.data.dtype)
        self.net.forward()
        return np.array(self.net.outputs[0].data, dtype=np.float32)


def list_ops(path):
    from tpu_mlir.python.utils.mlir_parser import MlirParser

    return [[op.name, op.type] for op in MlirParser(path).ops]


def main():
    setup_environment()
    requests, responses = protocol_streams()
    model = None
    while (message := read_message(requests)) is not None:
        request = json.loads(str(message["request"]))
        try:
            if "load" in request:
                model = (LoweredGraph if request["simulator"] == "interpreter" else CmodelBmodel)(request["load"])
                write_message(responses, model.describe())
            elif "run" in request:
                write_message(responses, {}, output=model.run(message["input"]))
            elif "ops" in request:
                write_message(responses, {"ops": list_ops(request["ops"])})
            else:
                write_message(responses, {"error": f"unknown request {request}"})
        except Exception as error:  # answered, so that the caller can name the file; the worker stays up
            traceback.print_exc()
            write_message(responses, {"error": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
