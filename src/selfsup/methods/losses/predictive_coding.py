"""Contrastive predictive coding over a grid of patch embeddings: CPC v2's InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cpc_labels(batch: int, grid: int, offset: int, image_offset: int = 0,
               device: torch.device | None = None) -> torch.Tensor:
    """The positive of every prediction of :func:`cpc_infonce_loss`: for image ``i`` (of this process),
    context row ``r`` and column ``c``, the target at row ``r + offset``, same column, same image, in the
    targets flattened as ``[image, row, column]`` (``image_offset``: this process's first image among
    the gathered ones). Ordered as the predictions: image, then row, then column."""
    rows = grid - offset
    image = torch.arange(batch, device=device).view(-1, 1, 1) + image_offset
    row = torch.arange(rows, device=device).view(1, -1, 1) + offset
    col = torch.arange(grid, device=device).view(1, 1, -1)
    return ((image * grid + row) * grid + col).flatten()


def cpc_infonce_loss(predictions: torch.Tensor, targets: torch.Tensor, offset: int,
                     image_offset: int = 0) -> torch.Tensor:
    """InfoNCE of CPC (van den Oord et al. 2018, Eq. 4; Henaff et al. 2020 and its
    pseudo-code):

        loss = - mean over predictions (i, r, c) of  log  exp(p_irc . t_i,r+k,c) / sum_l exp(p_irc . t_l)

    ``predictions`` ``[b, D, G, G]`` are ``W_k c`` of this process's images (row ``r`` predicts row
    ``r + k``, ``k = offset``; the last ``k`` rows have nothing to predict and are dropped);
    ``targets`` ``[N, D, G, G]`` are the target embeddings of every image (gathered over processes,
    this process's at ``image_offset``). The negatives ``t_l`` are every other position of every image
    (the paper's "other locations in the image and other images in the mini-batch"). With ``N = b`` and
    ``image_offset = 0`` this is the single-process loss; on several processes the mean over processes
    is the loss of the global batch.
    """
    b, d, grid, _ = predictions.shape
    if not 1 <= offset < grid:
        raise ValueError(f"offset must be in [1, {grid - 1}] for a grid of {grid} rows, got {offset}")
    queries = predictions[:, :, :grid - offset, :].permute(0, 2, 3, 1).reshape(-1, d)
    keys = targets.permute(0, 2, 3, 1).reshape(-1, d)
    logits = queries @ keys.T
    return F.cross_entropy(logits, cpc_labels(b, grid, offset, image_offset, device=logits.device))
