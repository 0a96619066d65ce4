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

For ModifiedResNet the same few channels get large BatchNorm gains. All of it
is applied to the architecture's seeded random weights (`random_model`), with
`StressOptions` from the config (seed and magnitudes), so nothing depends on
one lucky seed. `activation_outliers` measures the result.
"""

from __future__ import annotations

import numpy as np
import torch
from cn_clip.clip.model import CLIP
from torch import nn

from converters.export.config import ModelConfig, StressOptions


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
        _massive_activation(model, dims, options)
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


def _massive_activation(model: CLIP, dims, options: StressOptions) -> None:
    """One residual dimension gets a large constant from the second block on (ViT) or the first layer (BERT)."""
    visual = model.visual
    if hasattr(visual, "transformer"):
        width = visual.transformer.width
        for block in visual.transformer.resblocks[1:]:
            block.mlp.c_proj.bias[int(dims(width)[0])] += options.residual
    for layer in model.bert.encoder.layer:
        hidden = layer.output.dense.bias.shape[0]
        layer.output.dense.bias[int(dims(hidden)[0])] += options.residual


def activation_outliers(model: nn.Module, run) -> list[float]:
    """For every matmul and convolution input while `run()` runs: the largest channel's absolute maximum over
    the median channel's. About 1 to 5 for random weights; tens or more where a few channels dominate."""
    ratios: list[float] = []

    def record(module, inputs, output=None):
        x = inputs[0].detach().float()
        channels = x.transpose(0, 1).flatten(1) if isinstance(module, nn.Conv2d) else x.reshape(-1, x.shape[-1]).T
        peaks = channels.abs().amax(dim=1)
        ratios.append(float(peaks.max() / peaks.median().clamp_min(1e-12)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return ratios
