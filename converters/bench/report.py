"""Benchmark results as data: dataclasses written as `bench.json` (`markdown.render_markdown` makes `bench.md`).

Times are milliseconds, rates are per second, memory is MiB (2**20 bytes)
of resident set, model sizes are MiB of files on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from converters.bench.flops import MatmulPeak
from converters.bench.search_scale import TopkMeasurement
from converters.bench.timing import Budget, Timing


@dataclass
class Measurement:
    input: str  # "image 224 px", "10 chars", "52 tokens (full context)"
    tokens: int | None  # text only: [CLS] + characters + [SEP], no padding
    mode: str  # "latency": batch 1; "throughput": the batch that suits the runtime
    batch: int
    timing: Timing  # per call of `batch` items
    per_second: float  # items per second at the median
    vs_pytorch: float | None = None  # per_second / PyTorch fp32's for the same input and mode
    vs_onnx: float | None = None  # per_second / onnxruntime fp32's
    gflops: float | None = None  # image tower: achieved GFLOP/s at the median
    of_matmul_peak: float | None = None  # gflops / the measured fp32 matmul peak


@dataclass
class Memory:
    imports_mb: float  # peak before any model: interpreter, numpy, the engine's library
    loaded_mb: float  # peak up to the end of loading the tower
    peak_mb: float  # peak up to the end of every timed run


@dataclass
class TowerBench:
    artifact: str  # "pytorch", or a stage of the bundle ("onnx-sim", "onnx-int8", "ncnn-fp16", …)
    tower: str
    runtime: str  # pytorch, onnxruntime, ncnn
    precision: str
    threads: int
    model_mb: float  # files on disk; PyTorch: the tower's fp32 parameters and buffers
    load_s: float
    memory: Memory
    measurements: list[Measurement]


@dataclass
class ConversionStep:
    step: str  # the progress message that opened the step
    seconds: float
    peak_mb: float | None  # resident high-water mark during the step; None where /proc cannot reset it


@dataclass
class ConversionRun:
    stages: list[str]
    seconds: float  # the whole process, interpreter start to exit
    peak_mb: float  # the process's peak resident set: the largest step peak (getrusage where /proc is missing)
    steps: list[ConversionStep]


@dataclass
class IndexingRun:
    artifact: str  # the stage whose visual tower embedded the photos
    images: int
    batch: int
    seconds: float  # `IndexUpdater.plan` + `run`: listing, decoding, preprocessing, embedding, saving
    images_per_s: float
    decode_images_per_s: float  # decoding and preprocessing alone, same files, one thread


@dataclass
class TopkRow:
    backend: str
    vectors: str  # converters.bench.search_scale.VECTOR_KINDS
    n: int
    measured: TopkMeasurement | None
    note: str = ""  # why there is no measurement


@dataclass
class QueryPath:
    """One query as an app runs it, timed whole: tokenize or decode and preprocess, embed, search the top 10."""

    artifact: str
    query: str  # "text, 10 chars" or "image <file>"
    photos: int  # the library's size
    backend: str  # the search backend `search` chose for that size
    timing: Timing


@dataclass
class Goal:
    name: str
    target: float
    unit: str
    at_most: bool  # the goal is measured <= target (else >=)
    measured: float | None  # None: not measurable in this run (see detail)
    artifact: str | None  # the artifact measured, where the goal picks one
    met: bool | None
    detail: str  # how far from the target, or why it was not evaluated
    limits: str = ""  # where a goal is missed: what limits it (to be filled by profiling)


@dataclass
class Machine:
    cpu: str
    cores: int  # usable by this process
    threads: int  # given to every runtime, BLAS and search backend
    load_average_start: list[float]
    load_average_end: list[float]
    matmul_peak: MatmulPeak
    versions: dict[str, str]


@dataclass
class DeviceEstimate:
    """A bm1684x bmodel: the compiler's estimate of one inference on the chip. An estimate, not a measurement;
    the simulators that check these files here take seconds to minutes and say nothing about the chip's speed."""

    artifact: str
    tower: str
    batch: int
    model_mb: float
    estimated_ms: float | None  # per inference of the whole batch; None when tpu-mlir wrote no profile


@dataclass
class ArtifactFidelity:
    """One tower of one artifact as parity.json and the manifest record it: how close it is to PyTorch, and how
    much of it a quantized stage left in float. Printed beside size and speed so that a user can pick."""

    artifact: str
    tower: str
    cosine_min: float
    cosine_mean: float
    passed: bool
    # For a stage with mixed precision: how many of its quantizable layers it kept out of its precision, as what.
    kept_layers: int | None = None
    quantizable_layers: int | None = None
    kept_as: str | None = None


@dataclass
class BenchReport:
    model: str
    weights: str
    quick: bool
    budget: Budget  # repetitions of every timing
    machine: Machine
    image_gflop: float  # per image, counted from the fp32 ONNX graph
    tokenize_ms: float  # median, one 10-character query
    parity_passed: list[str]  # stages whose parity tolerance is met, from parity.json
    towers: list[TowerBench]
    conversion: ConversionRun
    indexing: list[IndexingRun]
    search: list[TopkRow]
    query_paths: list[QueryPath]
    goals: list[Goal]
    notes: list[str] = field(default_factory=list)
    device_estimates: list[DeviceEstimate] = field(default_factory=list)
    fidelity: list[ArtifactFidelity] = field(default_factory=list)  # empty without parity.json

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

