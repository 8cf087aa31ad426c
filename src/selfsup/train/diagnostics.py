"""Collapse and representation-quality monitors on a batch of embeddings.

Pure functions of embeddings ``z [N, D]`` (projector or predictor outputs, or backbone
features), cheap enough to log every few steps of self-supervised training:

* :func:`normalized_std` / :func:`normalized_std_scaled` -- the collapse monitor of SimSiam
  (Chen & He 2021, Sec. 4.1), also the standard check for BYOL (Grill et al. 2020): the mean over
  dimensions of the per-dimension std of L2-normalised outputs. It is 0 when all outputs collapse
  to one vector and about ``1/sqrt(D)`` for outputs spread like an isotropic Gaussian.
* :func:`rankme` -- effective rank of the embeddings (Garrido et al. 2023, "RankMe"), sensitive
  to *dimensional* collapse as well.
* :func:`alignment` / :func:`uniformity` -- Wang & Isola 2020, "Understanding Contrastive
  Representation Learning through Alignment and Uniformity on the Hypersphere".
* :func:`pair_cosine` -- mean cosine similarity of the two views' outputs (the negative of the
  BYOL/SimSiam loss up to an affine map).

:class:`CollapseWatch` turns a stream of ``std_scaled`` values into one warning per collapse
episode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "normalized_std",
    "normalized_std_scaled",
    "rankme",
    "alignment",
    "uniformity",
    "pair_cosine",
    "representation_metrics",
    "CollapseWatch",
]


def _as_2d(z: torch.Tensor) -> torch.Tensor:
    z = z.detach()
    if z.dim() != 2:
        z = z.flatten(1)
    return z.float()


@torch.no_grad()
def normalized_std(z: torch.Tensor) -> float:
    """Mean over dims of the per-dimension std of L2-normalised ``z`` (SimSiam, Chen & He 2021).

    0 for a collapsed batch (all rows equal), ``~1/sqrt(D)`` when rows are spread isotropically.
    Uses the unbiased std over the batch; needs ``N >= 2``.
    """
    z = _as_2d(z)
    if z.shape[0] < 2:
        raise ValueError("normalized_std needs at least 2 rows")
    return F.normalize(z, dim=1).std(dim=0).mean().item()


@torch.no_grad()
def normalized_std_scaled(z: torch.Tensor) -> float:
    """:func:`normalized_std` times ``sqrt(D)``: ``~1`` for healthy isotropic outputs, 0 collapsed."""
    z = _as_2d(z)
    return normalized_std(z) * math.sqrt(z.shape[1])


@torch.no_grad()
def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al. 2023): ``exp(-sum_k p_k log p_k)`` with
    ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values ``sigma`` of ``z`` (uncentred,
    as in the paper). Ranges from ~1 (rank-one / collapsed) to ``min(N, D)``.
    """
    z = _as_2d(z)
    s = torch.linalg.svdvals(z.double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return math.exp(-(p * p.log()).sum().item())


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    """Alignment loss of Wang & Isola 2020: ``E ||f(x) - f(y)||_2^alpha`` over positive pairs
    ``(z1[i], z2[i])`` of L2-normalised embeddings. 0 for identical pairs, at most ``2^alpha``.
    """
    a, b = F.normalize(_as_2d(z1), dim=1), F.normalize(_as_2d(z2), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2) -> float:
    """Uniformity loss of Wang & Isola 2020: ``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` over
    distinct pairs of L2-normalised rows. 0 when collapsed, more negative when more uniform
    (``>= -4t``). Computed with a log-sum-exp for stability; needs ``N >= 2``.
    """
    z = F.normalize(_as_2d(z), dim=1)
    n = z.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least 2 rows")
    sq_dists = torch.pdist(z, p=2).pow(2)
    return (torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())).item()


@torch.no_grad()
def pair_cosine(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Mean cosine similarity between ``z1[i]`` and ``z2[i]`` (the two views' outputs)."""
    return F.cosine_similarity(_as_2d(z1), _as_2d(z2), dim=1).mean().item()


@torch.no_grad()
def representation_metrics(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    """All monitors on a batch of two views' embeddings, in float32 and without gradients.

    The single-batch metrics (``std``, ``std_scaled``, ``rankme``, ``uniformity``) are averaged
    over the two views (each view taken separately, so positive pairs do not distort them);
    ``alignment`` and ``cosine`` compare ``z1[i]`` with ``z2[i]``.
    """
    z1, z2 = _as_2d(z1), _as_2d(z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 shapes differ: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    return {
        "std": 0.5 * (normalized_std(z1) + normalized_std(z2)),
        "std_scaled": 0.5 * (normalized_std_scaled(z1) + normalized_std_scaled(z2)),
        "rankme": 0.5 * (rankme(z1) + rankme(z2)),
        "alignment": alignment(z1, z2),
        "uniformity": 0.5 * (uniformity(z1) + uniformity(z2)),
        "cosine": pair_cosine(z1, z2),
    }


class CollapseWatch:
    """Warns when ``std_scaled`` (see :func:`normalized_std_scaled`) stays below ``threshold``
    for ``patience`` consecutive observations.

    The default ``threshold = 0.1`` means the normalised per-dimension std has fallen to a tenth
    of the isotropic-Gaussian value ``1/sqrt(D)``; healthy BYOL/SimSiam runs stay well above it
    (SimSiam, Chen & He 2021, Fig. 2), while complete collapse drives it to ~0. It is deliberately
    conservative so transient dips early in training do not raise false alarms. Non-finite values
    (NaN/inf, a diverged run) count as below threshold.

    :meth:`update` returns ``True`` exactly once per episode: on the ``patience``-th consecutive
    low value. A value at or above ``threshold`` ends the episode and resets the count.
    """

    def __init__(self, threshold: float = 0.1, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.count = 0          # consecutive observations below threshold
        self.warned = False     # already warned in the current episode
        self.episodes = 0       # number of warnings issued so far

    def update(self, value: float) -> bool:
        """Record one observation; ``True`` when a collapse warning should be printed now."""
        value = float(value)
        if math.isfinite(value) and value >= self.threshold:
            self.count = 0
            self.warned = False
            return False
        self.count += 1
        if self.count >= self.patience and not self.warned:
            self.warned = True
            self.episodes += 1
            return True
        return False

    @property
    def collapsed(self) -> bool:
        """Whether the watch is currently in a warned collapse episode."""
        return self.warned

    def reset(self) -> None:
        self.count = 0
        self.warned = False
