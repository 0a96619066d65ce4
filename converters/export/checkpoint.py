"""The weights: a Chinese-CLIP checkpoint → the cn_clip model, fp32, eval mode.

Sources: a local cn_clip `.pt` file or Hugging Face model folder
(`--checkpoint`), `hf:OWNER/NAME` through huggingface_hub, the official release
fetched once into a cache by cn_clip's own download route, or seeded random
weights for the same architecture (offline pipeline checks).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cn_clip.clip.model import CLIP

from converters.app.fsutil import sha256_file, sha256_text
from converters.app.manifest import Manifest
from converters.app.preprocess import Transform
from converters.data.calibration_set import photos_digest
from converters.data.parity_set import ParitySet
from converters.errors import ArtifactError, CheckpointError
from converters.export import huggingface
from converters.export.config import ModelConfig, known_models, load_config
from converters.export.download import DOWNLOAD_HINT, fetch_release
from converters.export.stress import GENERATOR_VERSION, stress_model
from converters.validate.fidelity import Embeddings

RANDOM = "random"
STRESS = "stress"


@dataclass(frozen=True)
class CheckpointSource:
    """Where the weights come from, identified by content before anything is loaded, and what inputs they want."""

    path: Path | None  # None means seeded random weights
    digest: str
    description: str
    transform: Transform  # the preprocessing the weights were trained with
    vocab: bytes = field(repr=False)  # the tokenizer's vocab.txt
    huggingface: bool = False  # a ChineseCLIPModel folder rather than a cn_clip .pt
    stress: bool = False  # seeded stress weights (converters.export.stress) rather than plain random ones


@dataclass
class LoadedModel:
    """The root of the pipeline: the model in memory and the source it came from."""

    model: CLIP
    source: CheckpointSource

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def reference(self, parity_set: ParitySet, context_length: int) -> Embeddings:
        """What parity compares with: transformers' own model for a Hugging Face folder, else this model."""
        if self.source.huggingface:
            return huggingface.reference(self.source.path, parity_set, context_length)
        from converters.export.torch_reference import TorchEmbedder
        from converters.validate.parity import embed

        return embed(TorchEmbedder(self.model), parity_set)


def cn_clip_kwargs(config: ModelConfig) -> dict:
    arch = config.architecture
    text = arch.text
    return {
        "embed_dim": arch.embed_dim,
        "image_resolution": config.image_resolution,
        "vision_layers": list(arch.vision.layers) if arch.vision.family == "resnet" else arch.vision.layers,
        "vision_width": arch.vision.width,
        "vision_patch_size": arch.vision.patch_size,
        "vision_head_width": arch.vision.head_width,
        "vocab_size": text.vocab_size,
        "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": text.hidden_act,
        "text_hidden_dropout_prob": 0.1,
        "text_hidden_size": text.hidden_size,
        "text_initializer_range": 0.02,
        "text_intermediate_size": text.intermediate_size,
        "text_max_position_embeddings": text.max_position_embeddings,
        "text_num_attention_heads": text.num_attention_heads,
        "text_num_hidden_layers": text.num_hidden_layers,
        "text_type_vocab_size": text.type_vocab_size,
    }


def build_model(config: ModelConfig) -> CLIP:
    """The architecture in fp32 with cn_clip's own initialisation, seeded by the config."""
    torch.manual_seed(config.seed)
    return CLIP(**cn_clip_kwargs(config)).float().eval()


def random_model(config: ModelConfig) -> CLIP:
    """Seeded random weights that exercise every weight of the graph.

    cn_clip initialises each ModifiedResNet bottleneck's last BatchNorm scale to
    zero and leaves running statistics at (0, 1); a conversion bug in those
    convolutions would then be invisible. Random scales and statistics make
    every layer contribute to the embedding.
    """
    model = build_model(config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model


def resolve(config: ModelConfig, checkpoint: str | Path | None, cache_dir: Path) -> CheckpointSource:
    """Find the weights (a path, `random`, or None for the official release) and fingerprint them."""
    default = Transform(config.image_resolution)
    if checkpoint in (RANDOM, STRESS):
        stress = checkpoint == STRESS
        digest = sha256_text(checkpoint, str(config.seed), config.architecture.model_dump_json(), str(config.image_resolution),
                             *([config.stress.model_dump_json(), str(GENERATOR_VERSION), photos_digest()] if stress else []))
        description = (f"stress weights (generator {GENERATOR_VERSION}, seed {config.seed}, stress {config.stress.model_dump()})" if stress
                       else f"random weights (seed {config.seed})")
        return CheckpointSource(None, digest, description, default, cn_clip_vocab().read_bytes(), stress=stress)
    if isinstance(checkpoint, str) and checkpoint.startswith(huggingface.PREFIX):
        checkpoint = huggingface.download(checkpoint)
    # Absolute, so that `parity` and `bench` find it again from any working directory.
    path = (Path(checkpoint) if checkpoint else download_release(config, cache_dir)).absolute()
    if huggingface.is_checkpoint_folder(path):
        huggingface.check_matches(config, path)
        return CheckpointSource(path, huggingface.digest(path), f"{path} (Hugging Face)",
                                huggingface.transform(path, config.image_resolution), huggingface.vocabulary(path),
                                huggingface=True)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder without config.json, so not a Hugging Face model folder; pass a cn_clip .pt "
            "file or a folder saved with save_pretrained."
        )
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. {DOWNLOAD_HINT}")
    return CheckpointSource(path, sha256_file(path), str(path), default, cn_clip_vocab().read_bytes())


