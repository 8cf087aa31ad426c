"""Multi-crop helpers shared by SwAV, DINO and DeepCluster-v2 (Caron et al. 2020, Sec. 3.2).

The views list is ``[global 1, global 2, local 1, ..., local V]``. Crops of the same size are
concatenated and encoded in one forward pass (as the official SwAV/DINO code does), so BatchNorm
sees the crops of one resolution together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec, local_crop_size, multi_crop_views


@dataclass
class MultiCropConfig:
    """Multi-crop options, SwAV's defaults: 2 global crops (0.14, 1) + 6 local crops (0.05, 0.14) at
    96/224 of the global side. Methods' configs inherit these (and may change the defaults)."""

    num_local_crops: int = 6
    global_crop_scale_min: float = 0.14  # global crops cover (global_crop_scale_min, 1) of the image
    local_crop_scale_min: float = 0.05  # local crops cover (local_crop_scale_min, global_crop_scale_min)
    local_crop_size_fraction: float = 96 / 224  # local side / global side

    def __post_init__(self) -> None:
        if self.num_local_crops < 0:
            raise ValueError(f"--num-local-crops: must be >= 0, got {self.num_local_crops}")


# The small-image recipes' crops (measured on 8-px digits, BENCHMARKS.md): large global crops, and
# no local crops, which hurt at that size; --num-local-crops turns them on at 3/4 of the side.
SMALL_IMAGE_CROPS = {"num_local_crops": 0, "global_crop_scale_min": 0.6, "local_crop_scale_min": 0.3,
                     "local_crop_size_fraction": 0.75}


def crop_views(config: Any, size: int, global_views: list[ViewSpec], local_view: ViewSpec) -> list[ViewSpec]:
    """The views of a method config with ``num_local_crops``, ``global_crop_scale_min``,
    ``local_crop_scale_min`` and ``local_crop_size_fraction`` (local crops end where global ones start)."""
    global_min = config.global_crop_scale_min
    return multi_crop_views(size, local_crop_size(size, config.local_crop_size_fraction), config.num_local_crops,
                            (global_min, 1.0), (config.local_crop_scale_min, global_min),
                            global_views=global_views, local_view=local_view)


def encode_crops(encoder: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Backbone features of every view, concatenated in view order: ``[sum of batch sizes, D]``.

    Consecutive views of the same spatial size go through the encoder together.
    """
    outputs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.append(encoder(torch.cat(views[start:end]) if end - start > 1 else views[start]))
        start = end
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def check_global_crops(method: str, views: list[torch.Tensor]) -> None:
    """A multi-crop method needs at least the two global crops."""
    if len(views) < 2:
        raise ValueError(f"{method} needs at least 2 views, got {len(views)}")


def project_crops(encoder: nn.Module, projector: nn.Module,
                  views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone features, L2-normalised projections ``g(f(x)) / |g(f(x))|``) of every crop, in view
    order (SwAV and DeepCluster-v2)."""
    features = encode_crops(encoder, views)
    return features, F.normalize(projector(features), dim=1)
