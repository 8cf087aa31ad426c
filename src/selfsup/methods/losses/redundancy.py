"""Redundancy-reduction losses on the batch statistics of the embeddings: Barlow Twins, VICReg."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened (Barlow Twins / VICReg code)."""
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """(z - mean) / sqrt(var + eps) along the batch, biased variance: BatchNorm1d(affine=False) in training."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, Eqs. 1-2): sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2.

    C = z1n^T z2n / N is the cross-correlation of the embeddings standardised along the batch of N
    rows (biased variance and eps, as the official code's BatchNorm1d(affine=False); the paper's
    Algorithm 1 writes ``std(0)``). Pass the whole (gathered) batch so that C is the global one.
    Computed in float32 (float64 inputs stay float64), outside autocast.
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1n, z2n = _standardize(at_least_float32(z1), eps), _standardize(at_least_float32(z2), eps)
        c = z1n.T @ z2n / z1.shape[0]
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        return on_diag + lambd * off_diagonal(c).pow(2).sum()


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor,
                 eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three VICReg terms (Bardes et al. 2022, Eqs. 1-5), as in the official code.

    invariance s = MSE(z1, z2) (mean over rows and dimensions); variance v = mean_j relu(1 - sqrt(Var z_j + eps)),
    averaged over the two branches (the official code halves it; the paper's Algorithm 1 sums
    the branches); covariance c = sum_{i != j} Cov(z)_ij^2 / d, summed over the two branches, with the
    unbiased covariance. Pass the whole (gathered) batch. Computed in float32 (float64 inputs stay
    float64), outside autocast.
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = at_least_float32(z1), at_least_float32(z2)
        n, d = z1.shape
        invariance = F.mse_loss(z1, z2)
        z1, z2 = z1 - z1.mean(0), z2 - z2.mean(0)
        std1, std2 = torch.sqrt(z1.var(0) + eps), torch.sqrt(z2.var(0) + eps)
        variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
        cov1, cov2 = z1.T @ z1 / (n - 1), z2.T @ z2 / (n - 1)
        covariance = off_diagonal(cov1).pow(2).sum() / d + off_diagonal(cov2).pow(2).sum() / d
        return invariance, variance, covariance


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, eps: float = 1e-4,
                terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6): lambda s + mu v + nu c with the paper's 25 / 25 / 1.

    ``terms``, when given, receives the three terms, detached, as ``invariance``, ``variance`` and
    ``covariance`` (for logging).
    """
    s, v, c = vicreg_terms(z1, z2, eps)
    if terms is not None:
        terms.update(invariance=s.detach(), variance=v.detach(), covariance=c.detach())
    return invariance_weight * s + variance_weight * v + covariance_weight * c
