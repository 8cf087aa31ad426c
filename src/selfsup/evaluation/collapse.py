"""Supervision collapse, measured: do novel-class images find their own class among their nearest
neighbours, or base classes?

Doersch, Gupta & Zisserman (NeurIPS 2020, Sec. 2 and Fig. 1) show that a Prototypical Network's
embedding of an image of a class it never saw retrieves, as nearest neighbours, images of the
*training* classes that share a superficial property: the features kept only what separates the
training classes ("supervision collapse"). Here, for novel-class test images (queries), the ``k``
nearest neighbours are taken in a bank of base- and novel-class test images (the query itself
left out) and sorted into three fractions: the query's own class (``same_class``), another novel
class (``other_novel``), a base class (``base``). ``chance_*`` are the fractions a random draw from
the bank would give. Less collapse: higher ``same_class``, lower ``base``.

Distances are squared Euclidean on the pooled backbone features (the metric Prototypical Networks
classify with; ``metric="cosine"`` for cosine). :func:`collapse_figure` draws queries with their
retrieved neighbours, framed by where they come from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from selfsup.data.augment import to_float
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.frozen import eval_preprocess

__all__ = ["CollapseResult", "nearest_neighbours", "supervision_collapse", "collapse_figure",
           "measure_supervision_collapse", "METRICS"]

METRICS = ("euclidean", "cosine")
_SAME, _OTHER_NOVEL, _BASE, _QUERY = "#1a7f37", "#bf8700", "#cf222e", "#0969da"


@dataclass
class CollapseResult:
    """Fractions of the ``k`` nearest neighbours of novel-class queries by where they come from."""

    same_class: float
    other_novel: float
    base: float
    chance_same_class: float
    chance_base: float
    k: int
    queries: int
    bank: int
    metric: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "euclidean",
                       exclude: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """``[Q, k]`` indices of the ``k`` bank rows nearest each query (nearest first); ``exclude[i]`` (a
    bank index, or -1) is never a neighbour of query ``i``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if not 1 <= k < bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0] - 1}], got {k}")
    q, b = queries.double(), bank.double()
    if metric == "cosine":
        q, b = F.normalize(q, dim=1), F.normalize(b, dim=1)
    out = []
    for start in range(0, q.shape[0], chunk):
        part = q[start:start + chunk]
        if metric == "cosine":
            score = part @ b.T
        else:  # -||q - b||^2 up to the query's own norm, which does not change the ranking
            score = 2 * part @ b.T - b.pow(2).sum(1)[None, :]
        if exclude is not None:
            ex = exclude[start:start + chunk]
            rows = (ex >= 0).nonzero().squeeze(1)
            score[rows, ex[rows]] = float("-inf")
        out.append(score.topk(k, dim=1).indices)
    return torch.cat(out)


def supervision_collapse(query_features: torch.Tensor, query_labels: torch.Tensor, bank_features: torch.Tensor,
                         bank_labels: torch.Tensor, base_classes: Sequence[int], k: int = 10,
                         metric: str = "euclidean", query_bank_index: torch.Tensor | None = None,
                         ) -> tuple[CollapseResult, torch.Tensor]:
    """The :class:`CollapseResult` of novel-class queries against the bank, and the ``[Q, k]`` neighbour
    indices. ``query_bank_index``: each query's own row in the bank (left out), or -1."""
    base = torch.tensor(sorted(set(int(c) for c in base_classes)), dtype=torch.long)
    query_labels, bank_labels = query_labels.long().cpu(), bank_labels.long().cpu()
    if torch.isin(query_labels, base).any():
        raise ValueError("queries must come from novel classes (not in base_classes)")
    index = nearest_neighbours(query_features, bank_features, k, metric, query_bank_index)
    found = bank_labels[index]  # [Q, k]
    same = found == query_labels[:, None]
    from_base = torch.isin(found, base)
    # chance: a uniform draw from the bank without the query itself
    own = torch.bincount(bank_labels, minlength=int(query_labels.max()) + 1)[query_labels].double()
    total = torch.full_like(own, float(len(bank_labels)))
    if query_bank_index is not None:
        inside = (query_bank_index.cpu() >= 0).double()
        own, total = own - inside, total - inside
    n_base = float(torch.isin(bank_labels, base).sum())
    result = CollapseResult(
        same_class=float(same.double().mean()), other_novel=float((~same & ~from_base).double().mean()),
        base=float(from_base.double().mean()), chance_same_class=float((own / total).mean()),
        chance_base=float((n_base / total).mean()), k=k, queries=len(query_labels), bank=len(bank_labels),
        metric=metric)
    return result, index


