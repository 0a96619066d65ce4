"""Model configs: one YAML file per architecture in `converters/export/configs/` (package data), validated on load.

The set of known model names is the set of file stems in the configs folder;
nothing else lists them. Defaults below are the measured choices; a config
file overrides them only where its architecture needs something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from converters.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


MAX_LAYERS = 256
MAX_WIDTH = 16_384
MAX_RESOLUTION = 4096
# A config is a few hundred bytes; anything far larger is not one.
MAX_CONFIG_BYTES = 1_000_000


Depth = Annotated[int, Field(gt=0, le=MAX_LAYERS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionArch(_Strict):
    """ViT when `layers` is an int, ModifiedResNet when it lists four stage depths."""

    # Bounds far above any CLIP (ViT-H-14: 32 layers, width 1280) that keep a typo from hanging a build.
    layers: Depth | tuple[Depth, Depth, Depth, Depth]
    width: int = Field(gt=0, le=MAX_WIDTH)
    patch_size: int | None = Field(default=None, gt=0, le=MAX_RESOLUTION)
    head_width: int = Field(default=64, gt=0, le=MAX_WIDTH)

    @property
    def family(self) -> Literal["vit", "resnet"]:
        return "resnet" if isinstance(self.layers, tuple) else "vit"


class TextArch(_Strict):
    vocab_size: int = Field(gt=0, le=1_000_000)
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    num_hidden_layers: int = Field(gt=0, le=MAX_LAYERS)
    num_attention_heads: int = Field(gt=0, le=MAX_WIDTH)
    intermediate_size: int = Field(gt=0, le=4 * MAX_WIDTH)
    max_position_embeddings: int = Field(gt=0, le=MAX_RESOLUTION)
    type_vocab_size: int = Field(default=2, gt=0, le=1024)
    hidden_act: Literal["gelu", "relu", "swish", "gelu_new"] = "gelu"


class Architecture(_Strict):
    embed_dim: int = Field(gt=0, le=MAX_WIDTH)
    vision: VisionArch
    text: TextArch


class OnnxOptions(_Strict):
    opset: int = Field(default=17, ge=13, le=21)


class SimplifyOptions(_Strict):
    # Shape-fixing input overrides would drop the dynamic batch axis, so the
    # simplifier only folds constants and fuses; it is checked for that by parity.
    skip_fuse_bn: bool = False


class FloatFallback(_Strict):
    """Automatic mixed precision of an int8 stage (converters/export/mixed_precision.py).

    The quantized tower is compared with its float parent on calibration samples
    (never the parity set); while it misses this target, the layers that hurt the
    embedding most go back to float. The defaults are issue 12's targets.
    """

    enabled: bool = True
    cosine_min: float = Field(default=0.99, gt=0.0, le=1.0)
    cosine_mean: float = Field(default=0.995, gt=0.0, le=1.0)
    # Half parity's int8 limit (0.1): the calibration samples are not the parity set.
    norm_ratio_max: float = Field(default=0.05, gt=0.0)
    # Calibration samples the fidelity is measured on: photos and crops of them, or captions.
    samples: int = Field(default=16, gt=0, le=1000)


class Fp16Options(_Strict):
    """onnxruntime's float16 conversion (converters/export/stages/onnx_fp16.py); inputs and outputs stay float32."""

    # Operator types kept in float32 besides the converter's own list (ops without float16 definitions).
    keep_fp32_ops: tuple[str, ...] = ()


class Int8Options(_Strict):
    """onnxruntime dynamic quantization settings, chosen by measured parity, size and speed.

    Measured on ViT-B-16 with WEIGHTS=random on this AVX2 CPU without VNNI
    (parity set, per-sample cosine against PyTorch fp32; README "int8 settings"):
    - int8 weights without `reduce_range` saturate AVX2's u8*s8 pair sums
      (vpmaddubsw): the visual tower falls to cosine min 0.981, mean 0.990.
      With `reduce_range` (7-bit weights) it is 0.9997 / 0.9998.
    - uint8 weights do not saturate (cosine 0.99986) but run the u8*u8
      kernel, 1.5x slower than u8*s8 here (700 vs 450 ms per image).
    - per-channel scales cost 0.4 MB and raise the visual min cosine from
      0.99953 to 0.99970.
    - Gather is quantized: the 21128x768 word-embedding table is 65 MB of the
      ViT-B-16 text tower in fp32; with it the tower is 102.7 MB (≤ 110 MB),
      and the visual tower 89.1 MB (≤ 90 MB).
    """

    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather")
    # Nodes whose names contain one of these stay in fp32.
    exclude_name_patterns: tuple[str, ...] = ()
    float_fallback: FloatFallback = FloatFallback()


