"""DINO-style attention maps of a ViT: where the [CLS] token of the last block looks, per head.

``save_attention_grid(vit, images, path, mean, std)`` writes a PNG: one row per image, columns
``image | head 1 | ... | head H | mean over heads``; each map is the [CLS] query's attention over the
patches (``models.vit.cls_attention_maps``), upsampled (nearest) to the image size and scaled to its
own maximum. ``attention_report(run_dir)`` does it for a trained run's encoder on test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg rendering

from selfsup.data.augment import normalize, to_float
from selfsup.models.modes import keep_modes
from selfsup.models.vit import ViTBackbone, cls_attention_maps
from selfsup.reporting.images import hide_ticks, show_image, upscale
from selfsup.reporting.plots import write_png
from selfsup.runs import Run, load_run, load_split

__all__ = ["attention_report", "save_attention_grid", "save_run_attention"]


def save_attention_grid(vit: ViTBackbone, images: torch.Tensor, path: str | Path, mean: Sequence[float],
                        std: Sequence[float], title: str | None = None) -> Path:
    """Attention maps of ``vit`` for uint8 (or [0, 1] float) ``images [N, C, H, W]`` as a PNG grid."""
    pixels = to_float(images).to(next(vit.parameters()).device)
    shown = upscale(pixels).cpu()
    maps = _scaled_maps(vit, normalize(pixels, mean, std), tuple(shown.shape[-2:]))
    n, cols = pixels.shape[0], maps.shape[1] + 1
    fig = Figure(figsize=(1.5 * cols, 1.5 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for row in range(n):
        show_image(axes[row][0], shown[row])
        for col in range(1, cols):
            axes[row][col].imshow(maps[row, col - 1].numpy(), cmap="inferno", vmin=0.0, vmax=1.0,
                                  interpolation="nearest")
            hide_ticks(axes[row][col])
    for col, name in enumerate(["image"] + [f"head {h + 1}" for h in range(cols - 2)] + ["mean"]):
        axes[0][col].set_title(name, fontsize=8)
    fig.suptitle(title or "[CLS] attention of the last block", fontsize=9)
    fig.tight_layout()
    return write_png(fig, path, dpi=100)


def _scaled_maps(vit: ViTBackbone, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, heads + 1, *size]`` on the CPU: each head's [CLS] attention map and their mean, upsampled
    (nearest) to ``size`` and divided by its own maximum."""
    with keep_modes(vit):
        maps = cls_attention_maps(vit, x).float()  # [N, heads, h, w]
    maps = torch.cat([maps, maps.mean(dim=1, keepdim=True)], dim=1)
    maps = F.interpolate(maps, size=size, mode="nearest").cpu()
    return maps / maps.flatten(2).amax(dim=2).clamp_min(1e-12)[..., None, None]


def _require_vit(run: Run) -> None:
    if not isinstance(run.encoder, ViTBackbone):
        raise ValueError(f"{run.path}: attention maps need a ViT backbone (vit_tiny, vit_small), "
                         f"the run used {run.config.backbone!r}")


def save_run_attention(run: Run, images: torch.Tensor, path: str | Path) -> Path:
    """The grid for a loaded run (``selfsup.runs.Run``) whose encoder is a ViT, on uint8 ``images``."""
    _require_vit(run)
    size = run.resolved.image_size
    if tuple(images.shape[-2:]) != (size, size):
        images = to_float(images, size)
    return save_attention_grid(run.encoder, images, path, run.mean, run.std,
                               title=f"{run.config.method} / {run.config.backbone}: [CLS] attention, last block")


def attention_report(run_dir: str | Path, out: str | Path | None = None, n: int = 8, device: str = "cpu") -> Path:
    """``RUN_DIR/attention.png`` (or ``out``): attention maps of the run's ViT encoder on ``n`` test images."""
    run = load_run(run_dir, device=device)
    _require_vit(run)  # before loading the data
    split = load_split(run.config)
    return save_run_attention(run, split.test.images[:n], out or Path(run_dir) / "attention.png")

