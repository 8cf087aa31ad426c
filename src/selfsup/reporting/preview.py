"""A picture of what the network is fed: originals next to their augmented views."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg rendering

from selfsup.data.augment import augment_views, to_float
from selfsup.data.dataset import ImageDataset
from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method
from selfsup.reporting.images import show_image, upscale
from selfsup.reporting.plots import write_png


def save_preview(dataset: ImageDataset, specs: Sequence[ViewSpec], path: str | Path, n: int = 8,
                 seed: int = 0, method: Method | None = None) -> Path:
    """Write a PNG grid: one row per image, columns ``original | view 1 | view 2 | ...``, then the
    ``method``'s own panels (``Method.preview_panels``: tiles, masks, an input channel...).

    The first ``n`` images are shown (deterministic for a given ``seed``); views are the
    un-normalised [0, 1] output of ``augment`` so colours are what the augmentation produces.
    Grayscale images use the gray colormap; tiny images are upscaled with nearest neighbour.
    """
    n = max(1, min(int(n), len(dataset)))
    images = dataset.images[:n]
    generator = torch.Generator().manual_seed(seed)
    views = augment_views(images, specs, generator)
    panels = method.preview_panels(views) if method is not None else []
    columns = [upscale(to_float(images))] + [upscale(v) for v in views] + [upscale(p) for _, p in panels]
    titles = (["original"] + [f"view {i + 1} ({s.size}px)" for i, s in enumerate(specs)]
              + [caption for caption, _ in panels])

    n_cols = len(columns)
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n))
    axes = fig.subplots(n, n_cols, squeeze=False)
    for row in range(n):
        for col in range(n_cols):
            show_image(axes[row][col], columns[col][row])
            if row == 0:
                axes[row][col].set_title(titles[col], fontsize=8)
        if dataset.labels is not None and dataset.classes:
            label = int(dataset.labels[row])
            if 0 <= label < len(dataset.classes):
                axes[row][0].set_ylabel(str(dataset.classes[label]), fontsize=7)
    fig.suptitle(f"{dataset.name}: what the network sees", fontsize=9)
    fig.tight_layout()
    return write_png(fig, path, dpi=100)