class Int4Options(_Strict):
    """onnxruntime weight-only 4-bit quantization (MatMulNBits; GatherBlockQuantized for the word table).

    Weights are stored as 4-bit blocks with one scale per `block_size` values
    along the reduction axis; activations stay float. Measured on ViT-B-16 with
    stress weights (calibration samples, against onnx-sim; README "onnx-int4"),
    block 32, symmetric: visual 56.8 MB, cosine 0.9955 min; text 64.1 MB, 0.968
    min: the float fallback decides which layers keep float weights.
    """

    block_size: Literal[16, 32, 64, 128] = 32
    op_types: tuple[Literal["MatMul", "Gather"], ...] = ("MatMul", "Gather")
    float_fallback: FloatFallback = FloatFallback()
    # What the layers the fallback keeps out of 4 bits become: int8 (onnxruntime dynamic, as onnx-int8)
    # keeps a bundle small where float would not: the ViT-B-16 word table is 65 MB in float, 16 MB in int8.
    kept_as: Literal["int8", "float"] = "int8"


class NcnnOptions(_Strict):
    """pnnx conversion of the rewritten towers (converters/export/rewrites); the precision is the stage's."""


class NcnnInt8Options(_Strict):
    """ncnn int8 quantization (a port of ncnn2table and ncnn2int8, see converters/export/stages/ncnn_int8.py).

    aciq, measured by `python -m converters levers` (all-int8 towers, cosine min against
    PyTorch on the parity set; README "int8 levers"): with stress weights kl clips the
    few huge channels that the outlier dimensions put into a layer's input, aciq keeps them.
    - ViT-B-16 stress: visual kl 0.662, aciq 0.998; text kl 0.886, aciq 0.999.
    - RN50 stress: text kl 0.846, aciq 0.9997; visual kl 0.196, aciq 0.368 (the float
      fallback repairs what is left).
    - random weights (ViT-B-16, RN50): the two within 3e-5 of each other on the parity set, 3e-4 on the
      held-out calibration samples the levers are graded on.
    32 samples: with random weights, 8 or 64 gave cosines within 1e-5 of 32 (RN50 visual),
    and 32 cost under a minute per tower calibrating in 1 thread on this 2-core machine.
    """

    # How the input scale of each Convolution and InnerProduct is found from the calibration set.
    method: Literal["kl", "aciq"] = "aciq"
    # Calibration samples per tower: photos and crops of them, or captions.
    samples: int = Field(default=32, gt=0)
    float_fallback: FloatFallback = FloatFallback()


BatchSizes = tuple[Annotated[int, Field(gt=0, le=256)], ...]


class Bm1684xOptions(_Strict):
    """tpu-mlir compilation for the Sophgo BM1684X (converters/export/stages/bm1684x.py), F16 weights and arithmetic.

    The device runs fixed shapes: one bmodel per batch size, the text tower on ids padded to the context length.
    """

    # Sophgo's CLIP example ships images at 1, 8, 16, 32 and text at 4; a search app embeds a library in batches
    # and one query at a time.
    image_batch_sizes: BatchSizes = Field(default=(1, 8), min_length=1)
    text_batch_sizes: BatchSizes = Field(default=(1, 4), min_length=1)
    # Towers compiled with --high_precision (some ops kept in fp32). tpu-mlir 1.30.2's codegen stops on an
    # assertion for the plain F16 text tower (ViT-B-16: ArrayRef.h "Invalid index" in the attention fusion;
    # tiny-vit: a GDMA "src_H>0" check); with --high_precision both compile.
    high_precision_towers: tuple[Literal["visual", "text"], ...] = ("text",)


class Bm1684xInt8Options(Bm1684xOptions):
    """As bm1684x-f16, with INT8 weights and activations calibrated by tpu-mlir's run_calibration.

    The float fallback keeps whole op types (LayerNorm, Softmax, …) in F16 through a quantize table,
    chosen by measurement on calibration samples; its target sits above parity's INT8 tolerance
    (0.98 / 0.99) because calibration samples are not the parity set.
    """

    # Calibration samples the activation thresholds are fitted to (the first of the calibration set).
    calibration_samples: int = Field(default=16, gt=0, le=1000)
    method: Literal["kl", "mse", "max", "percentile9999"] = "kl"
    float_fallback: FloatFallback = FloatFallback(cosine_min=0.985, cosine_mean=0.993, samples=8)


