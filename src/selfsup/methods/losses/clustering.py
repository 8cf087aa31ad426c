"""Cross-entropy to targets over prototypes or output dimensions: SwAV's swapped prediction,
DINO's self-distillation, DeepCluster-v2's pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # a target row that counts in no loss (cross-entropy's ignore_index): a never-embedded row


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """Swapped prediction (Caron et al. 2020, Eq. 1-3): mean over code crops i of the mean over the
    other crops v != i of the cross-entropy between ``codes[i]`` and ``softmax(scores[v] / t)``.

    ``scores``: prototype scores of every crop (``[B, K]`` each, code crops first); ``codes``: the
    Sinkhorn codes of the first ``len(codes)`` crops (no gradient).
    """
    loss = scores[0].new_zeros(())
    for i, q in enumerate(codes):
        sub = scores[0].new_zeros(())
        for v, s in enumerate(scores):
            if v != i:
                sub = sub - (q * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()
        loss = loss + sub / (len(scores) - 1)
    return loss / len(codes)


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """DINO's cross-entropy (Caron et al. 2021, Eq. 2 and Algorithm 1) averaged over the pairs
    (teacher crop i, student crop v) with v != i.

    ``student`` holds every crop's logits, ``teacher`` the global crops' logits (the first
    ``len(teacher)`` crops of ``student``). The teacher side is centred, sharpened and detached.
    """
    targets = [F.softmax((t.detach() - center) / teacher_temperature, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s / student_temperature, dim=-1) for s in student]
    total, terms = student[0].new_zeros(()), 0
    for i, q in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v != i:
                total = total - (q * log_p).sum(dim=-1).mean()
                terms += 1
    return total / terms


def deepcluster_loss(scores: list[torch.Tensor], targets: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """DeepCluster-v2 (Caron et al. 2020, Appendix B; official ``main_deepclusterv2.py``): the
    cross-entropy of ``scores[h] / t`` to ``targets[h]``, averaged over the heads h.

    ``scores[h]`` is ``[crops * B, K]`` (crops stacked), ``targets`` ``[heads, B]``, repeated for every
    crop. Rows whose target is ``IGNORE`` are left out; the mean is over the others.
    """
    loss = scores[0].new_zeros(())
    for h, s in enumerate(scores):
        t = targets[h].repeat(s.shape[0] // targets.shape[1])
        counted = (t != IGNORE).sum().clamp_min(1)
        loss = loss + F.cross_entropy(s / temperature, t, ignore_index=IGNORE, reduction="sum") / counted
    return loss / len(scores)
