"""Training curves and collapse monitors from ``metrics.jsonl``, one PNG per panel, and the
overlay of several runs (``selfsup compare``).

Only :class:`matplotlib.figure.Figure` is used (no pyplot): no global backend state, Agg
rendering, safe in threads and in test processes. Every panel has a title, axis labels with
units, a grid, and a step axis at the bottom with the matching epoch axis on top.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "read_metrics", "read_summary", "read_json", "is_score", "metric_series", "plot_run", "write_run_plots",
    "figure_png", "write_png", "compare_figure", "write_compare", "run_labels", "CompareResult",
    "DEFAULT_COMPARE_METRICS",
]

DEFAULT_COMPARE_METRICS = ("loss", "std_scaled", "rankme", "knn_top1")
DPI = 110
_HEALTHY, _COLLAPSED, _WARN = "#2ca02c", "#d62728", "#ff7f0e"


# ----------------------------------------------------------------------------------- reading

def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (or of the run folder holding one), in file order.

    Blank or truncated lines (a run killed mid-write) are skipped rather than failing the report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_json(path: str | Path, unreadable: Any) -> Any:
    """The parsed JSON file, or ``unreadable`` when it is missing or not valid JSON (a run killed
    mid-write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return unreadable


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run folder, or ``{}`` when the run has none (yet)."""
    return read_json(Path(run_dir) / "summary.json", {})


def is_score(key: str) -> bool:
    """Whether ``key`` names a top-1 or top-5 accuracy (drawn in %)."""
    return key.endswith(("_top1", "_top5"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_series(records: Iterable[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the records that log ``key`` with a finite value, sorted by ``x``."""
    pairs = sorted((float(r[x]), float(r[key])) for r in records
                   if _finite(r.get(key)) and _finite(r.get(x)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _logged_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if _finite(v):
                keys.setdefault(k, None)
    return list(keys)


def _steps_per_epoch(records: Sequence[dict[str, Any]]) -> float | None:
    for r in reversed(records):
        if _finite(r.get("epoch")) and r["epoch"] > 0 and _finite(r.get("step")):
            return float(r["step"]) / float(r["epoch"])
    return None


# ----------------------------------------------------------------------------------- drawing

def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Render ``fig`` into the PNG file ``path`` (its folder created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(fig, dpi=dpi))
    return path


def _style(ax, title: str, ylabel: str, xlabel: str = "training step (optimiser updates)") -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(True, alpha=0.35, linewidth=0.6)
    ax.tick_params(labelsize=8)


def _epoch_axis(ax, steps_per_epoch: float | None) -> None:
    """A secondary x axis on top, in epochs, for step-indexed panels."""
    if not steps_per_epoch:
        return
    spe = float(steps_per_epoch)
    top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch", fontsize=8)
    top.tick_params(labelsize=7)


def _line(ax, xs, ys, label: str | None = None, **kw):
    marker = "o" if len(xs) <= 40 else None
    return ax.plot(xs, ys, marker=marker, markersize=3.5, linewidth=1.6, label=label, **kw)


def _pct(values: Sequence[float]) -> list[float]:
    return [100.0 * v for v in values]


def _series_axes(fig: Figure, records: list[dict[str, Any]], key: str, color: str) -> tuple[Axes, list[float]]:
    """The figure's one axes with the ``key`` curve drawn on it; returns the axes and the values."""
    ax = fig.subplots()
    xs, ys = metric_series(records, key)
    _line(ax, xs, ys, color=color)
    return ax, ys


@dataclass
class _Panel:
    """One PNG of ``selfsup report``: which record keys it needs and how to draw them (``plot_run``
    then puts the epoch axis on top of every axes drawn)."""

    name: str
    group: str  # "curves" or "monitors": where the HTML page puts it
    needs: Callable[[list[str]], bool]
    draw: Callable[[Figure, list[dict[str, Any]], dict[str, Any], dict[str, Any]], None]
    size: tuple[float, float] = (6.4, 3.8)


def _loss_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k.endswith("_loss")]


def _draw_loss(fig, records, summary, ctx):
    ax = fig.subplots()
    xs, ys = metric_series(records, "loss")
    _line(ax, xs, ys, label="loss (mean over the steps since the last log)", color="C0")
    for i, key in enumerate(k for k in _loss_keys(_logged_keys(records)) if k != "loss"):
        kx, ky = metric_series(records, key)
        _line(ax, kx, ky, label=f"{key} (last batch)", color=f"C{i + 1}", alpha=0.7, linestyle="--")
    _style(ax, f"Training loss{ctx['suffix']}", "loss (method's objective, unitless)")
    ax.legend(fontsize=8)


def _draw_lr(fig, records, summary, ctx):
    ax, _ = _series_axes(fig, records, "lr", "C0")
    _style(ax, f"Learning rate (warm-up + cosine){ctx['suffix']}", "learning rate (per step)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylim(bottom=0)


def _draw_tau(fig, records, summary, ctx):
    ax, _ = _series_axes(fig, records, "tau", "C4")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="τ = 1 (target frozen)")
    _style(ax, f"Target-network EMA momentum τ{ctx['suffix']}", "τ (fraction kept per step)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend(fontsize=8, loc="lower right")


def _draw_std(fig, records, summary, ctx):
    ax = fig.subplots()
    xs, ys = metric_series(records, "std_scaled")
    top = max([1.15] + [1.05 * y for y in ys])
    ax.axhspan(-0.05, 0.1, color=_COLLAPSED, alpha=0.08, label="< 0.1: collapse warning")
    ax.axhline(1.0, color=_HEALTHY, linestyle="--", linewidth=1.2, label="≈ 1: healthy (isotropic)")
    ax.axhline(0.0, color=_COLLAPSED, linestyle="--", linewidth=1.2, label="0: collapsed (one point)")
    _line(ax, xs, ys, color="C0", label="std of L2-normalised projections × √d")
    ax.set_ylim(-0.05, top)
    _style(ax, f"Collapse monitor: normalised std × √d{ctx['suffix']}", "std × √d (unitless)")
    ax.legend(fontsize=7.5, loc="best")


def _draw_rankme(fig, records, summary, ctx):
    ax, ys = _series_axes(fig, records, "rankme", "C2")
    ax.axhline(1.0, color=_COLLAPSED, linestyle="--", linewidth=1.2, label="1: rank-one (collapsed)")
    ax.set_ylim(bottom=0, top=max([2.0] + [1.1 * y for y in ys]))
    _style(ax, f"RankMe: effective rank of the projections{ctx['suffix']}", "effective rank (dimensions)")
    ax.legend(fontsize=8, loc="lower right")


def _draw_align_unif(fig, records, summary, ctx):
    axes = fig.subplots(1, 2)
    xs, ys = metric_series(records, "alignment")
    _line(axes[0], xs, ys, color="C1")
    axes[0].set_ylim(bottom=0)
    _style(axes[0], "Alignment (lower: views closer)", "E‖z₁ − z₂‖² (unit sphere, 0 to 4)")
    xs, ys = metric_series(records, "uniformity")
    _line(axes[1], xs, ys, color="C5")
    axes[1].axhline(0.0, color=_COLLAPSED, linestyle="--", linewidth=1.2, label="0: collapsed")
    axes[1].set_ylim(top=0.3)
    _style(axes[1], "Uniformity (lower: more spread out)", "log E exp(−2‖zᵢ − zⱼ‖²) (nats)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Alignment and uniformity (Wang & Isola 2020){ctx['suffix']}", fontsize=11)


def _draw_cosine(fig, records, summary, ctx):
    ax, ys = _series_axes(fig, records, "cosine", "C3")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="1: identical outputs")
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=0.8, label="0: unrelated")
    ax.set_ylim(min([-0.05] + [y - 0.05 for y in ys]), 1.05)
    _style(ax, f"Cosine similarity of the two views' outputs{ctx['suffix']}", "mean cosine (−1 to 1)")
    ax.legend(fontsize=8, loc="lower right")


def _accuracy_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k.endswith("_top1")]


