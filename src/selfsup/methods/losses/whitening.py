"""Whitening losses: W-MSE (Ermolov, Siarohin, Sangineto & Sebe, ICML 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def cholesky_whitening(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """W-MSE's whitening transform (Ermolov et al. 2021, Sec. 3) of a batch ``x`` [n, d]:

        mu = mean of the rows,   Sigma = (x - mu)^T (x - mu) / (n - 1),   (1 - eps) Sigma + eps I = L L^T
        Whiten(x) = L^{-1} (x - mu)      (Cholesky, a lower-triangular L: its rows have covariance I)

    ``eps`` is the official code's shrinkage ``w_eps`` (0 by default). Needs n > d for a full-rank
    covariance. Differentiable (gradients flow through mu and L, as in the paper); float32 at least.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = at_least_float32(x)
        n, d = x.shape
        centred = x - x.mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        if eps:
            cov = (1 - eps) * cov + eps * torch.eye(d, dtype=x.dtype, device=x.device)
        lower = torch.linalg.cholesky(cov)
        return torch.linalg.solve_triangular(lower, centred.T, upper=False).T


def normalized_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a/|a| - b/|b|||^2 averaged over rows, i.e. 2 - 2 cos (W-MSE's default distance, ``norm_mse_loss``)."""
    return 2 - 2 * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1).mean()


def wmse_loss(views: Sequence[torch.Tensor], permutations: Sequence[torch.Tensor], w_size: int, eps: float = 0.0,
              normalize: bool = True) -> torch.Tensor:
    """W-MSE (Ermolov et al. 2021, Sec. 3; the official ``w_mse.py``) over d positives of each image:

        for each of the ``w_iter`` permutations of the N images: split them into sub-batches of ``w_size``,
            whiten each view's embeddings of each sub-batch separately (:func:`cholesky_whitening`),
            add the MSE (of L2-normalised vectors with ``normalize``) over every pair of views i < j
        loss = that sum / (w_iter x number of pairs)

    ``views`` are the d embeddings [N, D] (row k of each is image k; pass the gathered global batch),
    ``permutations`` w_iter permutations of range(N), the same on every process. N must be a multiple
    of ``w_size`` and ``w_size`` larger than D.
    """
    n = views[0].shape[0]
    if n % w_size:
        raise ValueError(f"W-MSE: the batch of {n} images does not split into sub-batches of w_size {w_size}")
    distance = normalized_mse if normalize else F.mse_loss
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    total = views[0].new_zeros((), dtype=at_least_float32(views[0]).dtype)
    for perm in permutations:
        chunks = perm.to(views[0].device).view(-1, w_size)
        whitened = [torch.cat([cholesky_whitening(v[chunk], eps) for chunk in chunks]) for v in views]
        for i, j in pairs:  # rows in permuted order in every view: the per-row mean is unchanged
            total = total + distance(whitened[i], whitened[j])
    return total / (len(permutations) * len(pairs))
