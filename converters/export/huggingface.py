"""Hugging Face `ChineseCLIPModel` checkpoints (a `save_pretrained` folder, or `hf:OWNER/NAME`) as input.

There is one conversion path: the folder's weights are renamed into a cn_clip
model of the same architecture, and every stage runs on that model as on an
official `.pt`. The two models compute the same function: the ViT's separate
q/k/v projections are cn_clip's fused `in_proj`, the projections are the
transposed linear weights, and both take the [CLS] token (not BERT's pooler)
for text and the post-LayerNorm class token for images; parity checks this
against transformers' own `get_image_features` / `get_text_features`.

What the checkpoint says about its inputs is followed: the processor's
resize and crop, mean and std become the bundle's preprocessing, and its
`vocab.txt` the bundle's vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from converters.app.fsutil import sha256_file, sha256_text
from converters.app.preprocess import Transform
from converters.errors import CheckpointError
from converters.export.config import (
    ModelConfig,
    known_models,
    load_config,
    validate_config,
)

PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The files that define the model and its inputs: their content is the checkpoint's identity. A folder
# saved by transformers 4 (as the OFA-Sys repositories are) has preprocessor_config.json and vocab.txt;
# transformers 5 writes processor_config.json and tokenizer.json instead.
IDENTITY_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "vocab.txt", "tokenizer.json",
                  "tokenizer_config.json")


def is_checkpoint_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def download(reference: str) -> Path:
    """`hf:OWNER/NAME` through huggingface_hub's cache (HF_HOME), downloading it when it is not there."""
    repo = reference.removeprefix(PREFIX)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{reference!r} names no repository: write hf:OWNER/NAME, e.g. hf:OFA-Sys/chinese-clip-vit-base-patch16.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=[*IDENTITY_FILES, *WEIGHT_FILES]))
    except Exception as error:  # no network, no such repository, no huggingface_hub
        raise CheckpointError(
            f"Could not get {repo} from the Hugging Face hub ({type(error).__name__}: {error}). Download the folder "
            "on a machine with network access (`huggingface-cli download " + repo + " --local-dir DIR`) and pass "
            "CKPT=DIR (make) or --checkpoint DIR (CLI)."
        ) from None


def _read_json(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {name}; it is not a complete Hugging Face model folder.") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / name} cannot be read as JSON ({error}).") from None


def hf_config(folder: Path) -> dict:
    config = _read_json(folder, "config.json")
    if not isinstance(config, dict) or not all(isinstance(config.get(k, {}), dict) for k in ("vision_config", "text_config")):
        raise CheckpointError(f"{folder / 'config.json'} is not a ChineseCLIPModel config (it is not a mapping of settings).")
    if config.get("model_type") != "chinese_clip":
        raise CheckpointError(
            f"{folder / 'config.json'} describes a '{config.get('model_type')}' model, not 'chinese_clip' "
            "(transformers' ChineseCLIPModel)."
        )
    return config


def architecture(folder: Path) -> ModelConfig:
    """The folder's architecture as a config of this project, validated like a YAML config (sizes, consistency)."""
    config = hf_config(folder)
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    try:
        if not isinstance(vision["num_attention_heads"], int) or vision["num_attention_heads"] <= 0:
            raise CheckpointError(f"{folder / 'config.json'}: vision_config.num_attention_heads must be a positive whole number.")
        if vision.get("hidden_act", "quick_gelu") != "quick_gelu" or vision["intermediate_size"] != 4 * vision["hidden_size"]:
            raise CheckpointError(
                f"{folder / 'config.json'}: a vision tower with hidden_act {vision.get('hidden_act')!r} and "
                f"intermediate_size {vision['intermediate_size']} has no cn_clip counterpart (quick_gelu, 4 × hidden_size)."
            )
        raw = {
            "name": folder.name,
            "architecture": {
                "embed_dim": config["projection_dim"],
                "vision": {
                    "layers": vision["num_hidden_layers"],
                    "width": vision["hidden_size"],
                    "patch_size": vision["patch_size"],
                    "head_width": vision["hidden_size"] // vision["num_attention_heads"],
                },
                "text": {key: text[key] for key in (
                    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "hidden_act",
                )},
            },
            "image_resolution": vision["image_size"],
        }
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / 'config.json'} lacks or mistypes {error}; it is not a ChineseCLIPModel config.") from None
    return validate_config(raw, folder / "config.json")


