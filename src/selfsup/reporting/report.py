"""``selfsup report RUN_DIR``: PNG plots and one self-contained ``index.html`` per run folder.

The page holds the run's settings and scores (learned vs random init vs raw pixels), the training
curves and collapse monitors, a 2-D map of the test embeddings, a nearest-neighbour retrieval
grid, the augmentation preview and every ``eval/*.json``. Everything is written to
``RUN_DIR/report/``. The parts that need the trained encoder and the data (map, retrieval,
augmentations) are skipped with a note on the page when the checkpoint or the data is missing.

This module reads the run and writes the files; the figures are drawn in ``reporting.figures``
and the page in ``reporting.page``. Layering: reporting reads runs through ``selfsup.runs``;
nothing in ``train``, ``evaluation`` or ``runs`` imports reporting.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.config import ConfigError
from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.sources import DataSpecError
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.frozen import eval_preprocess
from selfsup.io import write_text_atomic
from selfsup.models.vit import ViTBackbone
from selfsup.reporting import html as H
from selfsup.reporting.attention import save_run_attention
from selfsup.reporting.figures import (
    EMBEDDINGS,
    cosine_neighbors,
    embed_2d,
    embedding_figure,
    pick_queries,
    retrieval_figure,
    scores_figure,
)
from selfsup.reporting.page import render_page
from selfsup.reporting.plots import read_metrics, read_summary, write_png, write_run_plots
from selfsup.reporting.preview import save_preview
from selfsup.runs import Run, load_run, load_split, read_run_config, training_views
from selfsup.train.distributed import pick_device

__all__ = ["ReportResult", "build_report"]

Part = tuple[Path, str]  # a representation figure written to disk, with its caption (html)


@dataclass
class ReportResult:
    """What ``report`` wrote: the folder, each PNG by name, the HTML page, and notes on skipped parts."""

    directory: Path
    plots: dict[str, Path]
    html: Path | None = None
    images: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    """``build_report``'s options for the parts that need the trained encoder and the data."""

    device: str
    max_points: int
    max_gallery: int | None
    embedding: str
    n_queries: int
    k: int
    seed: int
    progress: bool


def build_report(run_dir: str | Path, html: bool = True, device: str = "auto", max_points: int = 2000,
                 max_gallery: int | None = 10000, embedding: str = "auto", n_queries: int = 8, k: int = 8,
                 seed: int = 0, progress: bool = False) -> ReportResult:
    """Write the PNG plots (and, with ``html``, ``index.html``) into ``RUN_DIR/report/``."""
    run_dir = Path(run_dir)
    settings = _Settings(device, max_points, max_gallery, embedding, n_queries, k, seed, progress)
    _check(run_dir, settings)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_run_config(run_dir) if (run_dir / "config.yaml").exists() else {}
    n_classes = len((meta.get("data") or {}).get("classes") or []) or None
    result = ReportResult(out_dir, write_run_plots(run_dir, out_dir, classes=n_classes))
    summary = read_summary(run_dir)
    scores_fig = scores_figure(summary)
    if scores_fig is not None:
        result.images["scores"] = write_png(scores_fig, out_dir / "scores.png")
    if not result.plots:
        result.notes.append("no training curves: metrics.jsonl has no records yet")
    if not html:
        return result

    parts: dict[str, Part] = {}
    if meta:
        parts = _representation_parts(run_dir, out_dir, settings, result.notes)
        result.images.update({name: path for name, (path, _) in parts.items()})
    else:
        result.notes.append("no config.yaml: settings, embedding map, retrieval and augmentations skipped")
    result.html = _write_page(run_dir, meta, summary, result, parts)
    return result


