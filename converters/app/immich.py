"""What Immich's machine-learning service expects of a CLIP model folder, as data: read by the folder writer
(`converters.export.immich`), the check that loads the folder as Immich does (`converters.validate.immich_loader`)
and the Immich-compatible endpoint (`converters.search.immich_api`).

Read from Immich's source (immich-app/immich; paths below are relative to it):
- a CLIP model is chosen by name, and the name must be on two lists: `machine-learning/immich_ml/models/constants.py`
  (`_OPENCLIP_MODELS`) and the server's `CLIP_MODEL_INFO` in `server/src/constants.ts`, which gives the size of the
  vector column. A Chinese-CLIP model can therefore only be served under an OpenCLIP name of the same size.
- `nllb-*` names prefix the text with a language code (`models/clip/textual.py`), and `XLM-Roberta-*`/`LABSE-*`
  names are M-CLIP, whose text model is fed `input_ids` and `attention_mask` (`models/__init__.py`): neither fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

# Allow-listed OpenCLIP names and their embedding size (server/src/constants.ts, CLIP_MODEL_INFO; each also in
# machine-learning/immich_ml/models/constants.py). Only the names we choose from, or that a user may pass, matter.
IMMICH_CLIP_DIMS: dict[str, int] = {
    "RN50__openai": 1024,
    "RN101__openai": 512,
    "ViT-B-32__openai": 512,
    "ViT-B-16__openai": 512,
    "ViT-L-14__openai": 768,
    "ViT-L-14-336__openai": 768,
    "ViT-H-14__laion2b-s32b-b79k": 1024,
}
# The name chosen by default for an embedding size (and, for 768, the resolution): one OpenAI name per size, so
# that the folder's name says "an OpenAI CLIP of this size", never a multilingual one.
DEFAULT_NAMES: dict[tuple[int, int | None], str] = {
    (512, None): "ViT-B-16__openai",
    (768, None): "ViT-L-14__openai",
    (768, 336): "ViT-L-14-336__openai",
    (1024, None): "RN50__openai",
}
UNUSABLE_PREFIXES = ("nllb", "XLM-Roberta", "LABSE")
# The file this project writes into every folder it makes; a folder without it is not ours to overwrite.
MARKER = ".cnclip-immich.json"
CHECK_JSON = "immich-check.json"
CHECK_MD = "immich-check.md"


def immich_name(dim: int, resolution: int, name: str | None = None) -> str:
    """The allow-listed name to serve a model of `dim` dimensions under: `name` when given, else the default."""
    if name is not None:
        if name.startswith(UNUSABLE_PREFIXES):
            raise UserError(
                f"{name} is a multilingual name: Immich prefixes nllb texts with a language code and feeds M-CLIP "
                "text models other inputs. Use an OpenCLIP name of the same embedding size, e.g. "
                f"{', '.join(n for n, d in IMMICH_CLIP_DIMS.items() if d == dim) or 'ViT-B-16__openai (512)'}."
            )
        return name
    chosen = DEFAULT_NAMES.get((dim, resolution)) or DEFAULT_NAMES.get((dim, None))
    if chosen is None:
        raise UserError(
            f"No allow-listed Immich CLIP name has {dim} dimensions (known: "
            f"{', '.join(f'{n} {d}' for n, d in IMMICH_CLIP_DIMS.items())}); give --name."
        )
    return chosen


def dim_mismatch(name: str, dim: int) -> str | None:
    """A warning when Immich's server would size the vector column differently from the model's output."""
    expected = IMMICH_CLIP_DIMS.get(name)
    if expected is None:
        return f"{name} is not one of the names this tool knows; check it is in Immich's CLIP_MODEL_INFO with {dim} dimensions."
    if expected != dim:
        return f"Immich's server sizes {name}'s vectors {expected}, but this model gives {dim}: Immich cannot store them."
    return None


@dataclass(frozen=True)
class ImmichFolder:
    """The files of one model in Immich's cache, `<cache>/clip/<name>/` (models/base.py: cache_folder / task / name;
    with MACHINE_LEARNING_MODEL_REVISION other than "main", one folder deeper, named after the revision)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"  # models/clip/textual.py: text_cfg.context_length

    @property
    def text_model(self) -> Path:
        return self.root / "textual" / "model.onnx"

    @property
    def tokenizer(self) -> Path:
        return self.root / "textual" / "tokenizer.json"

    @property
    def tokenizer_config(self) -> Path:
        return self.root / "textual" / "tokenizer_config.json"

    @property
    def visual_model(self) -> Path:
        return self.root / "visual" / "model.onnx"

    @property
    def preprocess_cfg(self) -> Path:
        return self.root / "visual" / "preprocess_cfg.json"

    @property
    def readme(self) -> Path:
        return self.root / "README.txt"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def check_json(self) -> Path:
        return self.root / CHECK_JSON

    @property
    def check_md(self) -> Path:
        return self.root / CHECK_MD
