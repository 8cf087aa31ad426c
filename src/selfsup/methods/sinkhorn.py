"""Sinkhorn-Knopp equipartition (SwAV, Caron et al. 2020, Sec. 3.1 and Algorithm 1).

Given prototype scores ``[B, K]`` of a batch, find codes ``Q`` that maximise ``Tr(Q^T C^T Z) +
epsilon H(Q)`` over the transportation polytope where every prototype receives ``B / K`` samples and
every sample one unit of mass. The solution is ``diag(u) exp(scores / epsilon) diag(v)``; a few
alternating row / column normalisations find ``u`` and ``v`` (3 iterations in the paper).

As the official ``distributed_sinkhorn``: the sums over samples (the total, the per-prototype row
sums and the sample count) are reduced across processes, so several processes find the codes of
their global batch; the column normalisation is local to each sample. The last operation is the
column normalisation, so each sample's code sums to exactly 1 and the per-prototype marginals are
equal to ``B / K`` up to the convergence of the iterations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from selfsup.comm import all_reduce_sum, is_distributed
from selfsup.methods.losses import at_least_float32


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Codes ``[B, K]`` for prototype scores ``[B, K]``; each row sums to 1 (0 for rows of weight 0).

    ``weights`` (``[B]``, 0 or 1) leaves rows out of the transport problem (unfilled queue rows).
    Computed in float32 (float64 scores stay float64); the global maximum score is subtracted before
    ``exp`` for stability (a constant factor, removed by the normalisation).
    """
    with torch.autocast(scores.device.type, enabled=False):
        scores = at_least_float32(scores.detach())
        top = scores.max()
        if is_distributed():
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
        q = torch.exp((scores - top) / epsilon).T  # [K, B], K-by-B as in the paper
        if weights is None:
            n = torch.tensor(float(q.shape[1]), device=q.device)
        else:
            w = weights.to(q.dtype)
            q = q * w
            n = w.sum()
        n = all_reduce_sum(n)  # samples to assign, over processes
        k, tiny = q.shape[0], torch.finfo(q.dtype).tiny
        q /= all_reduce_sum(q.sum()).clamp_min(tiny)  # total mass 1
        for _ in range(iterations):
            q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(tiny)  # each prototype: 1/K
            q /= k
            q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # each sample: 1/B
            q /= n
        q *= n  # columns sum to 1: an assignment per sample
        return q.T
