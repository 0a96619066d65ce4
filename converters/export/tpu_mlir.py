"""tpu-mlir's command-line tools (model_transform, run_calibration, model_deploy), run in their own environment.

Each tool runs as a subprocess of the tpu-mlir environment
(`converters.app.runtimes.bm1684x.env`) in a scratch folder; a failure
becomes a `ConversionError` naming the tool, with the tail of its output,
and the whole output is kept as the bundle's log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np

from converters.app.runtimes.bm1684x import ToolWorker
from converters.app.runtimes.bm1684x.env import TPU_MLIR, TPU_MLIR_VERSION
from converters.errors import ConversionError

CHIP = "bm1684x"
LOG_TAIL_LINES = 12
HIGH_PRECISION_ADVICE = ("If it stopped on a compiler assertion, compiling with --high_precision may avoid it: "
                         "add the tower to the stage's `high_precision_towers` in the config. ")
# Ops that only move data: nothing to keep in F16. The fallback chooses among the rest.
DATA_MOVEMENT_OPS = frozenset({
    "top.Input", "top.Weight", "top.None", "top.Reshape", "top.Permute", "top.Squeeze", "top.Unsqueeze",
    "top.Slice", "top.Concat", "top.Gather", "top.Tile", "top.Expand", "top.Flatten",
})


def run_tool(tool: str, arguments: list[str], cwd: Path, what: str, advice: str = "") -> str:
    """Run one tpu-mlir command in `cwd`; its output, or a ConversionError with the tail of it (`what`: which tower,
    stage and batch size, for the message and the log's name)."""
    # A session of its own: tpu-mlir's tools run the compiler through a shell, and an interrupted run must stop
    # all of it, not leave tpuc-opt computing on the two cores.
    process = subprocess.Popen([str(TPU_MLIR.python().parent / tool), *arguments], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=TPU_MLIR.process_env(), start_new_session=True)
    try:
        output = process.communicate()[0].decode(errors="replace")
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if process.returncode != 0:
        # Progress bars redraw with carriage returns; the last few lines are what says what went wrong.
        lines = [line.split("\r")[-1] for line in output.splitlines() if not line.startswith("[0] [DBG]")]
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        raise ConversionError(
            f"tpu-mlir's {tool} failed (exit {process.returncode}) on {what}. {advice}The end of its output:\n{tail}",
            log=(f"{what.replace(' ', '-')}-{tool}.log", output),
        )
    return output


def transform(onnx_file: Path, name: str, input_shape: list[int], folder: Path, what: str) -> Path:
    """ONNX → tpu-mlir's top-level graph for one fixed input shape."""
    folder.mkdir(parents=True, exist_ok=True)
    mlir = folder / f"{name}.mlir"
    run_tool("model_transform", ["--model_name", name, "--model_def", str(onnx_file),
                                 "--input_shapes", str([input_shape]).replace(" ", ""), "--mlir", mlir.name], folder, what)
    return mlir


def calibrate(top_mlir: Path, input_name: str, samples: np.ndarray, batch: int, method: str, what: str) -> Path:
    """run_calibration on `samples` in inputs of `batch` (one .npz each, the last filled with the first samples);
    the calibration table's path."""
    dataset = top_mlir.parent / "calibration"
    dataset.mkdir(exist_ok=True)
    count = -(-len(samples) // batch)
    filled = np.resize(samples, (count * batch, *samples.shape[1:]))
    for index in range(count):
        np.savez(dataset / f"{index:04d}.npz", **{input_name: filled[index * batch : (index + 1) * batch]})
    table = top_mlir.parent / "calibration_table"
    run_tool("run_calibration", [top_mlir.name, "--dataset", dataset.name, "--input_num", str(count),
                                 "--cali_method", method, "-o", table.name], top_mlir.parent, what)
    return table


def top_ops(top_mlir: Path) -> list[tuple[str, str]]:
    """(name, type) of every op of a top-level graph, in order."""
    with ToolWorker() as worker:
        response, _ = worker.ask({"ops": str(top_mlir)})
    return [tuple(op) for op in response["ops"]]


def deploy(top_mlir: Path, quantize: str, model: str, what: str, *, high_precision: bool,
           calibration_table: Path | None, quantize_table: Path | None, lowered_only: bool) -> Path:
    """model_deploy for the BM1684X: the bmodel, or with `lowered_only` the lowered graph (`*_tpu.mlir` and weights,
    which a full deploy deletes afterwards). Returns the bmodel or the lowered graph. The tables must lie in the
    graph's folder: tpu-mlir pastes their paths into a shell command unquoted."""
    arguments = ["--mlir", top_mlir.name, "--quantize", quantize, "--chip", CHIP, "--model", model]
    if high_precision:
        arguments.append("--high_precision")
    if calibration_table:
        arguments += ["--calibration_table", calibration_table.name]
    if quantize_table:
        arguments += ["--quantize_table", quantize_table.name]
    arguments.append("--not_gen_bmodel" if lowered_only else "--skip_validation")
    advice = "" if high_precision else HIGH_PRECISION_ADVICE
    run_tool("model_deploy", arguments, top_mlir.parent, what, advice)
    if not lowered_only:
        return top_mlir.parent / model
    lowered = sorted(top_mlir.parent.glob(f"{top_mlir.stem}_{CHIP}_*_tpu.mlir"), key=lambda p: p.stat().st_mtime)
    if not lowered:
        raise ConversionError(f"tpu-mlir's model_deploy wrote no lowered graph for {what} in {top_mlir.parent}; "
                              f"tpu-mlir {TPU_MLIR_VERSION}'s file naming may have changed.")
    return lowered[-1]


# How a tpu-mlir graph names its weights file, relative to the directory it is run from.
WEIGHT_FILE_ATTRIBUTE = re.compile(r'module\.weight_file = "([^"]+)"')


def weight_file_of(lowered: Path) -> Path:
    """The weights a lowered graph names (module.weight_file), beside it."""
    match = WEIGHT_FILE_ATTRIBUTE.search(lowered.read_text(encoding="utf-8"))
    if not match:
        raise ConversionError(f"{lowered} names no weight file; tpu-mlir's output format changed?")
    return lowered.parent / match.group(1)


def rename_weight_file(lowered: Path, weights_name: str) -> None:
    """Point the lowered graph at its weights under their bundle name."""
    text = lowered.read_text(encoding="utf-8")
    lowered.write_text(WEIGHT_FILE_ATTRIBUTE.sub(f'module.weight_file = "{weights_name}"', text, count=1), encoding="utf-8")


def estimated_ms(folder: Path) -> float | None:
    """The compiler's estimate of one inference on the chip (its profile's `runtime: … ms`), when it wrote one."""
    profile = folder / "compiler_profile_0.txt"
    if not profile.is_file():
        return None
    match = re.search(r"runtime: ([0-9.]+)ms", profile.read_text(encoding="utf-8", errors="replace"))
    return float(match.group(1)) if match else None
