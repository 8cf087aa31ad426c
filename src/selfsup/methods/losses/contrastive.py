"""Contrastive losses (a positive against negatives): SimCLR, MoCo, NNCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020, Eq. 1) over the 2N views of a batch.

    Row i of ``z1`` and row i of ``z2`` are positives; the other 2N - 2 rows are negatives.
    Averaged over all 2N anchors, as in the paper's loss L = 1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)].
    """
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def nt_xent_gathered_loss(z1: torch.Tensor, z2: torch.Tensor, all1: torch.Tensor, all2: torch.Tensor,
                          offset: int = 0, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020, Eq. 1) for this process's anchors against the global batch.

    ``z1``, ``z2`` [n, d] are the local views, ``all1``, ``all2`` [N, d] the views gathered from every
    process (``gather_with_grad``), and the local rows sit at ``offset:offset + n`` of the gathered
    ones. Each of the 2n local anchors has its other view as positive and the other 2N - 2 gathered
    rows as negatives; averaged over the local anchors. With ``all = z`` and ``offset = 0`` this is
    ``nt_xent_loss``.
    """
    q = F.normalize(torch.cat([z1, z2]), dim=-1)
    k = F.normalize(torch.cat([all1, all2]), dim=-1)
    n, total = z1.shape[0], all1.shape[0]
    logits = q @ k.T / temperature  # [2n, 2N]
    local = torch.arange(n, device=q.device) + offset
    rows = torch.arange(2 * n, device=q.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, torch.cat([local, local + total])] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, torch.cat([local + total, local]))


def infonce_queue_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of MoCo (He et al. 2020, Eq. 1 and Algorithm 1): -log exp(q.k+/t) / sum exp(q.k/t).

    ``q`` [n, d] queries, ``k`` [n, d] their positive keys (row i of each), ``queue`` [K, d] the
    negative keys. Queries and keys are L2-normalised here (as in the official code); the queue is
    used as stored.
    """
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    l_pos = (q * k).sum(dim=-1, keepdim=True)  # [n, 1]
    l_neg = q @ queue.to(q.dtype).T  # [n, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nnclr_loss(nn_z: torch.Tensor, p: torch.Tensor, temperature: float = 0.1, offset: int = 0) -> torch.Tensor:
    """NNCLR (Dwibedi et al. 2021, Eq. 2 and Algorithm 1): cross-entropy of nn_i . p_j / t over j.

    ``nn_z`` [n, d] are the support-set neighbours of this process's rows (anchors), ``p`` [N, d] the
    predictions of the other view for the whole (gathered) batch; the positive of anchor i is
    ``p[offset + i]``, the other rows of ``p`` are its negatives. Both are L2-normalised here.
    """
    nn_z, p = F.normalize(nn_z, dim=-1), F.normalize(p, dim=-1)
    logits = nn_z @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(nn_z.shape[0], device=p.device) + offset)
