"""PyTorch module → ncnn .param/.bin through pnnx, with every output checked.

pnnx exits 0 whether or not the graph it wrote is usable (an operator ncnn
lacks stays in the .param under its torch name; a layout it cannot map only
prints a warning), and its Python wrappers do not even look at the exit
status. So `convert_with_pnnx` runs the pnnx binary itself and fails with
the tail of pnnx's log when the exit status is not 0, an output is missing,
pnnx reported an unsupported construct, a layer type is unknown to ncnn,
or ncnn cannot load the pair.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import NoReturn, Sequence

import ncnn
import pnnx
import torch
from torch import nn

from converters.errors import ConversionError

LOG_TAIL_LINES = 40


_PNNX_TYPES = {"float32": "f32", "int64": "i64", "int32": "i32"}
# pnnx's words for a construct it wrote but could not map; the graph then computes something else.
_UNSUPPORTED = re.compile(r"not supported", re.IGNORECASE)


def _shape_arg(tensors: Sequence[torch.Tensor]) -> str:
    def one(tensor: torch.Tensor) -> str:
        return f"[{','.join(map(str, tensor.shape))}]{_PNNX_TYPES[str(tensor.dtype).removeprefix('torch.')]}"

    return ",".join(one(tensor) for tensor in tensors)


def _tail(log: str) -> str:
    return "\n".join(log.rstrip().splitlines()[-LOG_TAIL_LINES:])


def convert_with_pnnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    param: Path,
    binary: Path,
    fp16: bool,
    *,
    dynamic_example: Sequence[torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    """Trace `module` on `example_inputs` and convert it with pnnx into `param` and `binary`.

    `dynamic_example` is a second set of inputs whose differing dims pnnx
    declares dynamic in the graph. `fp16` stores the weights as fp16. pnnx's
    intermediate files are deleted; on failure its log travels with the error.
    """
    param.parent.mkdir(parents=True, exist_ok=True)
    for stale in (param, binary):
        stale.unlink(missing_ok=True)
    # pnnx also writes its own graph, Python code and ONNX file, each as large as the model.
    scratch = param.with_suffix(".pnnx")
    scratch.mkdir(exist_ok=True)
    try:
        traced = _trace(module, example_inputs, scratch / "model.pt")
        command = [
            pnnx.EXEC_PATH,
            str(traced),
            f"inputshape={_shape_arg(example_inputs)}",
            f"fp16={int(fp16)}",
            f"ncnnparam={param}",
            f"ncnnbin={binary}",
            f"ncnnpy={scratch / 'model_ncnn.py'}",
            f"pnnxparam={scratch / 'model.pnnx.param'}",
            f"pnnxbin={scratch / 'model.pnnx.bin'}",
            f"pnnxpy={scratch / 'model_pnnx.py'}",
            f"pnnxonnx={scratch / 'model.pnnx.onnx'}",
        ]
        if dynamic_example is not None:
            command.append(f"inputshape2={_shape_arg(dynamic_example)}")
        returncode, log = _run(command)
    finally:
        shutil.rmtree(scratch)
    check_ncnn_model(param, binary, returncode, log)
    return param, binary


def _trace(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.trace announces its deprecation
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # No check_trace: it traces a second time, and the converted graph is checked by parity instead.
        torch.jit.trace(module, tuple(example_inputs), check_trace=False).save(str(path))
    # Exporters can leave a module tree in training mode (torch.onnx.export restores the flag it
    # found); the module shares cn_clip's submodules, whose dropout must stay off.
    module.eval()
    return path


def _run(command: list[str]) -> tuple[int, str]:
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise ConversionError(f"Cannot run pnnx ({exc}); reinstall the pnnx package.") from None
    return result.returncode, " ".join(command) + "\n\n" + result.stdout


def check_ncnn_model(param: Path, binary: Path, returncode: int, log: str) -> None:
    """Raise ConversionError, with the log's tail and the whole log, unless pnnx succeeded and ncnn loads its result."""

    def fail(problem: str) -> NoReturn:
        raise ConversionError(
            f"pnnx conversion failed: {problem}.\n--- pnnx log (tail) ---\n{_tail(log)}",
            log=(f"{param.stem}.pnnx.log", log),
        )

    if returncode != 0:
        fail(f"pnnx exited with status {returncode}")
    for path in (param, binary):
        if not path.is_file() or path.stat().st_size == 0:
            fail(f"pnnx wrote no {path.name}")
    unsupported = sorted({line.strip() for line in log.splitlines() if _UNSUPPORTED.search(line)})
    if unsupported:
        fail("pnnx could not map part of the graph to ncnn (" + "; ".join(unsupported) + ")")
    unknown = sorted({kind for kind in layer_types(param) if ncnn.layer_to_index(kind) < 0})
    if unknown:
        fail(f"{param.name} uses layer types ncnn does not have: {', '.join(unknown)}")
    net = ncnn.Net()
    if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
        fail(f"ncnn cannot load {param.name} with {binary.name}")


def layer_types(param: Path) -> list[str]:
    """The layer type of each line of an ncnn .param (after the magic number and the counts line)."""
    lines = param.read_text(encoding="utf-8").splitlines()[2:]
    return [line.split()[0] for line in lines if line.strip()]


