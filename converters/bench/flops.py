"""How much arithmetic a tower does, and how much the machine can do: the two sides of a FLOP rate.

The tower's FLOPs are counted from its fp32 ONNX graph, not from a formula
per architecture: the symbolic dims are bound (batch 1), onnx's shape
inference gives every tensor a shape, and each MatMul, Gemm and Conv
counts 2 x output elements x the length of its reduction. Element-wise
ops, softmax and normalisation are left out (a rough count puts them
below 1% for ViT-B-16).
The same count serves ModifiedResNet, whose convolutions a ViT formula
would miss; tests/bench/test_bench.py checks it against the ViT formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from converters.bench.timing import Budget, time_calls

MATMUL_SIZE = 2048


@dataclass
class MatmulPeak:
    size: int
    threads: int
    gflops_by_library: dict[str, float]  # each library at its fastest run: other processes only ever slow a run down
    library: str  # the fastest library, whose rate is the peak
    gflops: float


def graph_gflop(model_file: Path, dims: dict[str, int]) -> float:
    """GFLOP of one call of the ONNX graph, with each symbolic input dim set from `dims` (e.g. batch=1)."""
    import onnx
    from onnx import shape_inference

    # Initializers keep their dims without their data; a multi-GB graph loads in a moment.
    model = onnx.load(str(model_file), load_external_data=False)
    for tensor in model.graph.input:
        for dim in tensor.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = dims[dim.dim_param]
    # data_prop carries the now-static Shape values into Reshape targets, so every output gets a shape.
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for info in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return sum(_node_flop(node, shapes) for node in model.graph.node) / 1e9


def _node_flop(node, shapes: dict[str, list]) -> int:
    if node.op_type not in ("MatMul", "Gemm", "Conv"):
        return 0
    output = shapes.get(node.output[0])
    operand = shapes.get(node.input[0] if node.op_type != "Conv" else node.input[1])
    if not output or not operand or None in output or None in operand:
        raise ValueError(f"no static shape for {node.op_type} {node.name!r}; cannot count its FLOPs")
    if node.op_type == "Conv":
        reduction = int(np.prod(operand[1:]))  # weight [out, in / groups, *kernel]
    elif node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
        reduction = operand[0]
    else:
        reduction = operand[-1]
    return 2 * int(np.prod(output)) * reduction


def measure_matmul_peak(threads: int, budget: Budget) -> MatmulPeak:
    """float32 matmul of two 2048 x 2048 matrices in each library the runtimes use; the fastest sets the peak.

    numpy's BLAS alone is not the machine's peak: on an AVX2 EPYC, onnxruntime's
    MLAS and PyTorch ran fp32 towers faster than numpy's OpenBLAS multiplied
    matrices (measured: 123 against 77 GFLOP/s). Run where numpy's BLAS was
    pinned to `threads` at import (processes.run_fresh).
    """
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32) for _ in range(2))
    rates = {
        library: round(2 * MATMUL_SIZE**3 / time_calls(multiply, budget).min_ms / 1e6, 2)
        for library, multiply in _matmuls(a, b, threads).items()
    }
    return _peak(threads, rates)


def best_peak(first: MatmulPeak, second: MatmulPeak) -> MatmulPeak:
    """Each library's better rate of two measurements: on a shared machine one moment can be disturbed."""
    return _peak(first.threads, {name: max(rate, second.gflops_by_library[name]) for name, rate in first.gflops_by_library.items()})


def _peak(threads: int, rates: dict[str, float]) -> MatmulPeak:
    library = max(rates, key=rates.get)
    return MatmulPeak(MATMUL_SIZE, threads, rates, library, rates[library])


def _matmuls(a: np.ndarray, b: np.ndarray, threads: int) -> dict[str, Callable[[], object]]:
    import torch
    from onnx import TensorProto, helper

    from converters.app.runtimes.onnx_runtime import session

    torch.set_num_threads(threads)
    left, right = torch.from_numpy(a), torch.from_numpy(b)
    matrix = [MATMUL_SIZE, MATMUL_SIZE]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, matrix) for name in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, matrix)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    matmul = session(model.SerializeToString(), threads)
    return {
        "numpy": lambda: a @ b,
        "torch": lambda: torch.mm(left, right),
        "onnxruntime": lambda: matmul.run(None, {"a": a, "b": b}),
    }
