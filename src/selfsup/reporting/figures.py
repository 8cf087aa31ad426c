"""The report's figures: the 2-D map of test embeddings, the nearest-neighbour retrieval grid and
the bar chart of scores against the baselines, with the pure pieces behind them (cosine
neighbours, query picking, the UMAP / t-SNE projection)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from selfsup.data.augment import to_float
from selfsup.evaluation.baselines import BASELINES
from selfsup.reporting.images import show_image
from selfsup.reporting.plots import is_score

__all__ = ["EMBEDDINGS", "BASELINE_PREFIXES", "cosine_neighbors", "pick_queries", "embed_2d", "embedding_figure",
           "retrieval_figure", "scores_figure", "score_keys", "score_name"]

EMBEDDINGS = ("auto", "umap", "tsne")
BASELINE_PREFIXES = tuple(prefix for prefix, _ in BASELINES)  # summary keys of the floors' scores
_QUERY, _SAME, _OTHER = "#0969da", "#1a7f37", "#cf222e"


# ------------------------------------------------------------------------------ embedding map

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


# ------------------------------------------------------------------------------ retrieval grid

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



def retrieval_figure(query_images: torch.Tensor, query_labels: torch.Tensor | None, neighbor_images: torch.Tensor,
                     neighbor_labels: torch.Tensor | None, similarities: torch.Tensor,
                     classes: Sequence[str]) -> Figure:
    """Rows: a uint8 query test image, then its neighbours (most similar first) with label and cosine;
    with labels, a neighbour of the query's class has a green frame and ✓, others red and ✗."""
    q, k = similarities.shape
    fig = Figure(figsize=(1.25 * (k + 1) + 0.35, 1.5 * q + 0.5), layout="constrained")
    grid = fig.add_gridspec(q, k + 2, width_ratios=[1, 0.22] + [1] * k)
    seen = [len(classes) - 1] + [int(labels.max()) for labels in (query_labels, neighbor_labels)
                                 if labels is not None and labels.numel()]
    names = _class_names(classes, 1 + max(seen))
    queries, neighbors = to_float(query_images), to_float(neighbor_images)
    for row in range(q):
        query_ax = fig.add_subplot(grid[row, 0])
        qlab = None if query_labels is None else int(query_labels[row])
        _draw_query(query_ax, queries[row], None if qlab is None else names[qlab], row)
        correct = 0
        for col in range(k):
            ax = fig.add_subplot(grid[row, col + 2])
            show_image(ax, neighbors[row, col])
            sim = float(similarities[row, col])
            if neighbor_labels is not None and qlab is not None:
                nlab = int(neighbor_labels[row, col])
                correct += nlab == qlab
                _mark_neighbor(ax, names[nlab], sim, same_class=nlab == qlab)
            else:
                ax.set_title(f"cos {sim:.2f}", fontsize=7)
        if query_labels is not None and neighbor_labels is not None:
            query_ax.set_ylabel(f"{correct}/{k} same class", fontsize=7)
    fig.suptitle(f"Nearest training images by cosine similarity of frozen features ({k} per query)",
                 fontsize=10)
    return fig


def _draw_query(ax: Axes, image: torch.Tensor, name: str | None, row: int) -> None:
    """A query image in a blue frame, titled with its class name (or its number without labels)."""
    show_image(ax, image)
    _frame(ax, _QUERY, 3)
    ax.set_title(f"query: {name}" if name is not None else f"query {row + 1}", fontsize=8, color=_QUERY,
                 fontweight="bold")


def _mark_neighbor(ax: Axes, name: str, similarity: float, same_class: bool) -> None:
    """Green frame and ✓ for a neighbour of the query's class, red and ✗ otherwise."""
    color = _SAME if same_class else _OTHER
    ax.set_title(f"{'✓' if same_class else '✗'} {name}\ncos {similarity:.2f}", fontsize=7, color=color)
    _frame(ax, color, 2.5)


def _frame(ax: Axes, color: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(width)


# ------------------------------------------------------------------------------ scores

def score_keys(scores: dict[str, Any]) -> list[str]:
    """The learned encoder's ``*_top1`` / ``*_top5`` scores in ``scores`` (baselines left out)."""
    return [k for k, v in scores.items()
            if is_score(k) and not k.startswith(BASELINE_PREFIXES) and isinstance(v, (int, float))]


def score_name(key: str) -> str:
    """``knn_top1`` -> ``kNN top-1``; ``linear_top5`` -> ``linear probe top-5``."""
    name, _, k = key.rpartition("_top")
    name = {"knn": "kNN", "linear": "linear probe"}.get(name, name.replace("_", " "))
    return f"{name} top-{k}"


def scores_figure(summary: dict[str, Any]) -> Figure | None:
    """Grouped bars: learned vs random init vs raw pixels for each ``*_top1``/``*_top5`` score."""
    keys = score_keys(summary)
    if not keys:
        return None
    fig = Figure(figsize=(1.9 * len(keys) + 2.8, 3.8), layout="constrained")
    ax = fig.subplots()
    colors = {"": "#1f77b4", "random_init_": "#aaaaaa", "random_default_init_": "#666666", "raw_pixels_": "#ff7f0e"}
    groups = [(name, prefix, colors[prefix]) for prefix, name in (("", "learned"), *BASELINES)
              if any(isinstance(summary.get(prefix + k), (int, float)) for k in keys)]
    width = 0.8 / len(groups)
    for g, (name, prefix, color) in enumerate(groups):
        values = [summary.get(prefix + k) for k in keys]
        xs = [i + (g - (len(groups) - 1) / 2) * width for i, v in enumerate(values) if isinstance(v, (int, float))]
        vs = [100 * v for v in values if isinstance(v, (int, float))]
        bars = ax.bar(xs, vs, width, label=name, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(keys)), [score_name(k) for k in keys], fontsize=9)
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy on the test split (%)", fontsize=9)
    ax.set_title("Frozen-feature evaluation: learned vs baselines", fontsize=11)
    ax.grid(True, axis="y", alpha=0.35)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
