"""BERT text tower: its rewrite for ncnn (an unpadded id sequence with explicit position ids), no smoothing
sites, its stress hook.

cn_clip builds the attention mask inside the model (`text.ne(0)`,
`ones_like`, `zeros_like` for token types); pnnx leaves those as `torch.ne`,
`Tensor.to` and `Tensor.expand_as` layers that ncnn does not have, and the
net does not load. Padded positions only ever receive a weight of
exp(-10000) == 0 in fp32, so dropping them changes nothing for the [CLS]
embedding: the rewrite takes the kept tokens and their positions in the
padded row, adds the token-type-0 row that cn_clip's all-zero token types
select, and runs cn_clip's own encoder layers without a mask. pnnx turns
each of those layers' attention into one ncnn `MultiHeadAttention` layer,
which takes any sequence length.

The position ids are an input rather than an `arange` inside the graph:
ncnn has no layer that makes a range from a blob's length.
"""

from __future__ import annotations

import torch
from cn_clip.clip.model import CLIP
from torch import nn

from converters.export.families import Site


class UnpaddedBert(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        embeddings = model.bert.embeddings
        self.word_embeddings = embeddings.word_embeddings
        self.position_embeddings = embeddings.position_embeddings
        self.token_type_embeddings = embeddings.token_type_embeddings
        self.layer_norm = embeddings.LayerNorm
        self.layers = model.bert.encoder.layer
        self.text_projection = model.text_projection

    def forward(self, token_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(token_ids) + self.position_embeddings(position_ids)
        x = self.layer_norm(x + self.token_type_embeddings.weight[0])
        for layer in self.layers:
            x = layer(x)
        return x[:, 0, :] @ self.text_projection


def export_module(model: CLIP) -> nn.Module:
    return UnpaddedBert(model).eval()


def smoothing_sites(bert: nn.Module) -> list[Site]:
    """None: post-LN, each LayerNorm's output is also the residual stream, which a rescaling would change."""
    return []


def stress(bert: nn.Module, dims, options, resolution: int) -> None:
    """A massive activation: one residual dimension gets a large constant from the first layer on."""
    for layer in bert.encoder.layer:
        hidden = layer.output.dense.bias.shape[0]
        layer.output.dense.bias[int(dims(hidden)[0])] += options.residual
