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


# ---------------------------------------------------------------------------------------------
# Multi-crop (SwAV, Caron et al. 2020, Sec. 3.2; DINO, Caron et al. 2021, Sec. 3.1)
#
# Two global crops at the training size and V local crops at a smaller size covering a small part
# of the image. The crop areas of the papers (fractions of the image area):
#   SwAV / DeepCluster-v2: 2 x 224 px in (0.14, 1) + 6 x 96 px in (0.05, 0.14)   (official scripts)
#   DINO:                  2 x 224 px in (0.4, 1)  + 8 x 96 px in (0.05, 0.4)    (official defaults)
# Methods that take multi-crop (SwAV, DINO, DeepCluster-v2) expose ``num_local_crops``; the others
# (BYOL, SimCLR, MoCo, ...) train on their two views.

SWAV_GLOBAL_SCALE = (0.14, 1.0)
SWAV_LOCAL_SCALE = (0.05, 0.14)
LOCAL_SIZE_FRACTION = 96 / 224  # local / global side of both papers
MIN_LOCAL_SIZE = 4


def local_crop_size(global_size: int, fraction: float = LOCAL_SIZE_FRACTION) -> int:
    """Side of the local crops: ``round(fraction * global_size)``, at least 4 px and at most the global side."""
    return min(global_size, max(MIN_LOCAL_SIZE, int(round(fraction * global_size))))


def multi_crop_views(global_size: int, local_size: int, num_local: int,
                     global_scale: tuple[float, float] = SWAV_GLOBAL_SCALE,
                     local_scale: tuple[float, float] = SWAV_LOCAL_SCALE, *,
                     global_views: list[ViewSpec] | None = None,
                     local_view: ViewSpec | None = None) -> list[ViewSpec]:
    """Two global views at ``global_size`` then ``num_local`` local views at ``local_size``.

    ``global_views`` are the two templates of the global crops (default: BYOL's / DINO's asymmetric
    pair, blur 1.0 / 0.1, solarise 0.0 / 0.2) and ``local_view`` the template of every local crop
    (default: DINO's local crop, blur 0.5); only their size and crop scale are replaced. As for any
    view, every random parameter (crop box, flip, jitter, ...) is drawn per image and per view.
    """
    if num_local < 0:
        raise ValueError(f"num_local must be >= 0, got {num_local}")
    for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
        if not 0 < low <= high <= 1:
            raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(low, high)}")
    templates = global_views if global_views is not None else byol_views(global_size)
    if len(templates) != 2:
        raise ValueError(f"multi-crop takes two global view templates, got {len(templates)}")
    local = local_view if local_view is not None else ViewSpec(blur_p=0.5, solarize_p=0.0)
    globals_ = [replace(v, size=global_size, crop_scale=tuple(global_scale)) for v in templates]
    return globals_ + [replace(local, size=local_size, crop_scale=tuple(local_scale)) for _ in range(num_local)]
