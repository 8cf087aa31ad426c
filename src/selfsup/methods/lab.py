"""CIE Lab colour and the quantised ab space of colorization (Zhang, Isola & Efros, ECCV 2016).

**Lab** (sRGB primaries, D65 white, 2-degree observer; the conversion of scikit-image and of the paper's
code): linearise each sRGB channel (``c / 12.92`` below 0.04045, else ``((c + 0.055) / 1.055) ** 2.4``),
``XYZ = M rgb``, divide by the white point, ``f(t) = t ** (1/3)`` above ``(6/29) ** 3`` (else
``t / (3 (6/29)^2) + 4/29``), then ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``;
``L`` lies in [0, 100].

**Quantised ab** (Sec. 2.1): the ab plane on a grid of step 10, of which the paper keeps the Q = 313
bins that sRGB colours reach (the official ``pts_in_hull.npy``: for each ``a`` from -90 to 100, a
contiguous range of ``b``, listed in ``AB_GAMUT``). A pixel's colour becomes a distribution over the bins:

    soft encoding    Z_q = exp(-|ab - c_q|^2 / 2 sigma^2) over the 5 bins c_q nearest to ab, normalised
                     (sigma = 5)                                                              (Sec. 2.1)
    rebalancing      w = ((1 - lambda) p~ + lambda / Q) ** -1, scaled so that sum_q p~_q w_q = 1, where
                     p~ is the empirical bin distribution smoothed by a Gaussian of sigma 5   (Eq. 4)
    annealed mean    H(Z) = sum_q f_T(Z)_q c_q, f_T(z) = z^(1/T) / sum_q z_q^(1/T), T = 0.38   (Eq. 5)
"""

from __future__ import annotations

import torch

# sRGB (linear) -> XYZ and the D65 white point, as scikit-image's rgb2lab
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
              (0.212671, 0.715160, 0.072169),
              (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6 / 29

# The 313 in-gamut ab bins of the paper's code: a -> (smallest b, largest b), both ends included, step 10.
AB_GAMUT: dict[int, tuple[int, int]] = {
    -90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
    -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
    30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
    90: (-110, 70), 100: (-90, 0)}
AB_GRID = 10


def _matrix(rows: tuple, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` in [0, 1] (clamped) -> Lab ``[B, 3, H, W]`` (L in [0, 100])."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _matrix(RGB_TO_XYZ, rgb), linear)
    xyz = xyz / _matrix(D65_WHITE, rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` -> sRGB ``[B, 3, H, W]``, clamped to [0, 1] (colours outside the gamut are clipped)."""
    light, a, b = lab.unbind(1)
    fy = (light + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    xyz = xyz * _matrix(D65_WHITE, lab).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_matrix(RGB_TO_XYZ, lab)), xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def ab_bins(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The centres ``[313, 2]`` (a, b) of the in-gamut bins, by increasing a then b (the paper's order)."""
    centres = [(a, b) for a, (low, high) in AB_GAMUT.items() for b in range(low, high + 1, AB_GRID)]
    return torch.tensor(centres, dtype=dtype, device=device)


def _pixels(ab: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` -> ``[B * H * W, 2]``."""
    return ab.permute(0, 2, 3, 1).reshape(-1, 2)


def quantize_ab(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Index ``[B, H, W]`` of the bin nearest to each pixel's ``ab`` ``[B, 2, H, W]``."""
    b, _, h, w = ab.shape
    return torch.cdist(_pixels(ab).to(bins.dtype), bins).argmin(dim=1).view(b, h, w)


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbors: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Soft-encoded targets ``[B, Q, H, W]``: Gaussian weights (``sigma``) on the ``neighbors`` bins nearest
    to each pixel's ``ab``, summing to 1 (Sec. 2.1)."""
    b, _, h, w = ab.shape
    distances, nearest = torch.cdist(_pixels(ab).to(bins.dtype), bins).topk(neighbors, dim=1, largest=False)
    weights = torch.softmax(-distances ** 2 / (2 * sigma ** 2), dim=1)  # exp(-d^2 / 2 sigma^2), normalised
    z = torch.zeros(b * h * w, len(bins), dtype=bins.dtype, device=bins.device).scatter_(1, nearest, weights)
    return z.view(b, h, w, -1).permute(0, 3, 1, 2)


def smoothed_distribution(counts: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The empirical bin distribution ``counts / sum(counts)`` smoothed by a Gaussian of ``sigma`` in the ab
    plane (each bin's mass spread over its neighbours, total kept at 1): the paper's p~."""
    kernel = torch.exp(-torch.cdist(bins, bins) ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(dim=0, keepdim=True)  # column q: where bin q's mass goes
    p = counts.to(bins.dtype) / counts.sum().clamp_min(1e-12)
    return kernel @ p


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights ``[Q]`` (Eq. 4): ``((1 - lam) prior + lam / Q) ** -1``, scaled so that
    their expectation under ``prior`` is 1. ``lam = 1`` gives every bin weight 1 (no rebalancing)."""
    w = 1 / ((1 - lam) * prior + lam / prior.numel())
    return w / (prior * w).sum()


def annealed_mean(probs: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """ab ``[B, 2, H, W]`` from bin probabilities ``[B, Q, H, W]`` (Eq. 5): the mean of the distribution
    re-tempered to ``probs ** (1 / T)``; T = 1 is the mean, T -> 0 the mode."""
    tempered = torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", tempered, bins.to(tempered.dtype))