def collapse_figure(query_images: torch.Tensor, query_labels: torch.Tensor, neighbour_images: torch.Tensor,
                    neighbour_labels: torch.Tensor, base_classes: Sequence[int], class_names: Sequence[str],
                    title: str = "") -> Figure:
    """Rows: a novel-class query (uint8 ``[Q, C, H, W]``, blue frame) and its neighbours (``[Q, k, C, H, W]``,
    nearest first), framed green (the query's class), amber (another novel class) or red (a base class).
    One mosaic image in one axes (fast to draw), each tile captioned with its class."""
    q, k = neighbour_labels.shape
    base = set(int(c) for c in base_classes)
    side = max(query_images.shape[-2:])
    scale = max(1, -(-48 // side))  # tiles of at least 48 px
    border, gap = 3, 16  # gap: room for the caption above each tile
    tile = side * scale + 2 * border
    cols = k + 1
    canvas = torch.ones(3, q * (tile + gap) + gap // 2, cols * (tile + border) + tile // 3)

    def rgb(images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        return F.interpolate(x, scale_factor=scale, mode="nearest")

    def name(c: int) -> str:
        return class_names[c] if c < len(class_names) else str(c)

    captions = []
    queries, neighbours = rgb(query_images), rgb(neighbour_images.flatten(0, 1)).view(q, k, 3, side * scale, -1)
    for row in range(q):
        label = int(query_labels[row])
        top = row * (tile + gap) + gap
        cells = [(0, queries[row], _QUERY, f"query: {name(label)}")]
        for col in range(k):
            found = int(neighbour_labels[row, col])
            color = _SAME if found == label else _BASE if found in base else _OTHER_NOVEL
            cells.append((col + 1, neighbours[row, col], color, ("base: " if found in base else "") + name(found)))
        for col, image, color, caption in cells:
            left = col * (tile + border) + (tile // 3 if col else 0)
            canvas[:, top:top + tile, left:left + tile] = torch.tensor(_hex(color))[:, None, None]
            canvas[:, top + border:top + tile - border, left + border:left + tile - border] = image
            captions.append((left + tile / 2, top - 2, caption, color))
    fig = Figure(figsize=(canvas.shape[2] / 72, canvas.shape[1] / 72 + 0.4))
    ax = fig.add_axes((0, 0, 1, canvas.shape[1] / (canvas.shape[1] + 0.4 * 72)))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    for x, y, caption, color in captions:
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=6, color=color)
    fig.suptitle(title or "Nearest neighbours of novel-class queries: green own class, amber other novel class, "
                          "red base class", fontsize=8, y=0.995)
    return fig


def _hex(color: str) -> tuple[float, float, float]:
    return tuple(int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))


def _spread_queries(labels: torch.Tensor, classes: Sequence[int], n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``n`` positions of ``labels`` in ``classes``, drawn round-robin over the classes (seeded)."""
    pools = [(labels == c).nonzero().squeeze(1) for c in classes]
    pools = [p[torch.randperm(len(p), generator=generator)] for p in pools if len(p)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(p) for p in pools):
        picked += [int(p[depth]) for p in pools if depth < len(p)][:n - len(picked)]
        depth += 1
    return torch.tensor(picked, dtype=torch.long)


def measure_supervision_collapse(encoder: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                                 labels: torch.Tensor, novel_classes: Sequence[int], size: int,
                                 mean: Sequence[float], std: Sequence[float], k: int = 10, queries: int = 1000,
                                 metric: str = "euclidean", seed: int = 0, device: torch.device | str = "cpu",
                                 figure_queries: int = 8, figure_neighbours: int = 8,
                                 class_names: Sequence[str] = (), title: str = "",
                                 ) -> tuple[CollapseResult, Figure | None]:
    """Supervision collapse of ``encoder``'s pooled features on labelled ``images`` (uint8, e.g. a test
    split holding base and novel classes): up to ``queries`` novel-class queries (seeded, spread over the
    classes) against the whole set as the bank. Returns the result and, with ``figure_queries > 0``, the
    figure of that many queries (one class after another) with their ``figure_neighbours`` nearest."""
    labels = labels.long().cpu()
    novel = sorted(set(int(c) for c in novel_classes))
    base = sorted(set(labels.unique().tolist()) - set(novel))
    if not base:
        raise ValueError("supervision collapse needs base-class images in the bank; these images have only "
                         f"the novel classes {novel}")
    gen = torch.Generator().manual_seed(seed)
    query_index = _spread_queries(labels, novel, queries, gen)
    features = extract_features(encoder, images, eval_preprocess(size, mean, std), device=device)
    result, neighbours = supervision_collapse(features[query_index], labels[query_index], features, labels, base, k,
                                              metric, query_bank_index=query_index)
    figure = None
    if figure_queries > 0:
        shown = _spread_queries(labels[query_index], novel, figure_queries, gen).sort().values
        shown = shown[torch.argsort(labels[query_index][shown], stable=True)]
        m = min(figure_neighbours, k)
        near = neighbours[shown, :m]
        figure = collapse_figure(images[query_index[shown]], labels[query_index[shown]], images[near], labels[near],
                                 base, class_names, title)
    return result, figure
