"""MoCo v3's contrastive loss with in-batch keys (Chen, Xie & He, ICCV 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 1.0, offset: int = 0) -> torch.Tensor:
    """``ctr(q, k)`` of MoCo v3 (Chen et al. 2021, Algorithm 1; Eq. 1 with the batch's keys as negatives):

        logits = q k^T / t,   loss = 2 t CrossEntropy(logits, labels),   label of query i: its own key

    ``q`` [n, d] this process's queries, ``k`` [N, d] the keys of the global batch (gathered; no
    gradient reaches them in MoCo v3), the key of query i at row ``offset + i``. Both are
    L2-normalised here (the official code). The factor 2t is the official code's scaling (it makes the
    gradient's magnitude independent of t). Float32 at least.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k = F.normalize(at_least_float32(q), dim=1), F.normalize(at_least_float32(k), dim=1)
        logits = q @ k.T / temperature
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2 * temperature)
