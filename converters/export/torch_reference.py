"""The PyTorch fp32 model as an Embedder: the reference every artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch
from cn_clip.clip.model import CLIP


class TorchEmbedder:
    def __init__(self, model: CLIP):
        self.model = model.eval()

    @torch.no_grad()
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.encode_image(torch.from_numpy(pixels)).numpy()

    @torch.no_grad()
    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray:
        return self.model.encode_text(torch.from_numpy(token_ids.astype(np.int64))).numpy()
