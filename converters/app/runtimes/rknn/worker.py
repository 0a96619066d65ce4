"""The half of the RKNN runtime that lives in rknn-toolkit2's environment (Python 3.11, its own pins).

Run as a script by that environment's Python, never imported by the project; requests on stdin, answers on
stdout (`worker_protocol.py`, copied beside it). The toolkit's simulator runs only a model built in the same
process (a saved .rknn cannot be simulated), so one worker builds one model, then simulates it.

Requests, in the worker's folder (where the model's ONNX and calibration files lie):
- {"build": SPEC} (or SPEC as a file named on the command line: a canonical build) — load SPEC["onnx"] with its input pinned to SPEC["shape"], build for SPEC["platform"]
  (float16, or int8 on SPEC["dataset"] with SPEC["algorithm"] and SPEC["method"]; SPEC["kept"] layers in float16
  by hybrid quantization; with SPEC["normalize"], the output L2-normalized in float16: `normalized_onnx`), export
  `model.rknn`. Answers its sha256, its description (the .rknn's own header:
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
# What `normalized_onnx` names: the tower's own output (renamed), the normalization's tensors and constants. The
# toolkit derives its tensors' names from these (`..._mm`, `..._sw`), and every one of them stays in float16.
NORMALIZATION = "cnclip_norm_"


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


def normalized_onnx(path):
    """PATH with its output divided by its L2 norm, as `<stem>.normalized.onnx` beside it (external data, if any,
    still read from beside it). An int8 output has one scale for every input, fitted to the calibration samples,
    and an embedding's norm varies with the photo: RN50's stress weights gave norms of 14 to 264 on the parity set,
    and the output clipped where the calibration samples had stopped (2026-12-06). A unit vector's dimensions vary
    far less: the largest reached 0.13 on the calibration samples and 0.144 on the parity set (the same weights),
    so the output's range still comes from calibration but clips little. The mean square, not the sum (as ONNX's
    LpNormalization, which the Immich export uses, would take): a norm of 264 squares to 70,000, past float16's
    65,504."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    shape = [] if len(graph.output) != 1 else graph.output[0].type.tensor_type.shape.dim
    if not shape or not shape[-1].dim_value:
        raise ValueError(f"{path}: the output to normalize must be one tensor whose last dimension has a fixed size; "
                         f"outputs {[(o.name, str(o.type.tensor_type.shape.dim)) for o in graph.output]}")
    output, dim = graph.output[0], shape[-1].dim_value
    unnormalized = NORMALIZATION + "input"
    for node in graph.node:  # whatever made or read the output now makes or reads the unnormalized tensor
        node.input[:] = [unnormalized if name == output.name else name for name in node.input]
        node.output[:] = [unnormalized if name == output.name else name for name in node.output]
    name = {part: NORMALIZATION + part for part in ("squared", "axes", "mean_square", "root", "scaled", "inverse_root_dim")}
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    # ReduceMean takes its axes as an input from opset 18, as an attribute before.
    reduce = ({"inputs": [name["squared"], name["axes"]]} if opset >= 18 else {"inputs": [name["squared"]], "axes": [-1]})
    graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), name["axes"]),
                              numpy_helper.from_array(np.array(dim ** -0.5, np.float32), name["inverse_root_dim"])])
    graph.node.extend([
        helper.make_node("Mul", [unnormalized, unnormalized], [name["squared"]]),
        helper.make_node("ReduceMean", reduce.pop("inputs"), [name["mean_square"]], keepdims=1, **reduce),
        helper.make_node("Sqrt", [name["mean_square"]], [name["root"]]),
        helper.make_node("Div", [unnormalized, name["root"]], [name["scaled"]]),
        helper.make_node("Mul", [name["scaled"], name["inverse_root_dim"]], [output.name]),
    ])
    normalized = os.path.splitext(path)[0] + ".normalized.onnx"
    onnx.save(model, normalized)
    return normalized


def quantized_tensors(cfg, spec):
    """The tensors hybrid quantization can keep in float16, in model order: the quantization config's entries
    between the float input and the float output (entries after the output, constants and the I/O's own int8
    copies, are refused by hybrid_quantization_step2)."""
    from ruamel.yaml import YAML

    names = []
    for name, entry in YAML().load(open(cfg))["quantize_parameters"].items():
        if name == spec["input"]:
            continue
        if entry["dtype"] != "int8":
            break
        names.append(name)
    return names


def keep_in_float16(cfg, names):
    """Write `names` into the quantization config's `custom_quantize_layers`, editing its text: step 2 refuses a
    config whose scales changed, and ruamel.yaml wrote a scale of 1/(2**31 - 1) back one unit off in its last
    digit (4.656612875245797e-10 as ...796: a text tower's int32 constant)."""
    empty = "custom_quantize_layers: {}\n"
    with open(cfg) as handle:
        text = handle.read()
    if not text.startswith(empty):
        raise RuntimeError(f"{cfg} does not begin with {empty.strip()!r}, as rknn-toolkit2 2.5.0 writes it")
    # JSON strings are YAML's double-quoted scalars: names such as "onnx::Add_924" stay names.
    entries = "".join(f"  {json.dumps(name)}: float16\n" for name in names)
    with open(cfg, "w") as handle:
        handle.write("custom_quantize_layers:\n" + entries + text[len(empty):])


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
        path = normalized_onnx(spec["onnx"]) if spec.get("normalize") else spec["onnx"]
        check(self.rknn.load_onnx(path, inputs=[spec["input"]], input_size_list=[spec["shape"]]), "load_onnx")
        return path

    def _step1(self, spec):
        """Hybrid quantization's first step: the calibrated model and its editable quantization config."""
        path = self._load(spec)
        check(self.rknn.hybrid_quantization_step1(dataset=spec["dataset"]), "hybrid_quantization_step1")
        stem = os.path.splitext(os.path.basename(path))[0]
        return stem + ".model", stem + ".data", stem + ".quantization.cfg"

    def layers(self, spec):
        # The normalization's tensors always stay in float16: not the fallback's to choose.
        return [name for name in quantized_tensors(self._step1(spec)[2], spec) if not name.startswith(NORMALIZATION)]

    def build(self, spec):
        start = os.fstat(1).st_size
        if spec["quantize"] and (spec["kept"] or spec.get("normalize")):
            model, data, cfg = self._step1(spec)
            normalization = [name for name in quantized_tensors(cfg, spec) if name.startswith(NORMALIZATION)]
            if spec.get("normalize") and not normalization:
                raise RuntimeError(f"none of the quantized tensors of {cfg} is the normalization's ({NORMALIZATION}…): "
                                   "this toolkit names them otherwise, and in int8 they would clip")
            keep_in_float16(cfg, [*spec["kept"], *normalization])
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
