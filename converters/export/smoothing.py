"""Activation smoothing: an exact rescaling at export time that moves activation outliers into the weights.

Per-tensor int8 activations share one scale across channels, so a few huge
channels leave the others a handful of levels. Where a normalization feeds
only linear maps, channel j of its gain and bias can be divided by s_j and
input channel j of the next weight multiplied by s_j: the tower computes the
same function (ReLU and average pooling commute with a positive scale), but
the activation is s_j times smaller where it was largest. SmoothQuant (Xiao
et al., 2023) picks s_j = max|X_j|^α / max|W_j|^(1-α), the migration strength
α balancing activation and weight ranges; X is measured on calibration photos,
never on the parity set.

The sites are the tower family's (`smoothing_sites` in `converters.export.families`):
only visual towers have them; the post-LN BERT text tower has none.

`smooth` works on a copy of the model: parity still compares every artifact
with the unsmoothed checkpoint, so the fp32 stages' tolerance (1e-5) checks
that the rescaling is exact.
"""

from __future__ import annotations

import copy

import torch
from cn_clip.clip.model import CLIP
from torch import nn

from converters.app.preprocess import Transform
from converters.data.calibration_set import calibration_pixels
from converters.export.config import ModelConfig
from converters.export.families import family
from converters.export.stress import input_channel_peaks

# Calibration samples the activation ranges are measured on (photos, then crops of them).
SAMPLES = 16
# Floor for the ranges, against dividing by zero; a channel that never fires is left as it is (s = 1).
EPSILON = 1e-5


def smooth(model: CLIP, config: ModelConfig, transform: Transform) -> CLIP:
    """A copy of `model` with its visual tower's activation outliers migrated into the weights (or `model` itself
    when the config's smoothing is off or the tower has no site); activations are measured on calibration photos
    preprocessed by `transform`, the bundle's."""
    options, sites = config.smoothing, family(config, "visual").smoothing_sites
    if not options.enabled or not sites(model.visual):
        return model
    smoothed = copy.deepcopy(model).eval()
    chosen = sites(smoothed.visual)
    ranges = _input_ranges(smoothed.visual, [site.consumer for site in chosen], transform)
    with torch.no_grad():
        for site, activation in zip(chosen, ranges):
            weight = site.weight.abs().transpose(0, 1).flatten(1).amax(dim=1).clamp_min(EPSILON)
            scale = activation.clamp_min(EPSILON) ** options.alpha / weight ** (1 - options.alpha)
            scale = torch.where(activation > 0, scale, torch.ones_like(scale))
            site.norm.weight.div_(scale)
            site.norm.bias.div_(scale)
            site.weight.mul_(scale.reshape(1, -1, *([1] * (site.weight.dim() - 2))))
    return smoothed


def _input_ranges(visual: nn.Module, consumers: list[nn.Module], transform: Transform) -> list[torch.Tensor]:
    """Per input channel of each consumer, the largest absolute value it sees over the calibration samples."""
    pixels = torch.from_numpy(calibration_pixels(SAMPLES, transform))
    ranges = dict(input_channel_peaks(lambda: visual(pixels), consumers))  # each consumer runs once per pass
    return [ranges[consumer] for consumer in consumers]
