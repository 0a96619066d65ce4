"""Model configs: one YAML file per architecture in `converters/export/configs/` (package data), validated on load.

The set of known model names is the set of file stems in the configs folder;
nothing else lists them. Each stage's options and their measured defaults live
in its module (`converters.export.stages`), the parity targets in
`converters.validate.fidelity`; a config file overrides them only where its
architecture needs something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from converters.app.specs import stage_spec
from converters.errors import ConfigError
from converters.export.stages import StageOptions, registered
from converters.validate.fidelity import ParityTolerances
from converters.validate.settings import CmodelSample, ParitySettings

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


# The config's `stages:` section: one key per stage of the table, holding that stage's own options class.
Stages = create_model(
    "Stages",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{stage.spec.config_key: (stage.options, stage.options()) for stage in registered().values()},
)


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

    def stage_options(self, stage: str) -> StageOptions:
        return getattr(self.stages, stage_spec(stage).config_key)

    def parity_settings(self) -> ParitySettings:
        return ParitySettings(self.name, self.parity, self.cmodel_parity, self.source)


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
