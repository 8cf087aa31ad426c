"""Losses as pure functions of embeddings; each names its paper and equation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of BYOL (Grill et al. 2020, Eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), batch mean."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target, dim=-1)).mean()


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


# ---------------------------------------------------------------------------------------------
# The method family: SimCLR (gathered), MoCo v2, SimSiam, Barlow Twins, VICReg, NNCLR


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a lower precision (bf16, fp16); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened (Barlow Twins / VICReg code)."""
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


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


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -(p/|p|) . (z/|z|), batch mean (SimSiam, Chen & He 2021, Eq. 1).

    The stop-gradient of SimSiam's Eq. 3 is the caller's: pass ``z.detach()``.
    """
    return -F.cosine_similarity(p, z, dim=-1).mean()


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
                covariance_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6): lambda s + mu v + nu c with the paper's 25 / 25 / 1."""
    s, v, c = vicreg_terms(z1, z2, eps)
    return invariance_weight * s + variance_weight * v + covariance_weight * c


def nnclr_loss(nn_z: torch.Tensor, p: torch.Tensor, temperature: float = 0.1, offset: int = 0) -> torch.Tensor:
    """NNCLR (Dwibedi et al. 2021, Eq. 2 and Algorithm 1): cross-entropy of nn_i . p_j / t over j.

    ``nn_z`` [n, d] are the support-set neighbours of this process's rows (anchors), ``p`` [N, d] the
    predictions of the other view for the whole (gathered) batch; the positive of anchor i is
    ``p[offset + i]``, the other rows of ``p`` are its negatives. Both are L2-normalised here.
    """
    nn_z, p = F.normalize(nn_z, dim=-1), F.normalize(p, dim=-1)
    logits = nn_z @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(nn_z.shape[0], device=p.device) + offset)
