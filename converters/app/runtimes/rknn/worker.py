"""The half of the RKNN runtime that lives in rknn-toolkit2's environment (Python 3.11, its own pins).

Run as a script by that environment's Python, never imported by the project; requests on stdin, answers on
stdout (`worker_protocol.py`, copied beside it). The toolkit's simulator runs only a model built in the same
process (a saved .rknn cannot be simulated), so one worker builds one model, then simulates it.

Requests, in the worker's folder (where the model's ONNX and calibration files lie):
- {"build": SPEC} (or SPEC as a file named on the command line: a canonical build) — load SPEC["onnx"] with its input pinned to SPEC["shape"], build for SPEC["platform"]
  (float16, or int8 on SPEC["dataset"] with SPEC["algorithm"] and SPEC["method"]; SPEC["kept"] layers in float16
  by hybrid quantization), export `model.rknn`. Answers its sha256, its description (the .rknn's own header:
  tensors, layout, mean/std), the dtypes the board's runtime takes natively, and with SPEC["verbose"] the
  compiler's layer table (where each op runs).
- {"layers": SPEC} — the tensors hybrid quantization can keep in float16, in model order.
- {"run": true} with array `input` — the built model's first output, simulated.
- {"analyse": [NPY, ...], "output_dir": DIR} — accuracy_analysis (per-layer cosine, float vs simulated).
A failure answers {"error": ...}; the worker stays up.
"""

import ast
import ctypes
import hashlib
import json
import os
import re
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_protocol import read_message, write_message  # noqa: E402

LOG = "toolkit.log"
# librknnc prints its layer table with printf on fd 1; `RKNN: [time] id op dtype target ... name`.
LAYER_ROW = re.compile(r"RKNN: \[[^\]]*\] +(\d+) +(\S+) +(\S+) +(\S+) +.*?(\S+)\s*$")
NATIVE_DTYPE = re.compile(r"default (input|output) dtype of '([^']+)' is changed from '\w+' to '(\w+)'")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _TempNames:
    """Deterministic temporary file names: the toolkit writes /tmp/tmpXXXXXXXX/check.rknn and friends, and stale
    heap bytes of random names end up in the .rknn (the spike saw 2-11 bytes differ between int8 builds)."""

    def __init__(self):
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        return f"rk{self.count:06d}"


def protocol_streams():
    """The protocol gets the original stdout; fd 1 and 2 then go to the toolkit log, where the compiler's printf
    (and the layer table) cannot corrupt a message and can be read back."""
    out = os.fdopen(os.dup(1), "wb")
    log = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = sys.stderr = os.fdopen(os.dup(log), "w", buffering=1)
    return sys.stdin.buffer, out


def log_since(offset):
    ctypes.CDLL(None).fflush(None)
    sys.stdout.flush()
    # Through fd 1, not the name: the build folder may be gone by the time a simulation fails.
    with open("/proc/self/fd/1", errors="replace") as handle:
        handle.seek(offset)
        return ANSI.sub("", handle.read())


def layer_table(text):
    rows, inside = [], False
    for line in text.splitlines():
        if "Network Layer Information Table" in line:
            inside, rows = True, []  # the last table is the final graph's
        elif inside and ("Feature Tensor Information Table" in line or "Export RKNN model" in line):
            inside = False
        elif inside and (match := LAYER_ROW.search(line)) and match.group(2) not in ("OpType",):
            rows.append({"id": int(match.group(1)), "op": match.group(2), "dtype": match.group(3),
                         "target": match.group(4), "name": match.group(5)})
    return rows


def check(code, what):
    if code != 0:
        raise RuntimeError(f"{what} returned {code}; see the toolkit's messages above it")


