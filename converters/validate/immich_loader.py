"""A CLIP folder loaded and run the way Immich's machine-learning service does it, step by step, so that the
check sees what Immich will see. Written from reading Immich's source (immich-app/immich, machine-learning/):

- text (`immich_ml/models/clip/textual.py`, `OpenClipTextualEncoder`): `tokenizers.Tokenizer.from_file(
  textual/tokenizer.json)`; `pad_token` read from `textual/tokenizer_config.json` (a KeyError when missing), its
  id looked up in the tokenizer; padding to `text_cfg.context_length` of `config.json` (77 when absent) and
  truncation to the same; the text first has its whitespace runs collapsed (`transforms.clean_text`); the ids are
  fed as `{"text": int32 [1, context_length]}` and output 0, row 0 is the embedding, used as is.
- image (`immich_ml/models/clip/visual.py`, `OpenClipVisualEncoder`; `models/transforms.py`): decoded with Pillow
  and converted to RGB first; `size`, `interpolation`, `mean`, `std` from `visual/preprocess_cfg.json`; the shorter
  side resized to `size` (the other side truncated to an integer) and the centre `size`×`size` cut out; versions
  that read `resize_mode` squash the whole photo to `size`×`size` when it says "squash"; then /255, normalized,
  NCHW, fed as `{"image": float32 [1, 3, size, size]}`, output 0 row 0.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import tokenizers
from PIL import Image

from converters.app.immich import ImmichFolder
from converters.errors import ArtifactError

ResizeMode = Literal["shortest", "squash"]


class ImmichLoadError(ArtifactError):
    """The folder is one Immich's loader would fail on."""


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise ImmichLoadError(f"Immich cannot read {path}: {error}") from error


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one sample per call, as Immich runs; one thread for reproducible sums
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a missing, damaged or invalid file
        raise ImmichLoadError(f"onnxruntime cannot load {path}: {error}") from error


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray], path: Path) -> np.ndarray:
    try:
        return np.asarray(session.run(None, feed)[0][0])
    except Exception as error:  # e.g. an int64 input fed Immich's int32 ids, or an input not named as Immich feeds it
        raise ImmichLoadError(f"{path} fails on Immich's input {_describe(feed)}: {error}") from error


def _describe(feed: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {value.dtype} {list(value.shape)}" for name, value in feed.items())


class ImmichTextual:
    def __init__(self, folder: ImmichFolder):
        self.folder = folder
        text_cfg = _json(folder.config).get("text_cfg", {})
        self.context_length = int(text_cfg.get("context_length", 77))
        kwargs = text_cfg.get("tokenizer_kwargs") or {}
        self.canonicalize = kwargs.get("clean") == "canonicalize"
        tokenizer_cfg = _json(folder.tokenizer_config)
        if "pad_token" not in tokenizer_cfg:
            raise ImmichLoadError(f"{folder.tokenizer_config} has no pad_token: Immich's loader stops with a KeyError.")
        pad_token = tokenizer_cfg["pad_token"]
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(folder.tokenizer))
        except Exception as error:
            raise ImmichLoadError(f"tokenizers cannot load {folder.tokenizer}: {error}") from error
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ImmichLoadError(f"The pad_token {pad_token!r} of {folder.tokenizer_config} is not in {folder.tokenizer}.")
        tokenizer.enable_padding(length=self.context_length, pad_token=pad_token, pad_id=pad_id)
        tokenizer.enable_truncation(max_length=self.context_length)
        self.tokenizer = tokenizer
        self.session = _session(folder.text_model)

    def clean(self, text: str) -> str:
        text = " ".join(text.split())
        if self.canonicalize:  # not written by this project; here so that a folder asking for it is run as Immich would
            text = text.translate(str.maketrans("", "", string.punctuation)).lower()
        return text

    def token_ids(self, text: str) -> np.ndarray:
        """int32 [1, context_length], as Immich feeds `text`."""
        return np.array([self.tokenizer.encode(self.clean(text)).ids], dtype=np.int32)

    def embed(self, text: str) -> np.ndarray:
        return _run(self.session, {"text": self.token_ids(text)}, self.folder.text_model)


class ImmichVisual:
    def __init__(self, folder: ImmichFolder):
        self.folder = folder
        cfg = _json(folder.preprocess_cfg)
        try:
            size = cfg["size"]
            self.size = int(size[0] if isinstance(size, list) else size)
            methods = {method.name.lower(): method for method in Image.Resampling}
            self.resample = methods[cfg["interpolation"].lower()]
            self.mean = np.array(cfg["mean"], dtype=np.float32)
            self.std = np.array(cfg["std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ImmichLoadError(f"{folder.preprocess_cfg} lacks or mistypes a key Immich reads: {error!r}") from error
        self.resize_mode: str = cfg.get("resize_mode", "shortest")
        self.session = _session(folder.visual_model)

    def modes(self) -> list[ResizeMode]:
        """The preprocessings Immich versions apply to this folder: the crop always (versions that do not read
        `resize_mode` crop whatever it says), and the squash where the file asks for it."""
        return ["shortest", "squash"] if self.resize_mode == "squash" else ["shortest"]

    def resized(self, image: Image.Image, mode: ResizeMode) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if mode == "squash":
            return image.resize((self.size, self.size), resample=self.resample)
        width, height = image.size
        if width < height:
            scaled = image.resize((self.size, int(height / width * self.size)), resample=self.resample)
        else:
            scaled = image.resize((int(width / height * self.size), self.size), resample=self.resample)
        left = int(scaled.width / 2 - self.size / 2)
        top = int(scaled.height / 2 - self.size / 2)
        return scaled.crop((left, top, left + self.size, top + self.size))

    def pixels(self, image: Image.Image, mode: ResizeMode = "shortest") -> np.ndarray:
        """float32 [1, 3, size, size], as Immich feeds `image`."""
        values = np.asarray(self.resized(image, mode), dtype=np.float32) / 255.0
        values = values * (1.0 / self.std) - self.mean / self.std
        return values.transpose(2, 0, 1)[None].astype(np.float32)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return _run(self.session, {"image": pixels}, self.folder.visual_model)

    def embed(self, image: Image.Image, mode: ResizeMode = "shortest") -> np.ndarray:
        return self.run(self.pixels(image, mode))


def decode(path: Path) -> Image.Image:
    """A photo as Immich's `decode_pil` gives it: loaded by Pillow, converted to RGB, no EXIF rotation."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")  # a copy: closing the file must not take the pixels with it
