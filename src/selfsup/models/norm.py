"""Normalisation choices: BatchNorm, none, GroupNorm with Weight Standardisation, or layer norm.

GroupNorm + WS is the batch-independent variant of Richemond et al. 2020, "BYOL works even
without batch statistics" (GroupNorm: Wu & He 2018; WS: Qiao et al. 2019). ``layernorm`` (Ba et al.
2016) normalises each sample over all its channels and positions (``GroupNorm`` with one group, a
per-channel affine) and, for MLPs, over its features: CPC v2's encoder norm (Henaff et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batchnorm", "none", "groupnorm_ws", "layernorm")


def make_norm(kind: str, channels: int, dims: int) -> nn.Module:
    """A normalisation layer over ``channels`` for 1-D (MLP) or 2-D (conv) activations."""
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "none":
        return nn.Identity()
    if kind == "groupnorm_ws":
        return nn.GroupNorm(_groups(channels), channels)
    if kind == "layernorm":
        return nn.GroupNorm(1, channels) if dims == 2 else nn.LayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")


def _groups(channels: int, preferred: int = 16) -> int:
    """Largest divisor of ``channels`` not above ``preferred`` (16 groups in Richemond et al.)."""
    return max(g for g in range(1, min(preferred, channels) + 1) if channels % g == 0)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised to zero mean, unit variance per output channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


def standardize_convs(model: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a ``WSConv2d`` in place (weights kept)."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = WSConv2d
    return model