class Builder:
    def __init__(self):
        self.rknn, self.running = None, False

    def _new(self, spec):
        from rknn.api import RKNN

        if self.rknn is not None:
            self.rknn.release()
        self.rknn, self.running = RKNN(verbose=bool(spec.get("verbose"))), False
        options = {"target_platform": spec["platform"]}
        if spec["quantize"]:
            options.update(quantized_algorithm=spec["algorithm"], quantized_method=spec["method"])
        check(self.rknn.config(**options), "config")

    def _load(self, spec):
        self._new(spec)
        check(self.rknn.load_onnx(spec["onnx"], inputs=[spec["input"]], input_size_list=[spec["shape"]]), "load_onnx")

    def _step1(self, spec):
        """Hybrid quantization's first step: the calibrated model and its editable quantization config."""
        self._load(spec)
        check(self.rknn.hybrid_quantization_step1(dataset=spec["dataset"]), "hybrid_quantization_step1")
        stem = os.path.splitext(os.path.basename(spec["onnx"]))[0]
        return stem + ".model", stem + ".data", stem + ".quantization.cfg"

    def layers(self, spec):
        from ruamel.yaml import YAML

        parameters = YAML().load(open(self._step1(spec)[2]))["quantize_parameters"]
        # The quantized tensors of the graph come in model order, between the float input and the float output;
        # entries after the output (constants, the I/O's own int8 copies) are refused by hybrid_quantization_step2.
        names = []
        for name, entry in parameters.items():
            if name == spec["input"]:
                continue
            if entry["dtype"] != "int8":
                break
            names.append(name)
        return names

    def build(self, spec):
        start = os.fstat(1).st_size
        if spec["quantize"] and spec["kept"]:
            from ruamel.yaml import YAML

            model, data, cfg = self._step1(spec)
            yaml = YAML()
            document = yaml.load(open(cfg))
            document["custom_quantize_layers"] = {name: "float16" for name in spec["kept"]}
            with open(cfg, "w") as handle:
                yaml.dump(document, handle)
            self._new(spec)
            check(self.rknn.hybrid_quantization_step2(model_input=model, data_input=data, model_quantization_cfg=cfg),
                  "hybrid_quantization_step2")
        else:
            self._load(spec)
            check(self.rknn.build(do_quantization=spec["quantize"], dataset=spec.get("dataset")), "build")
        check(self.rknn.export_rknn("model.rknn"), "export_rknn")
        # The simulator reads the build's temporary files when it starts: start it while they are this build's.
        # A canonical build's folder is emptied by the next one, whose files take the same names; a simulator
        # started after that found no model or another's ("RKNN model does not exist", seen in CI). A refusal is
        # reported when the model is run, as before.
        text = log_since(start)  # the build's messages alone: the simulator prints its own
        self.running = self.rknn.init_runtime() == 0
        native = {name: dtype for _, name, dtype in NATIVE_DTYPE.findall(text)}
        with open("model.rknn", "rb") as handle:
            sha256 = hashlib.sha256(handle.read()).hexdigest()
        answer = {"sha256": sha256, "description": describe("model.rknn"), "native_dtypes": native}
        if spec.get("verbose"):
            answer["layers"] = layer_table(text)
        return answer

    def run(self, array):
        if not self.running:
            check(self.rknn.init_runtime(), "init_runtime (the simulator)")
            self.running = True
        formats = ["nchw"] if array.ndim == 4 else None
        return self.rknn.inference(inputs=[array], data_format=formats)[0]


def describe(path):
    """The .rknn's own header: platform, toolkit, and per tensor its layout, dtype, mean and std."""
    from rknn.base.from_compiler.rknn.fbs.Model import Model

    with open(path, "rb") as handle:
        model = Model.GetRootAsModel(handle.read(), 64)
    description = ast.literal_eval(model.Description().decode())
    return {"platform": model.TargetPlatform().decode(), "toolkit": model.ToolkitVersion().decode(),
            "tensors": description["attrs"]}


def said(error):
    """The error in a line or two: the toolkit raises ValueErrors whose text is a whole traceback; its own error
    lines (`E ...`) say more."""
    last = (str(error).strip().splitlines() or [""])[-1]
    errors = [line for line in log_since(0).splitlines() if line.startswith("E ")][-3:]
    return f"{type(error).__name__}: {last}" + ("".join(f"\n{line}" for line in errors) if errors else "")


def main():
    tempfile._name_sequence = _TempNames()
    requests, responses = protocol_streams()
    builder = Builder()
    # A canonical build is given as a file and made before anything is read from the pipe: how a pipe's bytes
    # arrive (in one read or several) moves the heap, and the heap ends up in the .rknn.
    first = [{"request": json.dumps({"build": json.load(open(sys.argv[1]))})}] if len(sys.argv) > 1 else []
    while (message := first.pop() if first else read_message(requests)) is not None:
        request = json.loads(str(message["request"]))
        try:
            if "build" in request:
                write_message(responses, builder.build(request["build"]))
            elif "layers" in request:
                write_message(responses, {"layers": builder.layers(request["layers"])})
            elif "run" in request:
                write_message(responses, {}, output=builder.run(message["input"]))
            elif "analyse" in request:
                check(builder.rknn.accuracy_analysis(inputs=request["analyse"], output_dir=request["output_dir"]),
                      "accuracy_analysis")
                write_message(responses, {})
            else:
                write_message(responses, {"error": f"unknown request {request}"})
        except Exception as error:  # answered, so that the caller can name the file; the worker stays up
            traceback.print_exc()
            write_message(responses, {"error": said(error)})


if __name__ == "__main__":
    main()