def infer_config(folder: Path) -> ModelConfig:
    """The known model with this folder's architecture, or the config made from the folder alone."""
    found = architecture(folder)
    for name in known_models():
        config = load_config(name)
        if _differences(config, found) == []:
            return config
    return found


def _differences(config: ModelConfig, other: ModelConfig) -> list[str]:
    def facts(c: ModelConfig) -> dict:
        # Through JSON, so that tuples and lists compare as the same thing.
        return json.loads(json.dumps({"architecture": c.architecture.model_dump(), "image_resolution": c.image_resolution}))

    expected, found = facts(config), facts(other)

    def walk(ours, theirs, key: str) -> list[str]:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            return [d for k in ours if k in theirs for d in walk(ours[k], theirs[k], f"{key}.{k}" if key else k)]
        return [] if ours == theirs else [f"{key}: {ours} in model '{config.name}', {theirs} in the checkpoint"]

    return walk(expected, found, "")


def check_matches(config: ModelConfig, folder: Path) -> None:
    differences = _differences(config, architecture(folder))
    if differences:
        raise CheckpointError(
            f"The checkpoint {folder} is not model '{config.name}': {'; '.join(differences)}. "
            f"Leave MODEL out to take the folder's own architecture ({infer_config(folder).name})."
        )


def weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has no weights: neither {' nor '.join(WEIGHT_FILES)}. A `save_pretrained` folder holds one of them."
    )


def transform(folder: Path, resolution: int) -> Transform:
    """The preprocessing the folder's processor asks for; cn_clip's square resize when it names none."""
    if (folder / "preprocessor_config.json").is_file():
        where, processor = "preprocessor_config.json", _read_json(folder, "preprocessor_config.json")
    elif (folder / "processor_config.json").is_file():
        where, processor = "processor_config.json", _read_json(folder, "processor_config.json").get("image_processor", {})
    else:
        return Transform(resolution)

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{folder / where}: {problem}; the model takes {resolution}×{resolution} pixels.")

    mean, std = processor.get("image_mean", Transform.mean), processor.get("image_std", Transform.std)
    if not all(isinstance(v, list | tuple) and len(v) == 3 and all(isinstance(x, int | float) for x in v) for v in (mean, std)) \
            or not all(x > 0 for x in std):
        raise refuse(f"image_mean {mean!r} and image_std {std!r} must be three numbers each, std above 0")
    # transformers also takes a bare number: the shorter side for `size`, both sides for `crop_size`.
    size = {"shortest_edge": processor["size"]} if isinstance(processor.get("size"), int) else processor.get("size", {})
    crop = processor.get("crop_size", {})
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if not processor.get("do_resize", True):
        raise refuse("it does not resize")
    if processor.get("do_center_crop") and isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
        if not isinstance(crop, dict) or crop.get("height") != crop.get("width") or crop.get("height") != resolution:
            raise refuse(f"crop_size {crop!r} is not the model's input")
        if size["shortest_edge"] < resolution:
            raise refuse(f"size.shortest_edge {size['shortest_edge']} is smaller than the crop")
        return Transform(resolution, tuple(mean), tuple(std), "shortest_edge_center_crop", size["shortest_edge"])
    if size not in ({}, {"height": resolution, "width": resolution}):
        raise refuse(f"size {size!r} without a centre crop does not make a {resolution}×{resolution} image")
    return Transform(resolution, tuple(mean), tuple(std))