def _check(run_dir: Path, settings: _Settings) -> None:
    """ConfigError for a folder that is no run, or for options out of range."""
    if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no metrics.jsonl or config.yaml)")
    if settings.embedding not in EMBEDDINGS:
        raise ConfigError(f"--embedding: choose from {', '.join(EMBEDDINGS)}, got {settings.embedding!r}")
    if settings.embedding == "umap" and importlib.util.find_spec("umap") is None:
        raise ConfigError("--embedding: umap needs umap-learn (pip install umap-learn, or selfsup[report])")
    gallery = 1 if settings.max_gallery is None else settings.max_gallery
    if min(settings.max_points, settings.n_queries, settings.k, gallery) < 1:
        raise ConfigError("--max-points, --max-gallery, --queries and --neighbors must be positive")


def _write_page(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any], result: ReportResult,
                parts: dict[str, Part]) -> Path:
    """``index.html`` with every figure embedded, replaced in one step (a reader never sees half a page)."""
    page = render_page(run_dir, meta, summary, read_metrics(run_dir),
                       panels={name: png for name, path in result.plots.items() if (png := _png(path))},
                       scores_png=_png(result.images.get("scores")),
                       parts={name: (path.read_bytes(), caption) for name, (path, caption) in parts.items()},
                       notes=result.notes)
    return write_text_atomic(result.directory / "index.html", page)


def _png(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None and path.exists() else None


# ------------------------------------------------------------------------------ representation parts

@dataclass
class _Features:
    """The test images of the map and the training images searched, with their frozen features."""

    test: ImageDataset
    gallery: ImageDataset
    test_features: torch.Tensor
    gallery_features: torch.Tensor

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.test_features).all() and torch.isfinite(self.gallery_features).all())


def _representation_parts(run_dir: Path, out_dir: Path, settings: _Settings, notes: list[str]) -> dict[str, Part]:
    """Augmentation preview, embedding map, attention maps (ViT) and retrieval grid, in that order;
    a part that cannot be drawn is left out with a line in ``notes``."""
    loaded = _load_run_and_data(run_dir, settings, notes)
    if loaded is None:
        return {}
    run, split, device = loaded
    parts = {"views": _views_part(run, split, out_dir, settings.seed)}
    features = _features(run, split, device, settings)
    if not features.finite:
        notes.append("embedding map and retrieval skipped: the encoder's features contain NaN/Inf (a diverged run)")
    elif len(features.test) >= 5:
        parts["embedding"] = _embedding_part(run, split, features, out_dir, settings)
    else:
        notes.append("embedding map skipped: fewer than 5 test images")
    if isinstance(run.encoder, ViTBackbone) and len(split.test):
        parts["attention"] = _attention_part(run, split, out_dir)
    if features.finite and len(features.test) and len(features.gallery):
        parts["retrieval"] = _retrieval_part(split, features, out_dir, settings)
    return parts


def _load_run_and_data(run_dir: Path, settings: _Settings,
                       notes: list[str]) -> tuple[Run, DataSplit, torch.device] | None:
    """The trained run, its data and the device to embed on; ``None`` with a note when either is missing."""
    device = pick_device(settings.device)
    try:
        run = load_run(run_dir, device=str(device))
    except Exception as err:  # noqa: BLE001 - a report of an old or broken run still shows its curves
        notes.append(f"embedding map, retrieval and augmentations skipped: cannot load the trained "
                     f"encoder ({type(err).__name__}: {' '.join(str(err).split())})")
        return None
    try:
        split = load_split(dataclasses.replace(run.config, progress=settings.progress))
    except (DataSpecError, OSError) as err:
        notes.append(f"embedding map, retrieval and augmentations skipped: the run's data "
                     f"{run.config.data!r} is not available here ({err})")
        return None
    return run, split, device


