"""Losses against a memory bank of per-image embeddings: NPID's non-parametric softmax and its NCE
approximation (Wu et al., CVPR 2018), which PIRL (Misra & van der Maaten, CVPR 2020) also uses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def nonparametric_softmax_loss(v: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 0.07) -> torch.Tensor:
    """NPID's non-parametric softmax (Wu et al. 2018, Eq. 2), exact over the whole bank:

        P(i | v) = exp(m_i . v / t) / sum_j exp(m_j . v / t),      loss = -mean_k log P(i_k | v_k)

    ``v`` [n, d] (L2-normalised here), ``bank`` [N, d] the stored unit rows m_j, ``targets`` [n] the
    dataset index i_k of each row of ``v``. Computed in float32 at least, outside autocast.
    """
    with torch.autocast(v.device.type, enabled=False):
        v = F.normalize(at_least_float32(v), dim=1)
        logits = v @ bank.to(v.dtype).T / temperature
        return F.cross_entropy(logits, targets)


def nce_logits(v: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
               temperature: float = 0.07) -> torch.Tensor:
    """``[n, 1 + K]`` scores v . m / t: column 0 against the positive entry ``positives`` [n, d], the
    rest against ``negatives`` [n, K, d] (bank rows drawn as noise). ``v`` is L2-normalised here."""
    with torch.autocast(v.device.type, enabled=False):
        v = F.normalize(at_least_float32(v), dim=1)
        rows = torch.cat([positives.unsqueeze(1), negatives], dim=1).to(v.dtype)  # [n, 1 + K, d]
        return torch.einsum("nd,nkd->nk", v, rows) / temperature


def nce_loss(logits: torch.Tensor, log_z: torch.Tensor | float, num_items: int) -> torch.Tensor:
    """Noise-contrastive estimation of NPID (Wu et al. 2018, Sec. 3.2; Gutmann & Hyvarinen 2010) and
    PIRL (Misra & van der Maaten 2020, Sec. 3.1) with K noise samples from the uniform P_n = 1/N:

        P(j | v) = exp(logits_j) / Z,      h(j, v) = P(j | v) / (P(j | v) + K P_n)
        loss = -mean_rows [ log h(positive, v) + sum_{k=1..K} log(1 - h(noise_k, v)) ]

    ``logits`` [n, 1 + K] from :func:`nce_logits` (positive first), ``log_z`` the constant log Z, and
    ``num_items`` = N, the bank's size. Evaluated in log space (the official code adds 1e-7 inside the
    logarithms instead); float32 at least.
    """
    with torch.autocast(logits.device.type, enabled=False):
        logits = at_least_float32(logits)
        k = logits.shape[1] - 1
        log_p = logits - torch.as_tensor(log_z, dtype=logits.dtype, device=logits.device)
        log_noise = torch.full_like(log_p, math.log(k / num_items))
        log_h_pos = log_p[:, 0] - torch.logaddexp(log_p[:, 0], log_noise[:, 0])
        log_not_h_neg = log_noise[:, 1:] - torch.logaddexp(log_p[:, 1:], log_noise[:, 1:])
        return -(log_h_pos + log_not_h_neg.sum(dim=1)).mean()
