"""Stress weights: seeded weights with the statistics that make int8 hard in trained towers.

Random initialisation spreads activations evenly, so one int8 scale per tensor
loses little. Trained transformers are not like that, and this generator
imitates three things reported for them:

- a few outlier hidden dimensions: LayerNorm gains and biases tens of times the
  others at the same few dimensions in every layer, so the inputs of the
  attention and MLP matmuls carry a few huge channels (Dettmers et al., 2022,
  "LLM.int8()"; Bondarenko et al., 2021, "Understanding and overcoming the
  challenges of efficient transformer quantization", on BERT);
- massive activations: one residual-stream dimension holding a value far above
  all others from an early layer on (Sun et al., 2024, "Massive activations in
  large language models", also seen in ViTs);
- heavy-tailed weight matrices: Student-t instead of Gaussian values, with the
  same standard deviation.

For ModifiedResNet the same few channels get large BatchNorm gains, and two
more properties of trained ResNets are kept, because without them the stress
model describes a network no training produces:

- every BatchNorm's running statistics are measured again on natural photos,
  as training leaves them. Otherwise the gains compound through the sixteen
  bottlenecks of RN50 to activations of 1e6, beyond float16's 65504, while a
  trained tower's fit in float16 (cn_clip trains under float16 autocast);
- each bottleneck's residual branch adds a fraction of the stream
  (`branch_gain` on its last BatchNorm), as the zero-initialised last
  BatchNorm of Goyal et al. (2017, "Accurate, large minibatch SGD") and
  trained ResNets' small last-BatchNorm gains make it. With unit-gain branches
  the random trunk is chaotic: rounding weights and activations to float16
  alone moved RN50's embedding to cosine 0.996, where trained ResNets run in
  float16 unharmed.

The dominant channels stay (tens of times the median at every convolution).
All of it is applied to the architecture's seeded random weights (`random_model`), with
`StressOptions` from the config (seed and magnitudes), so nothing depends on
one lucky seed. `activation_outliers` measures the result.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from cn_clip.clip.model import CLIP
from torch import nn

from converters.export.config import ModelConfig, StressOptions
from converters.export.families import family

# Part of the stress checkpoint's digest: bundles made by an earlier generator are converted again.
# 2: BatchNorm statistics measured after the gains are set, residual branches scaled by branch_gain.
GENERATOR_VERSION = 2


def stress_model(config: ModelConfig, model: CLIP) -> CLIP:
    """`model` (seeded random weights) turned into stress weights, in place."""
    options = config.stress
    rng = np.random.default_rng([options.seed, config.seed])
    outliers: dict[int, np.ndarray] = {}  # width → its outlier dimensions, the same in every layer

    def dims(width: int) -> np.ndarray:
        if width not in outliers:
            outliers[width] = rng.choice(width, size=min(options.outlier_dims, width), replace=False)
        return outliers[width]

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                _heavy_tailed(module.weight, options, rng)
            elif isinstance(module, nn.MultiheadAttention):
                _heavy_tailed(module.in_proj_weight, options, rng)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                _outlier_gains(module, dims(module.weight.shape[0]), options, rng)
        family(config, "visual").stress(model.visual, dims, options, config.image_resolution)
        family(config, "text").stress(model.bert, dims, options, config.image_resolution)
    return model


def _heavy_tailed(weight: torch.Tensor, options: StressOptions, rng: np.random.Generator) -> None:
    df = options.tail_df
    values = rng.standard_t(df, size=weight.shape) / np.sqrt(df / (df - 2))  # unit variance
    weight.copy_(torch.from_numpy(values).to(weight.dtype) * weight.std())


def _outlier_gains(norm: nn.Module, dims: np.ndarray, options: StressOptions, rng: np.random.Generator) -> None:
    typical = norm.weight.abs().mean()
    index = torch.from_numpy(dims)
    norm.weight[index] = typical * options.norm_gain * torch.from_numpy(rng.uniform(0.5, 1.0, len(dims))).float()
    norm.bias[index] = options.norm_bias * torch.from_numpy(rng.choice([-1.0, 1.0], len(dims))).float()


class InputPeaks(NamedTuple):
    """One matmul or convolution input: its largest channel's absolute maximum over the median channel's (about 1
    to 5 for random weights, tens or more where a few channels dominate), and its largest absolute value."""

    ratio: float
    peak: float


def activation_outliers(model: nn.Module, run, modules: list[nn.Module] | None = None) -> list[InputPeaks]:
    """`InputPeaks` of every matmul and convolution input while `run()` runs (or of `modules`' inputs)."""
    if modules is None:
        modules = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    rows = []
    for _, peaks in input_channel_peaks(run, modules):
        rows.append(InputPeaks(float(peaks.max() / peaks.median().clamp_min(1e-12)), float(peaks.max())))
    return rows


def input_channel_peaks(run, modules: list[nn.Module]) -> list[tuple[nn.Module, torch.Tensor]]:
    """For every call of one of `modules` while `run()` runs: the module, and the largest absolute value of each
    channel of its input (convolutions take [N, C, H, W], attention and linear layers [..., C])."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []

    def record(module, inputs):
        x = inputs[0].detach().float()
        channels = x.transpose(0, 1).flatten(1) if isinstance(module, nn.Conv2d) else x.reshape(-1, x.shape[-1]).T
        calls.append((module, channels.abs().amax(dim=1)))

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls
