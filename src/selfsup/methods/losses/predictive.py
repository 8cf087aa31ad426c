"""Losses that regress one view's prediction onto the other view's projection: BYOL, SimSiam."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of BYOL (Grill et al. 2020, Eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), batch mean."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target, dim=-1)).mean()


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -(p/|p|) . (z/|z|), batch mean (SimSiam, Chen & He 2021, Eq. 1).

    The stop-gradient of SimSiam's Eq. 3 is the caller's: pass ``z.detach()``.
    """
    return -F.cosine_similarity(p, z, dim=-1).mean()
