"""Resizing (and channel conversion) of uint8 image batches, in chunks so memory stays bounded.

Antialiased bilinear interpolation (``F.interpolate(..., antialias=True)``, the PIL-style filter
that averages over the source pixels a target pixel covers), rounded back to uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_uint8"]


def resize_uint8(images: torch.Tensor, size: int, channels: int | None = None, chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[N, channels, size, size]`` (``channels`` default: ``C``).

    Channels: 1 -> ``channels`` by repetition, ``C`` -> 1 by averaging with equal weights (the
    caller checks that one of the two applies). Size: antialiased bilinear resize when it differs.
    Both happen in float before one rounding to uint8. ``images`` itself is returned when nothing
    changes.
    """
    c = images.shape[1]
    channels = c if channels is None else channels
    if c == channels and tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], channels, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if c != channels:
            x = x.mean(dim=1, keepdim=True) if channels == 1 else x.repeat(1, channels, 1, 1)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out
