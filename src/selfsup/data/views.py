"""What a method asks the augmentation pipeline for: a list of views, each with its own recipe."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view: output size and per-operation parameters/probabilities.

    Defaults are the BYOL recipe (Grill et al. 2020, Table 6) for view 1. Colour operations are
    skipped on 1-channel images except brightness and contrast (see ``augment``).
    """

    size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1  # kernel size = odd(round(fraction * size)); BYOL: 23 px at 224
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5


def byol_views(size: int, crop_scale: tuple[float, float] = (0.08, 1.0)) -> list[ViewSpec]:
    """The two asymmetric BYOL views: blur 1.0 / 0.1, solarise 0.0 / 0.2 (Grill et al. 2020, Table 6)."""
    first = ViewSpec(size=size, crop_scale=crop_scale, blur_p=1.0, solarize_p=0.0)
    return [first, replace(first, blur_p=0.1, solarize_p=0.2)]
