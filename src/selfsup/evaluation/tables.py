"""Result tables: one protocol's scores per encoder, and the papers-style summary of ``all``.

Cells are top-1 accuracies in % (two decimals) with their 95% Wilson interval ``(low-high)`` over the
test images; few-shot cells are ``mean ± 95% CI`` over the episodes. The summary's rows follow the
self-supervised papers' tables: supervised from scratch, random init (the run's init, and the
framework's default init when it differs), raw pixels, then the learned encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from selfsup.evaluation.baselines import BASELINES

__all__ = ["PREFIXES", "aligned_table", "format_result", "columns", "COLUMNS", "summary_rows", "summary_markdown",
           "summary_text"]

PREFIXES: tuple[tuple[str, str], ...] = (("", "learned"), *BASELINES, ("supervised_", "supervised"))


def aligned_table(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: left-aligned columns two spaces apart, a dashed rule under the first row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(value: Any, ci: Any = None) -> str:
    """``62.30`` with its interval: ``± 1.20`` (a half-width) or ``(61.35-63.25)`` (``[low, high]``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "-"
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{100 * value:.2f} ({100 * ci[0]:.2f}-{100 * ci[1]:.2f})"
    return f"{100 * value:.2f}" + (f" ± {100 * ci:.2f}" if isinstance(ci, (int, float)) else "")


def format_result(result: dict[str, Any]) -> str:
    """A plain-text table of one protocol's result: one row per metric, one column per encoder (in %)."""
    metrics = result.get("metrics", [])
    cols = [(p, name) for p, name in PREFIXES if any(p + m in result for m in metrics)]
    rows = [["metric (%)"] + [name for _, name in cols]]
    for m in metrics:
        rows.append([m] + [_pct(result.get(p + m), result.get(p + m + "_ci95")) for p, _ in cols])
    return aligned_table(rows)


# Summary columns: (title, score key). The supervised row takes its fine-tune cell from
# ``supervised_top1`` and its semi cells from the random-init (= from-scratch) runs.
def columns(ways: int = 5, shots: Sequence[int] = (1, 5)) -> list[tuple[str, str]]:
    """The summary's columns ``(title, score key)`` for ``ways``-way episodes with ``shots``."""
    return [("kNN", "knn_top1"), ("linear", "linear_top1"), ("linear-aug", "linear_aug_top1"),
            ("fine-tune", "finetune_top1"), ("semi 1%", "semi_1pct_top1"), ("semi 10%", "semi_10pct_top1"),
            *((f"{ways}-way {k}-shot", f"fewshot_{ways}way_{k}shot") for k in shots),
            ("transfer linear", "transfer_linear_top1"), ("transfer fine-tune", "transfer_finetune_top1")]


COLUMNS: tuple[tuple[str, str], ...] = tuple(columns())


def summary_rows(scores: dict[str, Any], method: str = "learned", ways: int = 5,
                 shots: Sequence[int] = (1, 5)) -> list[tuple[str, dict[str, str]]]:
    """Rows ``(name, {column title: cell})`` of the papers-style table (top-1 %, few-shot mean ± CI)."""
    supervised = {"knn_top1": "supervised_knn_top1", "linear_top1": "supervised_linear_top1",
                  "finetune_top1": "supervised_top1", "semi_1pct_top1": "random_init_semi_1pct_top1",
                  "semi_10pct_top1": "random_init_semi_10pct_top1"}
    rows = []
    floors = [(name, lambda k, p=prefix: p + k) for prefix, name in BASELINES
              if prefix != "random_default_init_" or any(key.startswith(prefix) for key in scores)]
    for name, lookup in (("supervised (from scratch)", lambda k: supervised.get(k)), *floors,
                         (method, lambda k: k)):
        cells = {}
        for title, key in columns(ways, shots):
            full = lookup(key)
            cells[title] = _pct(scores.get(full), scores.get(f"{full}_ci95")) if full else "-"
        rows.append((name, cells))
    return rows


def summary_markdown(scores: dict[str, Any], title: str, method: str = "learned",
                     notes: Sequence[str] = (), ways: int = 5, shots: Sequence[int] = (1, 5)) -> str:
    """The summary as a Markdown table (rows: supervised, random init, raw pixels, learned)."""
    rows = summary_rows(scores, method, ways, shots)
    titles = [t for t, _ in columns(ways, shots)]
    lines = [f"### {title}", "", "| " + " | ".join(["", *titles]) + " |", "|" + "---|" * (len(titles) + 1)]
    for name, cells in rows:
        lines.append("| " + " | ".join([name, *(cells[t] for t in titles)]) + " |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def summary_text(scores: dict[str, Any], method: str = "learned", ways: int = 5,
                 shots: Sequence[int] = (1, 5)) -> str:
    """The summary as an aligned plain-text table (for the terminal)."""
    rows = summary_rows(scores, method, ways, shots)
    titles = [t for t, _ in columns(ways, shots)]
    return aligned_table([["", *titles]] + [[name, *(c[t] for t in titles)] for name, c in rows])