def run(config: ModelConfig, source: CheckpointSource) -> LoadedModel:
    if source.path is None:
        model = random_model(config)
        return LoadedModel(stress_model(config, model) if source.stress else model, source)
    model = build_model(config)
    state = huggingface.load_state(source.path, config) if source.huggingface else read_state_dict(source.path)
    load_into(model, state, source.path, config)
    return LoadedModel(model.eval(), source)


def load_recorded(config: ModelConfig, manifest: Manifest) -> LoadedModel:
    """The model a bundle was converted from, as its manifest records it; refused if the file changed since."""
    manifest.require_model(config.name)
    recorded = manifest.checkpoint
    source = resolve(config, recorded.source, cache_dir=manifest.root)
    if source.digest != recorded.sha256:
        if source.path is None:
            raise ArtifactError(
                f"This version makes its {recorded.source} weights differently from the one that wrote {manifest.path} "
                "(another seed, stress setting or converter); convert again."
            )
        raise ArtifactError(f"The checkpoint {recorded.source} changed since {manifest.path} was written; convert again.")
    return run(config, source)


def download_release(config: ModelConfig, cache_dir: Path) -> Path:
    release = config.checkpoint.release
    if release is None:
        raise CheckpointError(
            f"Model '{config.name}' has no official checkpoint; pass one with --checkpoint or use random weights."
        )
    from cn_clip.clip.utils import _MODELS

    return fetch_release(release, _MODELS[release][1], config.checkpoint.sha256, cache_dir)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, as cn_clip saves them, without running pickled code."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. {DOWNLOAD_HINT}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); download it again.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"Checkpoint {path} was refused by safe loading (weights_only=True): it holds pickled objects "
                "other than tensors, which were not executed. Use an official checkpoint, or re-save the "
                "state_dict alone from a trusted environment."
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is truncated or not a PyTorch "
            "checkpoint. Download it again."
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a Chinese-CLIP checkpoint: it has no 'state_dict' mapping names to tensors.")
    unusable = [f"{key} ({_unusable(value)})" for key, value in state.items() if _unusable(value)]
    if unusable:
        raise CheckpointError(
            f"Checkpoint {path} holds tensors that are not plain dense weights: {', '.join(unusable[:3])}"
            f"{' …' if len(unusable) > 3 else ''}. Re-save it with `model.state_dict()` of an fp32 or fp16 model."
        )
    return {
        key.removeprefix("module."): value
        for key, value in state.items()
        if "bert.pooler" not in key  # cn_clip's BertModel has no pooler; official checkpoints carry one
    }


def _unusable(tensor: torch.Tensor) -> str:
    """Why a tensor cannot be copied into the model's float parameters, or '' when it can."""
    if tensor.is_meta:
        return "a meta tensor, with no data"
    if tensor.layout != torch.strided:
        return f"{str(tensor.layout).removeprefix('torch.')} layout"
    if tensor.is_quantized:
        return "quantized"
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32)):
        return f"dtype {str(tensor.dtype).removeprefix('torch.')}"
    return ""


def load_into(model: CLIP, state: dict[str, torch.Tensor], path: Path, config: ModelConfig) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs {config.name} {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            details.append("shapes differ: " + "; ".join(mismatched[:5]))
        if missing:
            details.append(f"{len(missing)} keys missing, e.g. {', '.join(missing[:3])}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(
            f"Checkpoint {path} does not fit model '{config.name}': {'; '.join(details)}. "
            f"{_guess_architecture(state)}"
        )
    # load_state_dict copies into the fp32 parameters, so fp16 checkpoints load as fp32.
    model.load_state_dict(state)


def _guess_architecture(state: dict[str, torch.Tensor]) -> str:
    for name in known_models():
        candidate = build_shapes(load_config(name))
        if all(key in state and state[key].shape == shape for key, shape in candidate.items()):
            return f"It looks like a {name} checkpoint: run with MODEL={name}."
    return "It matches none of the known architectures."


def build_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Shapes of a few tensors that tell the architectures apart, without building the model."""
    arch = config.architecture
    shapes = {
        "bert.embeddings.word_embeddings.weight": torch.Size([arch.text.vocab_size, arch.text.hidden_size]),
        "text_projection": torch.Size([arch.text.hidden_size, arch.embed_dim]),
        f"bert.encoder.layer.{arch.text.num_hidden_layers - 1}.output.dense.bias": torch.Size([arch.text.hidden_size]),
    }
    if arch.vision.family == "vit":
        grid = config.image_resolution // arch.vision.patch_size
        shapes["visual.positional_embedding"] = torch.Size([grid * grid + 1, arch.vision.width])
        shapes["visual.proj"] = torch.Size([arch.vision.width, arch.embed_dim])
    else:
        shapes["visual.attnpool.c_proj.weight"] = torch.Size([arch.embed_dim, arch.vision.width * 32])
    return shapes


def cn_clip_vocab() -> Path:
    """cn_clip's vocab.txt, located without importing cn_clip (which imports torch)."""
    spec = importlib.util.find_spec("cn_clip")
    return Path(next(iter(spec.submodule_search_locations))) / "clip" / "vocab.txt"
