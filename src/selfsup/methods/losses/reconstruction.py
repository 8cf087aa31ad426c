"""Losses of the methods that reconstruct what was hidden: colour, a masked region, clean pixels, patches.

    colorization (Zhang et al. 2016, Eq. 2)       L = -1/N sum_{h,w} v(Z_hw) sum_q Z_hwq log Z^_hwq
    context encoder (Pathak et al. 2016, Eq. 1)   L = || W (x - x^) ||^2 / |region|, W = 1 on the hidden
                                                  pixels, 10 in the overlap band, 0 elsewhere (official code)
    denoising autoencoder (Vincent et al. 2008)   L_H(x, z) = -sum_k [x_k log z_k + (1 - x_k) log(1 - z_k)]
                                                  (inputs in [0, 1]), or the squared error
    MAE (He et al. 2022, Sec. 3)                  L = mean over masked patches of the squared error, targets
                                                  normalised per patch with norm_pix_loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.losses.precision import at_least_float32


def colorization_loss(logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Rebalanced multinomial cross-entropy (Eq. 2), averaged over pixels: ``logits`` and soft ``targets``
    ``[B, Q, H, W]``, ``pixel_weights`` ``[B, H, W]`` (the rebalancing weight of each pixel's nearest bin;
    ``None``: 1)."""
    per_pixel = -(targets * F.log_softmax(at_least_float32(logits), dim=1)).sum(dim=1)
    if pixel_weights is not None:
        per_pixel = per_pixel * pixel_weights
    return per_pixel.mean()


def context_encoder_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted squared error summed over channels and pixels, divided by the number of weighted pixels
    times channels: ``prediction``, ``target`` ``[B, C, H, W]``, ``weights`` ``[B, 1, H, W]`` (0 outside the
    predicted region). With unit weights it is the mean squared error over the region."""
    prediction, target = at_least_float32(prediction), at_least_float32(target)
    weights = weights.to(prediction.dtype)
    squared = (prediction - target) ** 2 * weights
    count = (weights > 0).sum() * prediction.shape[1]
    return squared.sum() / count.clamp_min(1)


def denoising_loss(logits: torch.Tensor, clean: torch.Tensor, kind: str = "cross_entropy") -> torch.Tensor:
    """Reconstruction error of a denoising autoencoder, averaged over components: ``cross_entropy`` takes
    ``logits`` (``z = sigmoid(logits)``) against ``clean`` in [0, 1]; ``mse`` compares ``logits`` directly."""
    logits, clean = at_least_float32(logits), at_least_float32(clean)
    if kind == "cross_entropy":
        return F.binary_cross_entropy_with_logits(logits, clean.clamp(0, 1))
    if kind == "mse":
        return F.mse_loss(logits, clean)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose cross_entropy or mse")


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch (last dim) to zero mean and unit variance: ``(t - mean) / sqrt(var + eps)`` (MAE's
    norm_pix_loss target; the unbiased variance, as the official code's ``Tensor.var``)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_patch_loss(prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor,
                      norm_pix_loss: bool = True) -> torch.Tensor:
    """MAE's loss: squared error per patch (mean over its pixels), averaged over the masked patches only.
    ``prediction``, ``patches`` ``[B, N, P]``; ``mask`` ``[B, N]``, 1 where the patch was removed."""
    prediction, patches = at_least_float32(prediction), at_least_float32(patches)
    target = normalize_patches(patches) if norm_pix_loss else patches
    per_patch = ((prediction - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)