def _draw_accuracy(fig, records, summary, ctx):
    ax = fig.subplots()
    keys = _accuracy_keys(_logged_keys(records))
    for i, key in enumerate(keys):
        xs, ys = metric_series(records, key)
        _line(ax, xs, _pct(ys), label=f"{key} (during training)", color=f"C{i}")
        final = summary.get(key)
        if _finite(final) and xs:
            ax.plot([xs[-1]], [100 * final], marker="*", markersize=11, color=f"C{i}", linestyle="none",
                    label=f"{key} final evaluation (summary.json)")
        for prefix, style in (("random_init_", "--"), ("raw_pixels_", ":")):
            base = summary.get(prefix + key)
            if _finite(base):
                ax.axhline(100 * base, color=f"C{i}", linestyle=style, linewidth=1, alpha=0.8,
                           label=f"{prefix.rstrip('_').replace('_', ' ')} {key} (baseline)")
    if ctx.get("classes"):
        ax.axhline(100.0 / ctx["classes"], color="gray", linestyle="-.", linewidth=1,
                   label=f"chance (1/{ctx['classes']})")
    ax.set_ylim(0, 100)
    _style(ax, f"Online accuracy during training{ctx['suffix']}", "top-1 accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")


def _draw_throughput(fig, records, summary, ctx):
    ax, _ = _series_axes(fig, records, "images_per_second", "C7")
    ax.set_ylim(bottom=0)
    _style(ax, f"Training throughput{ctx['suffix']}", "images / second")


