"""Frozen-encoder feature extraction for the kNN and linear-probe evaluations.

The standard protocol of self-supervised papers (InstDisc, Wu et al. 2018; BYOL, Grill et al.
2020; DINO, Caron et al. 2021) evaluates the *backbone* representation with the encoder frozen
and in eval mode (BatchNorm running statistics, no dropout). :func:`extract_features` does that
in batches and leaves the encoder's train/eval flags exactly as it found them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from selfsup.models.modes import keep_modes

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Embed ``images`` with a frozen ``encoder``; returns float32 CPU features ``[N, D]``.

    ``images`` is a batch of raw images (typically uint8 ``[N, C, H, W]``); each chunk of
    ``batch_size`` is moved to ``device`` and passed through ``preprocess`` (e.g. uint8 -> float
    in [0, 1], resize, normalise) before the encoder, so this function does not depend on any
    particular augmentation code. Outputs with more than two dims (e.g. ``[B, D, 1, 1]``) are
    flattened. The encoder runs in eval mode; every submodule's previous ``training`` flag is
    restored afterwards, even if an exception is raised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        starts = tqdm(starts, desc="features", unit="batch", leave=False)
    chunks: list[torch.Tensor] = []
    with keep_modes(encoder):
        for start in starts:
            batch = images[start:start + batch_size].to(device, non_blocking=True)
            out = encoder(preprocess(batch))
            if out.dim() > 2:
                out = out.flatten(1)
            chunks.append(out.float().cpu())
    if not chunks:
        return torch.empty(0, 0, dtype=torch.float32)
    return torch.cat(chunks, dim=0)