class Stages(_Strict):
    """Options per stage, under the stage's name with '_' for '-' (`onnx_int8` for stage `onnx-int8`)."""

    onnx_fp32: OnnxOptions = OnnxOptions()
    onnx_sim: SimplifyOptions = SimplifyOptions()
    onnx_fp16: Fp16Options = Fp16Options()
    onnx_int8: Int8Options = Int8Options()
    onnx_int4: Int4Options = Int4Options()
    ncnn_fp32: NcnnOptions = NcnnOptions()
    ncnn_fp16: NcnnOptions = NcnnOptions()
    ncnn_int8: NcnnInt8Options = NcnnInt8Options()
    bm1684x_f16: Bm1684xOptions = Bm1684xOptions()
    bm1684x_int8: Bm1684xInt8Options = Bm1684xInt8Options()


class Tolerance(_Strict):
    """What an artifact's embeddings must meet against PyTorch fp32, per sample of the parity set.

    Whatever the tolerance, an output that is not finite, is all zeros or has
    the wrong shape fails (converters.validate.metrics).
    """

    cosine_min: float = Field(gt=0.0, le=1.0)
    cosine_mean: float | None = Field(default=None, gt=0.0, le=1.0)
    # max |norm(artifact) / norm(PyTorch) - 1|: cosine cannot see an embedding scaled by 1000.
    norm_ratio_max: float = Field(gt=0.0, le=1.0)
    top1_agreement_min: float | None = Field(default=None, ge=0.0, le=1.0)


# norm_ratio_max as measured on tiny-vit and tiny-rn with random weights (parity set, this 2-core
# x86 machine): fp32 stages ≤ 2.1e-7, ncnn-fp16 ≤ 8.1e-5, int8 stages ≤ 1.1e-2. The limits leave
# 100x or more for the float stages and 10x for int8; a scale error of 1000x fails all of them.
FP32_TOLERANCE = Tolerance(cosine_min=0.99999, norm_ratio_max=1e-4, top1_agreement_min=1.0)
FP16_STORAGE_TOLERANCE = Tolerance(cosine_min=0.9995, norm_ratio_max=1e-2)
INT8_TOLERANCE = Tolerance(cosine_min=0.98, cosine_mean=0.99, norm_ratio_max=0.1)


class ParityTolerances(_Strict):
    onnx_fp32: Tolerance = FP32_TOLERANCE
    onnx_sim: Tolerance = FP32_TOLERANCE
    onnx_fp16: Tolerance = FP16_STORAGE_TOLERANCE
    onnx_int8: Tolerance = INT8_TOLERANCE
    onnx_int4: Tolerance = INT8_TOLERANCE
    ncnn_fp32: Tolerance = FP32_TOLERANCE
    ncnn_fp16: Tolerance = FP16_STORAGE_TOLERANCE
    ncnn_int8: Tolerance = INT8_TOLERANCE
    bm1684x_f16: Tolerance = FP16_STORAGE_TOLERANCE
    bm1684x_int8: Tolerance = INT8_TOLERANCE


class CmodelSample(_Strict):
    """The bit-accurate layer of the bm1684x stages' parity: each bmodel on tpu-mlir's cmodel simulator, on a
    sample (minutes per ViT-B-16 sample); the lowered-graph layer runs the whole parity set."""

    images: int = Field(default=1, ge=1, le=64)  # the first photos of the parity set
    captions: int = Field(default=2, ge=1, le=64)  # the first captions
    # The bmodels (by batch size) it runs; None: every one. A batch-8 bmodel simulates 8 samples whatever
    # the sample: about an hour for ViT-B-16's visual tower on a 2-core x86.
    batch_sizes: BatchSizes | None = None


