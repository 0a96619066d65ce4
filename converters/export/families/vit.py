"""ViT visual tower: its batch-first rewrite for ncnn, its smoothing sites, its stress hook.

The rewrite is what ncnn can express of cn_clip's `VisualTransformer`.

cn_clip runs its transformer sequence-first (`x.permute(1, 0, 2)` around
`nn.MultiheadAttention`). pnnx then treats the sequence axis as ncnn's batch
axis ("binaryop broadcast across batch axis 0 and 1 is not supported",
"select along batch axis 1 is not supported") and the ncnn model returns
garbage. Here the same blocks run batch-first: each attention is a
`batch_first=True` `nn.MultiheadAttention` holding the original block's
parameters, which pnnx turns into one ncnn `MultiHeadAttention` layer.

Input `pixels` [1, 3, R, R] float32, output [1, embed_dim] float32.
"""

from __future__ import annotations

import torch
from cn_clip.clip.model import CLIP, ResidualAttentionBlock, VisualTransformer
from torch import nn

from converters.export.families import Site


def batch_first_attention(attn: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """A batch-first twin of `attn` holding the same parameter tensors (built on meta, nothing copied)."""
    twin = nn.MultiheadAttention(attn.embed_dim, attn.num_heads, batch_first=True, device="meta")
    twin.in_proj_weight = attn.in_proj_weight
    twin.in_proj_bias = attn.in_proj_bias
    twin.out_proj = attn.out_proj
    return twin


class BatchFirstBlock(nn.Module):
    def __init__(self, block: ResidualAttentionBlock):
        super().__init__()
        self.ln_1 = block.ln_1
        self.attn = batch_first_attention(block.attn)
        self.ln_2 = block.ln_2
        self.mlp = block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class BatchFirstViT(nn.Module):
    def __init__(self, visual: VisualTransformer):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = nn.Sequential(*(BatchFirstBlock(block) for block in visual.transformer.resblocks))
        self.ln_post = visual.ln_post
        self.proj = visual.proj

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.view(1, 1, -1), x], dim=1) + self.positional_embedding
        x = self.blocks(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


def export_module(model: CLIP) -> nn.Module:
    return BatchFirstViT(model.visual).eval()


def smoothing_sites(visual: VisualTransformer) -> list[Site]:
    """Pre-LN blocks: ln_1 feeds only the attention's in-projection, ln_2 only the MLP's c_fc."""
    found = []
    for block in visual.transformer.resblocks:
        found.append(Site(block.ln_1, block.attn, block.attn.in_proj_weight))
        found.append(Site(block.ln_2, block.mlp.c_fc, block.mlp.c_fc.weight))
    return found


def stress(visual: VisualTransformer, dims, options, resolution: int) -> None:
    """A massive activation: one residual dimension gets a large constant from the second block on."""
    width = visual.transformer.width
    for block in visual.transformer.resblocks[1:]:
        block.mlp.c_proj.bias[int(dims(width)[0])] += options.residual