def _has(*names: str) -> Callable[[list[str]], bool]:
    return lambda keys: any(n in keys for n in names)


PANELS: tuple[_Panel, ...] = (
    _Panel("loss", "curves", _has("loss"), _draw_loss),
    _Panel("accuracy", "curves", lambda keys: bool(_accuracy_keys(keys)), _draw_accuracy),
    _Panel("lr", "curves", _has("lr"), _draw_lr),
    _Panel("tau", "curves", _has("tau"), _draw_tau),
    _Panel("throughput", "curves", _has("images_per_second"), _draw_throughput),
    _Panel("std_scaled", "monitors", _has("std_scaled"), _draw_std),
    _Panel("rankme", "monitors", _has("rankme"), _draw_rankme),
    _Panel("alignment_uniformity", "monitors", _has("alignment", "uniformity"), _draw_align_unif,
           size=(9.6, 3.8)),
    _Panel("cosine", "monitors", _has("cosine"), _draw_cosine),
)
PANEL_GROUPS = {p.name: p.group for p in PANELS}


def plot_run(records: Sequence[dict[str, Any]], summary: dict[str, Any] | None = None,
             title: str = "", classes: int | None = None) -> dict[str, Figure]:
    """One figure per panel whose metrics the records log, keyed by panel name (in display order)."""
    records = list(records)
    summary = summary or {}
    keys = _logged_keys(records)
    ctx = {"spe": _steps_per_epoch(records), "suffix": f" — {title}" if title else "", "classes": classes}
    figures: dict[str, Figure] = {}
    for panel in PANELS:
        if not panel.needs(keys):
            continue
        fig = Figure(figsize=panel.size, layout="constrained")
        panel.draw(fig, records, summary, ctx)
        for ax in list(fig.axes):
            _epoch_axis(ax, ctx["spe"])
        figures[panel.name] = fig
    return figures


def write_run_plots(run_dir: str | Path, out_dir: str | Path | None = None,
                    classes: int | None = None) -> dict[str, Path]:
    """Write ``<panel>.png`` for each panel the run logs into ``out_dir`` (default RUN_DIR/report)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_metrics(run_dir)
    written: dict[str, Path] = {}
    for name, fig in plot_run(records, read_summary(run_dir), title=run_dir.name, classes=classes).items():
        written[name] = write_png(fig, out_dir / f"{name}.png")
    return written


# ----------------------------------------------------------------------------------- compare

_COMPARE_LABELS = {
    "loss": ("Training loss", "loss (unitless)"),
    "lr": ("Learning rate", "learning rate (per step)"),
    "tau": ("EMA momentum τ", "τ"),
    "std_scaled": ("Collapse monitor: std × √d", "std × √d (1 healthy, 0 collapsed)"),
    "std": ("Normalised std", "std (unitless)"),
    "rankme": ("RankMe effective rank", "effective rank (dimensions)"),
    "alignment": ("Alignment", "E‖z₁ − z₂‖²"),
    "uniformity": ("Uniformity", "log E exp(−2‖zᵢ − zⱼ‖²)"),
    "cosine": ("View cosine similarity", "mean cosine"),
    "images_per_second": ("Throughput", "images / second"),
}


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend names: the run folder names, lengthened with parent folders only where they clash."""
    paths = [Path(p).resolve() for p in run_dirs]
    depth = [1] * len(paths)
    for _ in range(8):
        labels = ["/".join(p.parts[-d:]) for p, d in zip(paths, depth)]
        clashes = {lab for lab in labels if labels.count(lab) > 1}
        if not clashes:
            return labels
        depth = [d + 1 if lab in clashes else d for lab, d in zip(labels, depth)]
    return [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]


@dataclass
class CompareResult:
    """What ``compare`` drew: the PNG, the legend labels (one per run), the panels."""

    path: Path | None
    labels: list[str]
    metrics: list[str]
    skipped: list[str] = field(default_factory=list)  # default metrics no run has
    figure: Figure | None = None