def _features(run: Run, split: DataSplit, device: torch.device, settings: _Settings) -> _Features:
    """Frozen features of at most ``max_points`` test and ``max_gallery`` training images (seeded sample)."""
    generator = torch.Generator().manual_seed(settings.seed)
    test = _sample(split.test, settings.max_points, generator)
    gallery = split.train if settings.max_gallery is None else _sample(split.train, settings.max_gallery, generator)
    preprocess = eval_preprocess(run.resolved.image_size, run.mean, run.std)
    return _Features(test, gallery, *(extract_features(run.encoder, images.images, preprocess, device=device,
                                                       progress=settings.progress) for images in (test, gallery)))


def _sample(images: ImageDataset, most: int, generator: torch.Generator) -> ImageDataset:
    if len(images) <= most:
        return images
    return images.select(torch.randperm(len(images), generator=generator)[:most].sort().values)


def _views_part(run: Run, split: DataSplit, out_dir: Path, seed: int) -> Part:
    views = training_views(run.method, run.resolved)
    path = save_preview(split.train, views, out_dir / "views.png", n=6, seed=seed, method=run.method)
    sizes = ", ".join(f"view {i + 1}: {v.size}px" for i, v in enumerate(views))
    return path, (f"Six training images and the augmented views the network was fed ({H.esc(sizes)}; recipe "
                  f"{H.esc(run.resolved.recipe)}, crop scale {H.esc(H.fmt(run.resolved.crop_scale))}).")


def _embedding_part(run: Run, split: DataSplit, features: _Features, out_dir: Path, settings: _Settings) -> Part:
    """2-D map of the test embeddings (UMAP or t-SNE), coloured by label."""
    test = features.test
    coords, used = embed_2d(features.test_features, settings.embedding, settings.seed)
    title = (f"{used} of {len(test)} test embeddings ({run.config.method}, frozen backbone features, "
             f"cosine), coloured by label")
    path = write_png(embedding_figure(coords, test.labels, _classes(split), title), out_dir / "embedding.png")
    shown = f"{len(test)} of {len(split.test)}" if len(test) < len(split.test) else f"all {len(test)}"
    return path, (f"{used} projection of {shown} test images' backbone features (L2-normalised). "
                  "Well-separated colours mean the classes are separable without labels having been "
                  "used in training; positions and axis values carry no meaning of their own.")


def _attention_part(run: Run, split: DataSplit, out_dir: Path) -> Part:
    """[CLS] attention maps of a ViT (DINO, Caron et al. 2021, Fig. 1) on 8 test images."""
    path = save_run_attention(run, split.test.images[:8], out_dir / "attention.png")
    return path, ("Where the [CLS] token of the last block attends, per head and averaged, on "
                  f"{min(8, len(split.test))} test images (each map scaled to its own maximum). "
                  "Heads that light up the object rather than the background are the DINO observation.")


def _retrieval_part(split: DataSplit, features: _Features, out_dir: Path, settings: _Settings) -> Part:
    """Seeded test queries spread over the classes and their nearest training images by cosine."""
    test, gallery = features.test, features.gallery
    queries = pick_queries(test.labels, settings.n_queries, count=len(test), seed=settings.seed)
    sims, neighbors = cosine_neighbors(features.test_features[queries], features.gallery_features, settings.k)
    fig = retrieval_figure(test.images[queries], _labels_at(test, queries), gallery.images[neighbors],
                           _labels_at(gallery, neighbors), sims, _classes(split))
    path = write_png(fig, out_dir / "retrieval.png", dpi=100)
    searched = (f"{len(gallery):,} of {len(split.train):,}" if len(gallery) < len(split.train)
                else f"all {len(gallery):,}")
    return path, (f"{len(queries)} test queries (left, blue) and their {sims.shape[1]} nearest neighbours among "
                  f"{searched} training images by cosine similarity of the frozen backbone features, most "
                  "similar first. Green ✓: same label as the query; red ✗: a different one.")


def _classes(split: DataSplit) -> list[str]:
    return list(split.train.classes or split.test.classes)


def _labels_at(images: ImageDataset, index: torch.Tensor) -> torch.Tensor | None:
    return None if images.labels is None else images.labels[index]
