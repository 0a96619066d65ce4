"""ModifiedResNet visual tower: its rewrite for ncnn (the attention pool batch-first), smoothing sites, stress hook.

cn_clip's `AttentionPool2d` lays the feature map out sequence-first
((HW+1), N, C) for `F.multi_head_attention_forward`, so pnnx again maps the
sequence onto ncnn's batch axis. Only the output of the first query (the
mean token) is used, so the pool here attends with that one query over all
HW+1 tokens, batch-first, with the pool's own q/k/v/c projections: plain
matmul, softmax and linear layers in ncnn, with HW+1 times fewer attention scores.
The convolutional trunk is cn_clip's own modules, unchanged.

Input `pixels` [1, 3, R, R] float32, output [1, embed_dim] float32.
"""

from __future__ import annotations

import torch
from cn_clip.clip.model import CLIP, AttentionPool2d, ModifiedResNet
from torch import nn

from converters.app.preprocess import Transform
from converters.data.calibration_set import calibration_photos
from converters.export.families import Site


class FirstQueryAttentionPool(nn.Module):
    def __init__(self, pool: AttentionPool2d):
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.q_proj = pool.q_proj
        self.k_proj = pool.k_proj
        self.v_proj = pool.v_proj
        self.c_proj = pool.c_proj
        self.num_heads = pool.num_heads

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding
        n, length, width = x.shape
        head = width // self.num_heads
        q = self.q_proj(x[:, :1]).reshape(n, 1, self.num_heads, head).transpose(1, 2)
        k = self.k_proj(x).reshape(n, length, self.num_heads, head).transpose(1, 2)
        v = self.v_proj(x).reshape(n, length, self.num_heads, head).transpose(1, 2)
        weights = torch.softmax((q * head**-0.5) @ k.transpose(-2, -1), dim=-1)
        return self.c_proj((weights @ v).transpose(1, 2).reshape(n, width))


class BatchFirstResNet(nn.Module):
    def __init__(self, visual: ModifiedResNet):
        super().__init__()
        # Each original module is reachable under one name only: when a wrapper held both
        # `visual` and `visual.attnpool`, pnnx left the pool's projections as unconverted
        # `nn.Linear` layers taking their weights as inputs, which ncnn cannot load.
        self.stem = nn.ModuleList([visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3])
        self.relu = visual.relu
        self.avgpool = visual.avgpool
        self.layers = nn.Sequential(visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        self.attnpool = FirstQueryAttentionPool(visual.attnpool)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels
        for conv, bn in zip(self.stem[0::2], self.stem[1::2]):
            x = self.relu(bn(conv(x)))
        return self.attnpool(self.layers(self.avgpool(x)))


def export_module(model: CLIP) -> nn.Module:
    return BatchFirstResNet(model.visual).eval()


def smoothing_sites(visual: ModifiedResNet) -> list[Site]:
    """The stem's bn1 → conv2 and bn2 → conv3, and each bottleneck's (their outputs stay inside the branch)."""
    found = []
    for owner in (visual, *_bottlenecks(visual)):
        found.append(Site(owner.bn1, owner.conv2, owner.conv2.weight))
        found.append(Site(owner.bn2, owner.conv3, owner.conv3.weight))
    return found


def stress(visual: ModifiedResNet, dims, options, resolution: int) -> None:
    """Residual branches scaled by `branch_gain`, then every BatchNorm's statistics measured on photos (the stress
    module says why trained ResNets look like this)."""
    for block in _bottlenecks(visual):  # bn3 ends each residual branch (the stem's bn3 feeds no residual)
        block.bn3.weight.mul_(options.branch_gain)
        block.bn3.bias.mul_(options.branch_gain)
    _measure_batch_norm_statistics(visual, resolution)


def _bottlenecks(visual: ModifiedResNet) -> list[nn.Module]:
    return [block for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4) for block in layer]


def _measure_batch_norm_statistics(visual: nn.Module, resolution: int) -> None:
    """Running mean and variance of every BatchNorm set to those of its input over photos: one pass in training
    mode with a cumulative average (momentum None), which is what the running statistics converge to. The photos
    are the calibration set's, whole (never the parity set, which grades these weights)."""
    pixels = torch.from_numpy(calibration_photos(Transform(resolution)))
    norms = [m for m in visual.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    visual.train()
    try:
        with torch.no_grad():
            visual(pixels)
    finally:
        visual.eval()
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
