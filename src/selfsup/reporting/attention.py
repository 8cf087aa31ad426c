"""DINO-style attention maps of a ViT: where the [CLS] token of the last block looks, per head.

``save_attention_grid(vit, images, path, mean, std)`` writes a PNG: one row per image, columns
``image | head 1 | ... | head H | mean over heads``; each map is the [CLS] query's attention over the
patches (``models.vit.cls_attention_maps``), upsampled (nearest) to the image size and scaled to its
own maximum. ``attention_report(run_dir)`` does it for a trained run's encoder on test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.data.augment import normalize, to_float
from selfsup.models.vit import ViTBackbone, cls_attention_maps

_MIN_DISPLAY_PX = 96


def save_attention_grid(vit: ViTBackbone, images: torch.Tensor, path: str | Path, mean: Sequence[float],
                        std: Sequence[float], title: str | None = None) -> Path:
    """Attention maps of ``vit`` for uint8 (or [0, 1] float) ``images [N, C, H, W]`` as a PNG grid."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg rendering

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(vit.parameters()).device
    pixels = to_float(images).to(device)
    was_training = vit.training
    vit.eval()
    try:
        maps = cls_attention_maps(vit, normalize(pixels, mean, std)).float()  # [N, heads, h, w]
    finally:
        vit.train(was_training)
    maps = torch.cat([maps, maps.mean(dim=1, keepdim=True)], dim=1)
    side = max(pixels.shape[-2:])
    scale = max(1, -(-_MIN_DISPLAY_PX // side))
    size = (pixels.shape[-2] * scale, pixels.shape[-1] * scale)
    shown = F.interpolate(pixels, size=size, mode="nearest").cpu()
    maps = F.interpolate(maps, size=size, mode="nearest").cpu()
    maps = maps / maps.flatten(2).amax(dim=2).clamp_min(1e-12)[..., None, None]

    n, cols = pixels.shape[0], maps.shape[1] + 1
    fig = Figure(figsize=(1.5 * cols, 1.5 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for row in range(n):
        img = shown[row]
        img = img[0].numpy() if img.shape[0] != 3 else img.permute(1, 2, 0).numpy()
        axes[row][0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        for col in range(1, cols):
            axes[row][col].imshow(maps[row, col - 1].numpy(), cmap="inferno", vmin=0.0, vmax=1.0,
                                  interpolation="nearest")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for col, name in enumerate(["image"] + [f"head {h + 1}" for h in range(cols - 2)] + ["mean"]):
        axes[0][col].set_title(name, fontsize=8)
    fig.suptitle(title or "[CLS] attention of the last block", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def _require_vit(run: Any) -> None:
    if not isinstance(run.encoder, ViTBackbone):
        raise ValueError(f"{run.path}: attention maps need a ViT backbone (vit_tiny, vit_small), "
                         f"the run used {run.config.backbone!r}")


def save_run_attention(run: Any, images: torch.Tensor, path: str | Path) -> Path:
    """The grid for a loaded run (``selfsup.api.Run``) whose encoder is a ViT, on uint8 ``images``."""
    _require_vit(run)
    size = run.resolved.image_size
    if tuple(images.shape[-2:]) != (size, size):
        images = to_float(images, size)
    return save_attention_grid(run.encoder, images, path, run.mean, run.std,
                               title=f"{run.config.method} / {run.config.backbone}: [CLS] attention, last block")


def attention_report(run_dir: str | Path, out: str | Path | None = None, n: int = 8, device: str = "cpu") -> Path:
    """``RUN_DIR/attention.png`` (or ``out``): attention maps of the run's ViT encoder on ``n`` test images."""
    from selfsup.api import _load_split, load_run

    run = load_run(run_dir, device=device)
    _require_vit(run)  # before loading the data
    split = _load_split(run.config)
    return save_run_attention(run, split.test.images[:n], out or Path(run_dir) / "attention.png")


__all__ = ["attention_report", "save_attention_grid", "save_run_attention"]
