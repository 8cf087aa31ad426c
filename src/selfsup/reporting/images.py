"""Image tensors in matplotlib axes, shared by the augmentation preview, the attention maps and the
retrieval grid: tiny images upscaled to be visible, RGB shown as is, other channel counts in gray."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes

__all__ = ["MIN_DISPLAY_PX", "upscale", "show_image", "hide_ticks"]

MIN_DISPLAY_PX = 96  # tiny images are upscaled (nearest) to at least this many pixels


def upscale(pixels: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` upscaled (nearest) by the smallest integer factor that brings the longer
    side to ``MIN_DISPLAY_PX`` or more; returned as is when it already is that large."""
    factor = max(1, -(-MIN_DISPLAY_PX // max(pixels.shape[-2:])))
    if factor == 1:
        return pixels
    return F.interpolate(pixels, scale_factor=factor, mode="nearest")


def hide_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def show_image(ax: Axes, image: torch.Tensor) -> None:
    """Draw a float ``[C, H, W]`` image in [0, 1] pixel for pixel, without ticks: three channels
    as RGB, any other count as its first channel on the gray colormap."""
    x = image.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 3:
        ax.imshow(x.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    hide_ticks(ax)