def vocabulary(folder: Path) -> bytes:
    """The tokenizer's vocab.txt: the folder's own, or the WordPiece vocabulary of its tokenizer.json."""
    settings = _read_json(folder, "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if settings.get("do_lower_case", True) is False:
        raise CheckpointError(
            f"{folder / 'tokenizer_config.json'} turns lower-casing off; the bundle's tokenizer is cn_clip's, which lower-cases."
        )
    if (folder / "vocab.txt").is_file():
        return (folder / "vocab.txt").read_bytes()
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder} has neither vocab.txt nor tokenizer.json; the tokenizer needs one of them.")
    model = _read_json(folder, "tokenizer.json").get("model", {})
    vocab = model.get("vocab")
    if model.get("type") != "WordPiece" or not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise CheckpointError(f"{folder / 'tokenizer.json'} holds no WordPiece vocabulary with ids 0 … n-1.")
    return "".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)).encode("utf-8")


def digest(folder: Path) -> str:
    files = [folder / name for name in IDENTITY_FILES if (folder / name).is_file()] + [weight_file(folder)]
    return sha256_text(*(f"{f.name}:{sha256_file(f)}" for f in files))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = weight_file(folder)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))  # safetensors holds tensors only: nothing in it can run
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} cannot be read ({error}); it is truncated or corrupt. Download it again.") from None
    from converters.export.checkpoint import read_state_dict

    return read_state_dict(path)  # torch.load(weights_only=True)


def to_cn_clip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """ChineseCLIPModel weight names and layouts → cn_clip's `CLIP` state dict."""
    renamed = {"logit_scale": state["logit_scale"]}
    for key, value in state.items():
        if key.startswith("text_model.") and ".pooler." not in key:
            renamed["bert." + key.removeprefix("text_model.")] = value
    vision = "vision_model."
    renamed |= {
        "visual.class_embedding": state[vision + "embeddings.class_embedding"],
        "visual.positional_embedding": state[vision + "embeddings.position_embedding.weight"],
        "visual.conv1.weight": state[vision + "embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": state[vision + "pre_layrnorm.weight"],
        "visual.ln_pre.bias": state[vision + "pre_layrnorm.bias"],
        "visual.ln_post.weight": state[vision + "post_layernorm.weight"],
        "visual.ln_post.bias": state[vision + "post_layernorm.bias"],
        "visual.proj": state["visual_projection.weight"].T,
        "text_projection": state["text_projection.weight"].T,
    }
    for i in range(layers):
        hf, ours = f"{vision}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            renamed[f"{ours}attn.in_proj_{part}"] = torch.cat([state[f"{hf}self_attn.{p}_proj.{part}"] for p in "qkv"])
            for theirs, mine in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                renamed[f"{ours}{mine}.{part}"] = state[f"{hf}{theirs}.{part}"]
    return {key: value.contiguous() for key, value in renamed.items()}


def load_state(folder: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    state = read_weights(folder)
    try:
        return to_cn_clip(state, config.architecture.vision.layers)
    except KeyError as error:
        raise CheckpointError(
            f"{weight_file(folder)} lacks the weight {error}: it is not a ChineseCLIPModel of model '{config.name}'."
        ) from None


def reference(folder: Path, parity_set, context_length: int):
    """transformers' own embeddings of the parity set, through the folder's processor (Pillow backend) and tokenizer."""
    import numpy as np
    from PIL import Image
    from transformers import (
        AutoTokenizer,
        ChineseCLIPImageProcessorPil,
        ChineseCLIPModel,
    )

    from converters.validate.fidelity import Embeddings

    model = ChineseCLIPModel.from_pretrained(str(folder)).eval()
    processor = ChineseCLIPImageProcessorPil.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def features(output) -> np.ndarray:
        return output.pooler_output.numpy()  # transformers 5: the projected features, in an output object

    images, texts = [], []
    with torch.no_grad():
        for path in parity_set.image_files:
            with Image.open(path) as image:
                pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            images.append(features(model.get_image_features(pixel_values=pixels)))
        for caption in parity_set.captions:
            tokens = tokenizer([caption], padding="max_length", max_length=context_length, truncation=True, return_tensors="pt")
            texts.append(features(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])))
    return Embeddings(np.concatenate(images), np.concatenate(texts))