class StressOptions(_Strict):
    """Stress weights (`--checkpoint stress`, converters/export/stress.py): what they exaggerate and by how much."""

    seed: int = 0
    # Hidden dimensions per width that carry the outliers, the same ones in every layer.
    outlier_dims: int = Field(default=4, ge=1, le=64)
    # LayerNorm / BatchNorm gain at those dimensions, in units of the typical gain (×0.5–1 each).
    norm_gain: float = Field(default=40.0, ge=1.0, le=1000.0)
    norm_bias: float = Field(default=8.0, ge=0.0, le=1000.0)
    # Added to one residual dimension in every block: a "massive activation".
    residual: float = Field(default=30.0, ge=0.0, le=10000.0)
    # Student-t degrees of freedom of the weight matrices: lower is heavier-tailed (kurtosis 6/(df-4)+3 for df > 4).
    tail_df: float = Field(default=5.0, gt=2.0, le=1000.0)
    # ModifiedResNet: gain and bias of each bottleneck's last BatchNorm, times this. Trained ResNets keep their
    # residual branches small; at 1 the random trunk is chaotic (stress.py says what was measured).
    branch_gain: float = Field(default=0.25, gt=0.0, le=1.0)


class Smoothing(_Strict):
    """Activation smoothing (converters/export/smoothing.py): an exact rescaling of the visual tower before export
    that moves activation outliers from a normalization's output into the next layer's weights (SmoothQuant)."""

    enabled: bool = False
    # SmoothQuant's migration strength: 0 leaves the activations as they are, 1 moves all their range into the weights.
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)


class Checkpoint(_Strict):
    # Name of the official release in cn_clip's download table; None for
    # architectures that only exist here (the tiny test models).
    release: str | None = None
    # sha256 of the release file, checked after download when given.
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")


class ModelConfig(_Strict):
    name: str
    architecture: Architecture
    image_resolution: int = Field(gt=0, le=MAX_RESOLUTION)
    context_length: int = Field(default=52, ge=2, le=MAX_RESOLUTION)
    seed: int = 0
    checkpoint: Checkpoint = Checkpoint()
    stress: StressOptions = StressOptions()
    smoothing: Smoothing = Smoothing()
    stages: Stages = Stages()
    parity: ParityTolerances = ParityTolerances()
    cmodel_parity: CmodelSample = CmodelSample()
    source: Path | None = Field(default=None, exclude=True)

    def stage_options(self, stage: str) -> BaseModel:
        return getattr(self.stages, stage.replace("-", "_"))

    def tolerance(self, stage: str) -> Tolerance:
        return getattr(self.parity, stage.replace("-", "_"))


def known_models(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def load_config(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> ModelConfig:
    """Load a config by model name (a file stem in `config_dir`) or by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"Unknown model '{name_or_path}'. Known models: {', '.join(known_models(config_dir))}. "
                f"Add a config file as {path} to define a new one."
            )
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a model config is a few hundred. Check the file.")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values at the top level.")
    raw.setdefault("name", path.stem)
    return validate_config(raw, path)


def validate_config(raw: dict, path: Path) -> ModelConfig:
    """A config from its mapping (a YAML file's, or one made from a checkpoint's own config at `path`)."""
    _inherit_default_tolerances(raw)
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid model config:\n{_describe(exc)}") from None
    _check_consistency(config, path)
    return config.model_copy(update={"source": path})


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: a config needs none, and nested aliases expand exponentially ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in a model config{event.start_mark}")
        return super().compose_node(parent, index)


def _inherit_default_tolerances(raw: dict) -> None:
    """A stage's tolerance in a config overrides the default key by key: `cosine_min` alone keeps the rest."""
    parity = raw.get("parity")
    if not isinstance(parity, dict):
        return
    defaults = ParityTolerances().model_dump()
    for stage, tolerance in parity.items():
        if isinstance(tolerance, dict) and stage in defaults:
            parity[stage] = defaults[stage] | tolerance


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check its spelling and indentation)")
        else:
            lines.append(f"  - {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _check_consistency(config: ModelConfig, path: Path) -> None:
    vision = config.architecture.vision
    problems = []
    if vision.family == "vit":
        if vision.patch_size is None:
            problems.append("architecture.vision.patch_size is required for a ViT (integer layers)")
        elif config.image_resolution % vision.patch_size:
            problems.append("image_resolution must be a multiple of architecture.vision.patch_size")
        if vision.width % vision.head_width:
            problems.append("architecture.vision.width must be a multiple of head_width")
    elif config.image_resolution % 32:
        problems.append("image_resolution must be a multiple of 32 for a ModifiedResNet")
    text = config.architecture.text
    if text.hidden_size % text.num_attention_heads:
        problems.append("architecture.text.hidden_size must be a multiple of num_attention_heads")
    if config.context_length > text.max_position_embeddings:
        problems.append("context_length exceeds architecture.text.max_position_embeddings")
    if problems:
        raise ConfigError(f"{path} is inconsistent:\n" + "\n".join(f"  - {p}" for p in problems))
