"""``selfsup report RUN_DIR``: PNG plots and one self-contained ``index.html`` per run folder.

The page holds the run's settings and scores (learned vs random init vs raw pixels), the training
curves and collapse monitors, a 2-D map of the test embeddings, a nearest-neighbour retrieval
grid, the augmentation preview and every ``eval/*.json``. Everything is written to
``RUN_DIR/report/``. The parts that need the trained encoder and the data (map, retrieval,
augmentations) are skipped with a note on the page when the checkpoint or the data is missing.

Layering: reporting imports ``api``, ``evaluation`` and ``data``; nothing in ``train`` or
``evaluation`` imports reporting.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from selfsup.reporting import html as H
from selfsup.reporting.plots import (PANEL_GROUPS, figure_png, read_metrics, read_summary, write_run_plots)

__all__ = ["ReportResult", "build_report", "cosine_neighbors", "pick_queries", "embed_2d", "embedding_figure",
           "retrieval_figure", "scores_figure", "EMBEDDINGS"]

EMBEDDINGS = ("auto", "umap", "tsne")
_PREFIXES = ("random_init_", "raw_pixels_")
_COLLAPSE_THRESHOLD = 0.1  # CollapseWatch's default: std x sqrt(d) below a tenth of isotropic


@dataclass
class ReportResult:
    """What ``report`` wrote: the folder, each PNG by name, the HTML page, and notes on skipped parts."""

    directory: Path
    plots: dict[str, Path]
    html: Path | None = None
    images: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ pure pieces

def cosine_neighbors(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` gallery rows most cosine-similar to each query: ``(similarities, indices)``, both
    ``[Q, k]``, most similar first. Norms do not matter (rows are L2-normalised first)."""
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries [Q, D] and gallery [N, D] needed, got {tuple(queries.shape)} and "
                         f"{tuple(gallery.shape)}")
    k = min(int(k), gallery.shape[0])
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T
    values, indices = sims.topk(k, dim=1, largest=True, sorted=True)
    return values, indices


