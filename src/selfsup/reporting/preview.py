"""A picture of what the network is fed: originals next to their augmented views."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from selfsup.data.augment import augment_views, to_float
from selfsup.data.dataset import ImageDataset
from selfsup.data.views import ViewSpec

_MIN_DISPLAY_PX = 96  # tiny images are upscaled (nearest) to at least this many pixels


def _upscale(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upscale by an integer factor so small images are visible."""
    side = max(x.shape[-2:])
    factor = max(1, -(-_MIN_DISPLAY_PX // side))
    if factor == 1:
        return x
    return torch.nn.functional.interpolate(x, scale_factor=factor, mode="nearest")


def _to_display(x: torch.Tensor):
    """``[C, H, W]`` float in [0, 1] -> numpy ``[H, W]`` (1 channel) or ``[H, W, 3]``."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        return x[0].numpy()
    if x.shape[0] != 3:  # show the first channel of unusual channel counts
        return x[0].numpy()
    return x.permute(1, 2, 0).numpy()


def save_preview(dataset: ImageDataset, specs: Sequence[ViewSpec], path: str | Path, n: int = 8,
                 seed: int = 0) -> Path:
    """Write a PNG grid: one row per image, columns ``original | view 1 | view 2 | ...``.

    The first ``n`` images are shown (deterministic for a given ``seed``); views are the
    un-normalised [0, 1] output of ``augment`` so colours are what the augmentation produces.
    Grayscale images use the gray colormap; tiny images are upscaled with nearest neighbour.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg rendering

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, min(int(n), len(dataset)))
    images = dataset.images[:n]
    generator = torch.Generator().manual_seed(seed)
    views = augment_views(images, specs, generator)
    columns = [_upscale(to_float(images))] + [_upscale(v) for v in views]
    titles = ["original"] + [f"view {i + 1} ({s.size}px)" for i, s in enumerate(specs)]

    n_cols = len(columns)
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n))
    axes = fig.subplots(n, n_cols, squeeze=False)
    for row in range(n):
        for col in range(n_cols):
            ax = axes[row][col]
            img = _to_display(columns[col][row])
            if img.ndim == 2:
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        if dataset.labels is not None and dataset.classes:
            label = int(dataset.labels[row])
            if 0 <= label < len(dataset.classes):
                axes[row][0].set_ylabel(str(dataset.classes[label]), fontsize=7)
    fig.suptitle(f"{dataset.name}: what the network sees", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path