def compare_figure(runs: Sequence[tuple[str, list[dict[str, Any]], dict[str, Any]]],
                   metrics: Sequence[str], x: str = "step") -> Figure:
    """One panel per metric, one line per run (same colour in every panel), one shared legend.

    ``runs`` holds ``(label, records, summary)``. Accuracy metrics (``*_top1``) are drawn in %;
    a run's final evaluation from ``summary.json`` is marked with a star at its last step, so
    ``knn_top1`` shows even for runs that did not log it during training.
    """
    metrics = list(metrics)
    ncols = 1 if len(metrics) == 1 else 2
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(6.0 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xlabel = "training step (optimiser updates)" if x == "step" else "epoch"
    handles = {}
    for ax, key in zip(axes, metrics):
        accuracy = is_score(key)
        scale = 100.0 if accuracy else 1.0
        drawn = starred = False
        for i, (label, records, summary) in enumerate(runs):
            color = f"C{i % 10}"
            xs, ys = metric_series(records, key, x=x)
            if xs:
                (h,) = _line(ax, xs, [scale * y for y in ys], color=color)
                handles.setdefault(label, h)
                drawn = True
            final = summary.get(key)
            if _finite(final):
                end = [float(r[x]) for r in records if _finite(r.get(x))]
                fx = max(end) if end else float(summary.get("steps" if x == "step" else "epochs", 0))
                (h,) = ax.plot([fx], [scale * final], marker="*", markersize=12, color=color,
                               linestyle="none", markeredgecolor="black", markeredgewidth=0.5)
                handles.setdefault(label, h)
                drawn = starred = True
        title, ylabel = _COMPARE_LABELS.get(key, (key, key))
        if accuracy:
            title = f"{key} (★ = final evaluation)" if starred else key
            ylabel = f"top-{key[-1]} accuracy (%)"
        if key == "std_scaled":
            ax.axhline(1.0, color=_HEALTHY, linestyle="--", linewidth=1)
            ax.axhline(0.0, color=_COLLAPSED, linestyle="--", linewidth=1)
        if not drawn:
            ax.text(0.5, 0.5, f"{key}: not logged by these runs", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")
        _style(ax, title, ylabel, xlabel=xlabel)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    labels = [r[0] for r in runs]
    fig.legend([handles[lab] if lab in handles else _blank(axes[0], i) for i, lab in enumerate(labels)], labels,
               loc="outside upper center", ncols=min(len(labels), 4), fontsize=9, title="run",
               title_fontsize=9)
    return fig


def _blank(ax, i: int):
    """A legend handle for a run with nothing to draw, in its colour."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=f"C{i % 10}", linewidth=1.6)


def _available(records: list[dict[str, Any]], summary: dict[str, Any]) -> set[str]:
    scores = {k for k, v in summary.items() if _finite(v) and is_score(k)}
    return (set(_logged_keys(records)) - {"step", "epoch"}) | scores


def write_compare(run_dirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | None = None,
                  x: str = "step") -> CompareResult:
    """Overlay ``metrics`` of several runs in one PNG at ``out``.

    With ``metrics=None`` the defaults (loss, std_scaled, rankme, knn_top1) that some run has are
    drawn; an explicitly requested metric that no run has raises ``ValueError`` naming the
    available ones. A folder without ``metrics.jsonl`` raises ``FileNotFoundError``.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}")
    runs = []
    for label, run_dir in zip(run_labels(run_dirs), run_dirs):
        if not (Path(run_dir) / "metrics.jsonl").exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no metrics.jsonl)")
        runs.append((label, read_metrics(run_dir), read_summary(run_dir)))
    available = set().union(*(_available(r, s) for _, r, s in runs))
    if metrics is None:
        chosen = [m for m in DEFAULT_COMPARE_METRICS if m in available]
        skipped = [m for m in DEFAULT_COMPARE_METRICS if m not in available]
    else:
        chosen = [m.strip() for m in metrics if m.strip()]
        missing = [m for m in chosen if m not in available]
        if missing or not chosen:
            plottable = sorted(available)
            raise ValueError(f"metric(s) {', '.join(missing) or '(none)'} not in any of these runs; "
                             f"available: {', '.join(plottable)}")
        skipped = []
    if not chosen:
        raise ValueError("none of the default metrics is logged by these runs")
    fig = compare_figure(runs, chosen, x=x)
    return CompareResult(write_png(fig, out), [r[0] for r in runs], chosen, skipped, fig)