def pick_queries(labels: torch.Tensor | None, n: int, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` indices into ``count`` items (or ``labels``), seeded, spread over as many classes as
    possible (round-robin over classes in a shuffled order)."""
    total = len(labels) if labels is not None else int(count or 0)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    n = min(n, total)
    if labels is None:
        return order[:n]
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < n:  # each pass takes the first not-yet-chosen image of each class
        taken_classes: set[int] = set()
        for i in order.tolist():
            lab = int(labels[i])
            if i not in seen and lab not in taken_classes:
                chosen.append(i)
                seen.add(i)
                taken_classes.add(lab)
                if len(chosen) == n:
                    break
    return torch.tensor(sorted(chosen, key=lambda i: (int(labels[i]), i)), dtype=torch.long)


def embed_2d(features: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of L2-normalised ``features`` (so distances follow cosine similarity).

    ``auto``: UMAP when ``umap-learn`` is importable, else scikit-learn's t-SNE (after PCA to
    50 dims). Returns ``(coords [N, 2], name of the method used)``.
    """
    if method not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {method!r}")
    x = F.normalize(features.float(), dim=1).numpy().astype(np.float64)
    n = x.shape[0]
    if n < 5:
        raise ValueError(f"a 2-D map needs at least 5 points, got {n}")
    if method in ("auto", "umap"):
        try:
            import umap  # optional: pip install umap-learn
        except ImportError:
            if method == "umap":
                raise ValueError("embedding 'umap' needs umap-learn (pip install umap-learn)") from None
        else:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), min_dist=0.1, metric="cosine",
                                random_state=seed)
            return np.asarray(reducer.fit_transform(x)), "UMAP"
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One thread: t-SNE's OpenMP workers spin-wait, which costs 20x the CPU on a busy machine
    # (measured: 359 points, 1.1 s vs 20 s CPU at load 14 on 2 cores); 2000 points take ~9 s.
    with threadpool_limits(limits=1):
        if x.shape[1] > 50 and n > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        tsne = TSNE(n_components=2, perplexity=float(min(30.0, max(2.0, (n - 1) / 3))), init="pca",
                    learning_rate="auto", random_state=seed)
        coords = tsne.fit_transform(x)
    return np.asarray(coords), "t-SNE"


def _class_names(classes: Sequence[str], count: int) -> list[str]:
    return [str(classes[i]) if i < len(classes) else str(i) for i in range(count)]


def embedding_figure(coords: np.ndarray, labels: torch.Tensor | None, classes: Sequence[str], title: str) -> Figure:
    """Scatter of the 2-D map, coloured by label with a legend of class names."""
    fig = Figure(figsize=(8.2, 6.4), layout="constrained")
    ax = fig.subplots()
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=7, alpha=0.7, color="C0", linewidths=0)
    else:
        labs = labels.numpy()
        n_classes = max(int(labs.max()) + 1, len(classes))
        names = _class_names(classes, n_classes)
        if n_classes <= 20:
            from matplotlib import colormaps

            cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
            for c in range(n_classes):
                mask = labs == c
                if mask.any():
                    ax.scatter(coords[mask, 0], coords[mask, 1], s=9, alpha=0.8, color=cmap(c), linewidths=0,
                               label=f"{names[c]} ({int(mask.sum())})")
            ax.legend(title="label (count)", fontsize=8, title_fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), markerscale=2, frameon=False)
        else:
            points = ax.scatter(coords[:, 0], coords[:, 1], c=labs, cmap="turbo", s=7, alpha=0.8, linewidths=0)
            fig.colorbar(points, ax=ax, label="class index")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("component 1 (arbitrary units)", fontsize=9)
    ax.set_ylabel("component 2 (arbitrary units)", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.tick_params(labelsize=8)
    return fig


def _display(image: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 ``[C, H, W]`` -> array for ``imshow`` and its keyword arguments."""
    x = image.float().div(255).clamp(0, 1)
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy(), {}
    return x[0].numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def retrieval_figure(query_images: torch.Tensor, query_labels: torch.Tensor | None, neighbor_images: torch.Tensor,
                     neighbor_labels: torch.Tensor | None, similarities: torch.Tensor,
                     classes: Sequence[str]) -> Figure:
    """Rows: a query test image, then its neighbours (most similar first) with label and cosine;
    with labels, a neighbour of the query's class has a green frame and ✓, others red and ✗."""
    q, k = similarities.shape
    fig = Figure(figsize=(1.25 * (k + 1) + 0.35, 1.5 * q + 0.5), layout="constrained")
    grid = fig.add_gridspec(q, k + 2, width_ratios=[1, 0.22] + [1] * k)
    seen = [len(classes) - 1]
    for labels in (query_labels, neighbor_labels):
        if labels is not None and labels.numel():
            seen.append(int(labels.max()))
    names = _class_names(classes, 1 + max(seen))
    for row in range(q):
        ax = fig.add_subplot(grid[row, 0])
        data, kw = _display(query_images[row])
        ax.imshow(data, interpolation="nearest", **kw)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#0969da")
            spine.set_linewidth(3)
        qlab = None if query_labels is None else int(query_labels[row])
        correct = 0
        ax.set_title(f"query: {names[qlab]}" if qlab is not None else f"query {row + 1}", fontsize=8,
                     color="#0969da", fontweight="bold")
        for col in range(k):
            ax = fig.add_subplot(grid[row, col + 2])
            data, kw = _display(neighbor_images[row, col])
            ax.imshow(data, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            sim = float(similarities[row, col])
            if neighbor_labels is not None and qlab is not None:
                nlab = int(neighbor_labels[row, col])
                ok = nlab == qlab
                correct += ok
                color = "#1a7f37" if ok else "#cf222e"
                ax.set_title(f"{'✓' if ok else '✗'} {names[nlab]}\ncos {sim:.2f}", fontsize=7, color=color)
                for spine in ax.spines.values():
                    spine.set_color(color)
                    spine.set_linewidth(2.5)
            else:
                ax.set_title(f"cos {sim:.2f}", fontsize=7)
        if query_labels is not None and neighbor_labels is not None:
            fig.axes[-k - 1].set_ylabel(f"{correct}/{k} same class", fontsize=7)
    fig.suptitle(f"Nearest training images by cosine similarity of frozen features ({k} per query)",
                 fontsize=10)
    return fig


def scores_figure(summary: dict[str, Any]) -> Figure | None:
    """Grouped bars: learned vs random init vs raw pixels for each ``*_top1``/``*_top5`` score."""
    keys = _score_keys(summary)
    if not keys:
        return None
    fig = Figure(figsize=(1.9 * len(keys) + 2.8, 3.8), layout="constrained")
    ax = fig.subplots()
    groups = (("learned", "", "#1f77b4"), ("random init", "random_init_", "#aaaaaa"),
              ("raw pixels", "raw_pixels_", "#ff7f0e"))
    width = 0.26
    for g, (name, prefix, color) in enumerate(groups):
        values = [summary.get(prefix + k) for k in keys]
        xs = [i + (g - 1) * width for i, v in enumerate(values) if isinstance(v, (int, float))]
        vs = [100 * v for v in values if isinstance(v, (int, float))]
        bars = ax.bar(xs, vs, width, label=name, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(keys)), [_pretty(k) for k in keys], fontsize=9)
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy on the test split (%)", fontsize=9)
    ax.set_title("Frozen-feature evaluation: learned vs baselines", fontsize=11)
    ax.grid(True, axis="y", alpha=0.35)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ------------------------------------------------------------------------------ tables

def _pretty(key: str) -> str:
    """``knn_top1`` -> ``kNN top-1``; ``linear_top5`` -> ``linear probe top-5``."""
    name, _, k = key.rpartition("_top")
    name = {"knn": "kNN", "linear": "linear probe"}.get(name, name.replace("_", " "))
    return f"{name} top-{k}"


def _score_keys(scores: dict[str, Any]) -> list[str]:
    return [k for k, v in scores.items() if (k.endswith("_top1") or k.endswith("_top5"))
            and not k.startswith(_PREFIXES) and isinstance(v, (int, float))]


def _scores_table(scores: dict[str, Any]) -> str:
    keys = _score_keys(scores)
    if not keys:
        return "<p>No scores (the run was trained without --eval-after, or its data has no labels).</p>"
    rows, classes = [], []
    for key in keys:
        learned, rand, raw = (scores.get(p + key) for p in ("", *_PREFIXES))
        delta = learned - rand if isinstance(rand, (int, float)) else None
        rows.append((_pretty(key), H.fmt(learned, True), H.fmt(rand, True), H.fmt(raw, True),
                     "–" if delta is None else f"{100 * delta:+.2f} pts"))
        classes.append(("", "num", "num", "num",
                        "num" + ("" if delta is None else " good" if delta > 0 else " bad")))
    return H.table(("metric", "learned", "random init", "raw pixels", "learned − random init"), rows, classes)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _eval_files(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            found.append((path.name, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            found.append((path.name, {"error": "unreadable JSON"}))
    return found


# ------------------------------------------------------------------------------ the report

def _representation_parts(run_dir: Path, out_dir: Path, device: str, max_points: int, max_gallery: int | None,
                          embedding: str, n_queries: int, k: int, seed: int, progress: bool,
                          result: ReportResult) -> dict[str, tuple[bytes, str]]:
    """Embedding map, retrieval grid and augmentation preview: ``{name: (png, caption html)}``."""
    from selfsup.api import load_run, pick_device, training_views
    from selfsup.data.sources import DataSpecError, load_data
    from selfsup.evaluation.features import extract_features
    from selfsup.evaluation.frozen import eval_preprocess
    from selfsup.models.vit import ViTBackbone
    from selfsup.reporting.attention import save_run_attention
    from selfsup.reporting.preview import save_preview

    parts: dict[str, tuple[bytes, str]] = {}
    dev = pick_device(device)
    try:
        run = load_run(run_dir, device=str(dev))
    except Exception as err:  # noqa: BLE001 - a report of an old or broken run still shows its curves
        result.notes.append(f"embedding map, retrieval and augmentations skipped: cannot load the trained "
                            f"encoder ({type(err).__name__}: {' '.join(str(err).split())})")
        return parts
    cfg = run.config
    try:
        split = load_data(cfg.data, subset=cfg.subset, seed=cfg.seed, root=cfg.data_root,
                          image_size=cfg.image_size, progress=progress)
    except (DataSpecError, OSError) as err:
        result.notes.append(f"embedding map, retrieval and augmentations skipped: the run's data "
                            f"{cfg.data!r} is not available here ({err})")
        return parts
    classes = list(split.train.classes or split.test.classes)

    # augmentation preview: the run's own views
    views_path = save_preview(split.train, training_views(run.method, run.resolved), out_dir / "views.png",
                              n=6, seed=seed)
    result.images["views"] = views_path
    view_note = ", ".join(f"view {i + 1}: {v.size}px" for i, v in enumerate(training_views(run.method,
                                                                                            run.resolved)))
    parts["views"] = (views_path.read_bytes(),
                      f"Six training images and the augmented views the network was fed ({H.esc(view_note)}; "
                      f"recipe {H.esc(run.resolved.recipe)}, crop scale {H.esc(H.fmt(run.resolved.crop_scale))}).")

    pre = eval_preprocess(run.resolved.image_size, run.mean, run.std)
    gen = torch.Generator().manual_seed(seed)
    test = split.test
    if len(test) > max_points:
        test = test.select(torch.randperm(len(test), generator=gen)[:max_points].sort().values)
    gallery = split.train
    if max_gallery is not None and len(gallery) > max_gallery:
        gallery = gallery.select(torch.randperm(len(gallery), generator=gen)[:max_gallery].sort().values)
    test_features = extract_features(run.encoder, test.images, pre, device=dev, progress=progress)
    gallery_features = extract_features(run.encoder, gallery.images, pre, device=dev, progress=progress)

    # 2-D map of the test embeddings
    finite = bool(torch.isfinite(test_features).all() and torch.isfinite(gallery_features).all())
    if not finite:
        result.notes.append("embedding map and retrieval skipped: the encoder's features contain NaN/Inf "
                            "(a diverged run)")
    elif len(test) >= 5:
        coords, used = embed_2d(test_features, embedding, seed)
        title = (f"{used} of {len(test)} test embeddings ({run.config.method}, frozen backbone features, "
                 f"cosine), coloured by label")
        fig = embedding_figure(coords, test.labels, classes, title)
        path = out_dir / "embedding.png"
        path.write_bytes(figure_png(fig))
        result.images["embedding"] = path
        shown = f"{len(test)} of {len(split.test)}" if len(test) < len(split.test) else f"all {len(test)}"
        parts["embedding"] = (path.read_bytes(),
                              f"{used} projection of {shown} test images' backbone features (L2-normalised). "
                              "Well-separated colours mean the classes are separable without labels having been "
                              "used in training; positions and axis values carry no meaning of their own.")
    else:
        result.notes.append("embedding map skipped: fewer than 5 test images")

    # [CLS] attention maps (DINO, Caron et al. 2021, Fig. 1) when the backbone is a ViT
    if isinstance(run.encoder, ViTBackbone) and len(split.test):
        path = save_run_attention(run, split.test.images[:8], out_dir / "attention.png")
        result.images["attention"] = path
        parts["attention"] = (path.read_bytes(),
                              "Where the [CLS] token of the last block attends, per head and averaged, on "
                              f"{min(8, len(split.test))} test images (each map scaled to its own maximum). "
                              "Heads that light up the object rather than the background are the DINO "
                              "observation.")

    # nearest-neighbour retrieval grid
    if finite and len(test) and len(gallery):
        q_index = pick_queries(test.labels, n_queries, count=len(test), seed=seed)
        sims, nb_index = cosine_neighbors(test_features[q_index], gallery_features, k)
        fig = retrieval_figure(test.images[q_index], None if test.labels is None else test.labels[q_index],
                               gallery.images[nb_index], None if gallery.labels is None else gallery.labels[nb_index],
                               sims, classes)
        path = out_dir / "retrieval.png"
        path.write_bytes(figure_png(fig, dpi=100))
        result.images["retrieval"] = path
        searched = (f"{len(gallery):,} of {len(split.train):,}" if len(gallery) < len(split.train)
                    else f"all {len(gallery):,}")
        parts["retrieval"] = (path.read_bytes(),
                              f"{len(q_index)} test queries (left, blue) and their {sims.shape[1]} nearest "
                              f"neighbours among {searched} training images by cosine similarity of the frozen "
                              "backbone features, most similar first. Green ✓: same label as the query; "
                              "red ✗: a different one.")
    return parts


def build_report(run_dir: str | Path, html: bool = True, device: str = "auto", max_points: int = 2000,
                 max_gallery: int | None = 10000, embedding: str = "auto", n_queries: int = 8, k: int = 8,
                 seed: int = 0, progress: bool = False) -> ReportResult:
    """Write the PNG plots (and, with ``html``, ``index.html``) into ``RUN_DIR/report/``."""
    from selfsup.config import ConfigError, read_yaml

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no metrics.jsonl or config.yaml)")
    if embedding not in EMBEDDINGS:
        raise ConfigError(f"--embedding: choose from {', '.join(EMBEDDINGS)}, got {embedding!r}")
    if embedding == "umap" and importlib.util.find_spec("umap") is None:
        raise ConfigError("--embedding: umap needs umap-learn (pip install umap-learn, or selfsup[report])")
    if max_points < 1 or n_queries < 1 or k < 1 or (max_gallery is not None and max_gallery < 1):
        raise ConfigError("--max-points, --max-gallery, --queries and --neighbors must be positive")
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    n_classes = len((meta.get("data") or {}).get("classes") or []) or None
    result = ReportResult(out_dir, write_run_plots(run_dir, out_dir, classes=n_classes))
    summary = read_summary(run_dir)
    scores_fig = scores_figure(summary)
    if scores_fig is not None:
        path = out_dir / "scores.png"
        path.write_bytes(figure_png(scores_fig))
        result.images["scores"] = path
    if not result.plots:
        result.notes.append("no training curves: metrics.jsonl has no records yet")
    if not html:
        return result

    parts: dict[str, tuple[bytes, str]] = {}
    if meta:
        parts = _representation_parts(run_dir, out_dir, device, max_points, max_gallery, embedding, n_queries,
                                      k, seed, progress, result)
    else:
        result.notes.append("no config.yaml: settings, embedding map, retrieval and augmentations skipped")
    page = _render(run_dir, meta, summary, read_metrics(run_dir), result, parts)
    result.html = out_dir / "index.html"
    result.html.write_text(page, encoding="utf-8")
    return result


_MONITOR_TEXT = (
    "<p>Collapse monitors are computed on each logged batch of projector outputs. "
    "<b>std × √d</b>: the mean per-dimension standard deviation of the L2-normalised outputs times √d "
    "(SimSiam, Chen &amp; He 2021): about 1 when the outputs spread out in every direction, 0 when every "
    "image maps to the same point; below 0.1 for several logs triggers a collapse warning. "
    "<b>RankMe</b> (Garrido et al. 2023): the effective number of dimensions used, 1 when collapsed. "
    "<b>Alignment / uniformity</b> (Wang &amp; Isola 2020): how close the two views' outputs are, and how "
    "evenly the outputs cover the unit sphere (0 = collapsed, lower = more uniform). "
    "<b>View cosine</b>: mean cosine similarity of the two views' outputs; 1 together with a falling "
    "std means collapse, not success.</p>")


def _render(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]],
            result: ReportResult, parts: dict[str, tuple[bytes, str]]) -> str:
    config = meta.get("config") or {}
    data = meta.get("data") or {}
    method = summary.get("method") or config.get("method", "?")
    facts = [f"{method}", f"{summary.get('backbone') or config.get('backbone', '?')} "
                           f"× {summary.get('width') or config.get('width', '?')}",
             f"data {summary.get('data') or config.get('data', '?')}"]
    if summary.get("steps") is not None:
        facts.append(f"{summary.get('epochs')} epochs, {summary['steps']} steps in "
                     f"{summary.get('seconds', 0):.0f} s on {summary.get('device', '?')}")
    facts.append(f"report generated {_dt.datetime.now():%Y-%m-%d %H:%M}")
    banners: list[tuple[str, str]] = []
    last_std = next((r["std_scaled"] for r in reversed(records) if isinstance(r.get("std_scaled"), (int, float))),
                    None)
    if last_std is not None and (not math.isfinite(last_std) or last_std < _COLLAPSE_THRESHOLD):
        banners.append(("bad", f"Representation collapse: the last logged std × √d is {last_std:.3f} "
                               f"(healthy ≈ 1, collapsed 0). Scores below describe a collapsed encoder."))
    learned, rand = summary.get("knn_top1"), summary.get("random_init_knn_top1")
    if isinstance(learned, (int, float)) and isinstance(rand, (int, float)) and learned <= rand:
        banners.append(("note", f"The learned encoder does not beat a random-init encoder on kNN "
                                f"({100 * learned:.2f}% vs {100 * rand:.2f}%): train longer or check the "
                                "collapse monitors before trusting this representation."))
    banners.extend(("note", n) for n in result.notes)

    def png_of(name: str) -> bytes | None:
        path = result.plots.get(name) or result.images.get(name)
        return path.read_bytes() if path is not None and path.exists() else None

    sections: list[tuple[str, str, str]] = []
    # results
    body = _scores_table(summary) if summary else "<p>No summary.json yet (training not finished).</p>"
    scores_png = png_of("scores")
    if scores_png:
        body += H.img(scores_png, "bar chart of learned vs random-init vs raw-pixel accuracy")
    if summary:
        run_keys = ("data_source", "train_images", "epochs", "batch_size", "steps", "seconds", "images_per_second",
                    "device", "precision", "peak_memory_mb", "recipe", "skipped_files")
        body += "<h3>Run</h3>" + H.key_value_table({k: summary[k] for k in run_keys if k in summary},
                                                   ("", "value"))
    sections.append(("results", "Results", "<p>Top-1 accuracy of frozen features on the test split: the "
                     "learned encoder beside a random-init encoder of the same architecture and raw pixels."
                     "</p>" + body))
    # eval/*.json
    evals = _eval_files(run_dir)
    if evals:
        body = ""
        for name, ev in evals:
            head = (f"{ev.get('protocol', '?')} on {ev.get('data', '?')} "
                    f"({ev.get('test_images', '?')} test images, {ev.get('train_images', '?')} train images)")
            body += f"<h3>{H.esc(name)}: {H.esc(head)}</h3>" + _scores_table(ev)
            if ev.get("data_source"):
                body += f"<p class=\"sub\">data: {H.esc(ev['data_source'])}</p>"
    else:
        body = "<p>No <code>selfsup eval</code> results in eval/ yet.</p>"
    sections.append(("evaluations", "Evaluations (eval/)", body))
    # curves and monitors
    for group, anchor, title, intro in (
            ("curves", "curves", "Training curves", ""),
            ("monitors", "monitors", "Collapse monitors", _MONITOR_TEXT)):
        figs = [H.img(png, f"{name} plot", wide=name == "alignment_uniformity")
                for name in result.plots if PANEL_GROUPS.get(name) == group and (png := png_of(name))]
        if figs:
            body = intro + f'<div class="grid">{"".join(figs)}</div>'
            if group == "monitors" and summary.get("final_metrics"):
                fm = {k: v for k, v in summary["final_metrics"].items() if k not in ("step", "epoch")}
                body += "<h3>Last logged values</h3>" + H.key_value_table(fm, ("metric", "value"))
        else:
            body = "<p>Nothing logged yet.</p>"
        sections.append((anchor, title, body))
    # representation parts
    for name, anchor, title, alt in (
            ("embedding", "embedding", "Embedding map", "2-D map of test embeddings coloured by label"),
            ("retrieval", "retrieval", "Nearest neighbours", "retrieval grid: queries and nearest training images"),
            ("attention", "attention", "Attention maps", "ViT [CLS] attention maps per head"),
            ("views", "augmentations", "Augmentations", "training images and their augmented views")):
        if name in parts:
            png, caption = parts[name]
            sections.append((anchor, title, H.img(png, alt, caption)))
    # settings
    if meta:
        body = '<div class="cols"><div><h3>As given</h3>' + H.key_value_table(_flatten(config)) + "</div>"
        body += "<div><h3>Resolved</h3>" + H.key_value_table(_flatten(meta.get("resolved") or {})) + "</div>"
        data_items = {k: v for k, v in data.items()}
        body += "<div><h3>Data</h3>" + H.key_value_table(data_items, ("", "value"))
        body += "<h3>Versions</h3>" + H.key_value_table(meta.get("versions") or {}, ("package", "version"))
        body += "</div></div>"
        cfg_path = run_dir / "config.yaml"
        body += f"<details><summary>config.yaml</summary><pre>{H.esc(cfg_path.read_text())}</pre></details>"
        sections.append(("settings", "Settings (config.yaml)", body))
    return H.page(f"selfsup report: {run_dir.resolve().name}", " · ".join(facts), sections,
                  footer=f"Written by selfsup from {run_dir.resolve()}. Self-contained: images are embedded.",
                  banners=banners)
