"""Losses of the pretext tasks: a hidden transformation or part of the image is predicted.

RotNet (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016), relative patch location (Doersch et al.
2015) and Exemplar-CNN (Dosovitskiy et al. 2014) all classify: which rotation, which permutation, which
neighbour, which training image. Their loss is the softmax cross-entropy over the pretext classes,
averaged over the batch (RotNet Eq. 1-2, Doersch et al. Sec. 3, Noroozi & Favaro Sec. 3, Dosovitskiy
et al. Eq. 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def pretext_classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-1/B sum_i log softmax(logits_i)[targets_i]: cross-entropy over the pretext classes, in float32 at least."""
    return F.cross_entropy(at_least_float32(logits), targets)


@torch.no_grad()
def pretext_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose largest logit is the target (logged as the pretext task's accuracy)."""
    return (logits.argmax(dim=1) == targets).float().mean()
