"""Bags of visual words: a teacher's feature map quantised over a vocabulary, and the losses of a
student that predicts the bag (BoWNet, Gidaris et al. 2020; OBoW, Gidaris et al. 2021).

The feature map ``f [B, C, H, W]`` has a local feature ``f(u)`` at every position ``u``; the vocabulary
``V [K, C]`` holds the visual words ``v_k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def squared_distances(features: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """``||f(u) - v_k||^2`` for every position and word: ``[B, K, H, W]`` (as ``|f|^2 + |v|^2 - 2 f.v``,
    the official OBoW code's 1x1 convolution), clamped at 0 against rounding; in at least float32 (the
    differences of large squares lose everything in bfloat16)."""
    features = at_least_float32(features)
    v = vocabulary.to(features.dtype)
    with torch.autocast(features.device.type, enabled=False):
        dots = torch.einsum("bchw,kc->bkhw", features, v)
        return (features.pow(2).sum(1, keepdim=True) + v.pow(2).sum(1).view(1, -1, 1, 1) - 2 * dots).clamp_min(0)


def hard_assignment(distances: torch.Tensor) -> torch.Tensor:
    """BoWNet's codes (Gidaris et al. 2020): ``q_k(u) = 1`` for the nearest word, else 0."""
    return F.one_hot(distances.argmin(dim=1), distances.shape[1]).permute(0, 3, 1, 2).to(distances.dtype)


def soft_assignment(distances: torch.Tensor, inv_delta: float | torch.Tensor,
                    mean_min_distance: float | torch.Tensor) -> torch.Tensor:
    """OBoW's soft codes (Gidaris et al. 2021; ``BoWExtractor`` of the official code):
    ``q_k(u) = softmax_k(-||f(u) - v_k||^2 / delta)`` with ``delta = mu / inv_delta``, ``mu`` the running
    mean over positions of the distance to the nearest word (the paper's base inverse temperature
    ``inv_delta`` scaled by the mean minimum distance)."""
    return F.softmax(-(inv_delta / mean_min_distance) * distances, dim=1)


def bag_of_words(codes: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """``[B, K]`` bags: each word's code reduced over the positions (``max``: OBoW's; ``avg``: the
    histogram of hard codes, BoWNet's), then L1-normalised into a distribution over words."""
    if pool == "max":
        bags = codes.flatten(2).amax(dim=2)
    elif pool == "avg":
        bags = codes.flatten(2).mean(dim=2)
    else:
        raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    return F.normalize(bags, p=1, dim=1)


def bow_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BoWNet's loss (Gidaris et al. 2020): ``- sum_k y_k log softmax(logits)_k``, mean over rows."""
    return -(targets.detach() * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def bow_kl_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """OBoW's loss (Gidaris et al. 2021, as the official code): ``KL(y || softmax(logits))``, mean
    over rows. The targets carry no gradient, so it is the cross-entropy minus the targets' entropy."""
    return F.kl_div(F.log_softmax(logits, dim=1), targets.detach(), reduction="batchmean")
