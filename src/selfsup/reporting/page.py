"""The run's ``index.html``: banners, then one section each for the scores, the ``eval/*.json``
results, the training curves, the collapse monitors, the representation figures and the settings.

Built from what ``report`` read and drew; the pieces of HTML come from ``reporting.html``.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

from selfsup.evaluation.baselines import BASELINES
from selfsup.reporting import html as H
from selfsup.reporting.figures import score_keys, score_name
from selfsup.reporting.plots import PANEL_GROUPS, read_json

__all__ = ["render_page"]

Section = tuple[str, str, str]  # (anchor, title, html body)

COLLAPSE_THRESHOLD = 0.1  # CollapseWatch's default: std x sqrt(d) below a tenth of isotropic
_RUN_KEYS = ("data_source", "train_images", "epochs", "batch_size", "steps", "seconds", "images_per_second",
             "device", "precision", "peak_memory_mb", "recipe", "skipped_files")
_REPRESENTATIONS = (  # (part name, anchor, title, alt text)
    ("embedding", "embedding", "Embedding map", "2-D map of test embeddings coloured by label"),
    ("retrieval", "retrieval", "Nearest neighbours", "retrieval grid: queries and nearest training images"),
    ("attention", "attention", "Attention maps", "ViT [CLS] attention maps per head"),
    ("views", "augmentations", "Augmentations", "training images and their augmented views"))
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


def render_page(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]],
                panels: dict[str, bytes], scores_png: bytes | None, parts: dict[str, tuple[bytes, str]],
                notes: list[str]) -> str:
    """The whole page. ``meta``: the parsed ``config.yaml`` (``{}`` when missing); ``panels``: the
    curve and monitor PNGs by panel name, in display order; ``parts``: ``{name: (png, caption html)}``
    of the representation figures; ``notes``: parts skipped and why."""
    sections = [_results_section(summary, scores_png), _evaluations_section(run_dir),
                *_panel_sections(panels, summary), *_representation_sections(parts)]
    if meta:
        sections.append(_settings_section(run_dir, meta))
    return H.page(f"selfsup report: {run_dir.resolve().name}", " · ".join(_facts(summary, meta)), sections,
                  footer=f"Written by selfsup from {run_dir.resolve()}. Self-contained: images are embedded.",
                  banners=_banners(summary, records, notes))


def _facts(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The subtitle: method, backbone × width, data, training length and when the page was made."""
    config = meta.get("config") or {}
    facts = [f"{summary.get('method') or config.get('method', '?')}",
             f"{summary.get('backbone') or config.get('backbone', '?')} "
             f"× {summary.get('width') or config.get('width', '?')}",
             f"data {summary.get('data') or config.get('data', '?')}"]
    if summary.get("steps") is not None:
        facts.append(f"{summary.get('epochs')} epochs, {summary['steps']} steps in "
                     f"{summary.get('seconds', 0):.0f} s on {summary.get('device', '?')}")
    facts.append(f"report generated {_dt.datetime.now():%Y-%m-%d %H:%M}")
    return facts


def _banners(summary: dict[str, Any], records: list[dict[str, Any]], notes: list[str]) -> list[tuple[str, str]]:
    """Warnings above the contents: a collapsed encoder, one no better than random init, skipped parts."""
    banners: list[tuple[str, str]] = []
    last_std = next((r["std_scaled"] for r in reversed(records) if isinstance(r.get("std_scaled"), (int, float))),
                    None)
    if last_std is not None and (not math.isfinite(last_std) or last_std < COLLAPSE_THRESHOLD):
        banners.append(("bad", f"Representation collapse: the last logged std × √d is {last_std:.3f} "
                               f"(healthy ≈ 1, collapsed 0). Scores below describe a collapsed encoder."))
    learned, rand = summary.get("knn_top1"), summary.get("random_init_knn_top1")
    if isinstance(learned, (int, float)) and isinstance(rand, (int, float)) and learned <= rand:
        banners.append(("note", f"The learned encoder does not beat a random-init encoder on kNN "
                                f"({100 * learned:.2f}% vs {100 * rand:.2f}%): train longer or check the "
                                "collapse monitors before trusting this representation."))
    banners.extend(("note", n) for n in notes)
    return banners


def _results_section(summary: dict[str, Any], scores_png: bytes | None) -> Section:
    body = _scores_table(summary) if summary else "<p>No summary.json yet (training not finished).</p>"
    if scores_png:
        body += H.img(scores_png, "bar chart of learned vs random-init vs raw-pixel accuracy")
    if summary:
        body += "<h3>Run</h3>" + H.key_value_table({k: summary[k] for k in _RUN_KEYS if k in summary},
                                                   ("", "value"))
    return ("results", "Results", "<p>Top-1 accuracy of frozen features on the test split: the learned "
            "encoder beside a random-init encoder of the same architecture and raw pixels.</p>" + body)


def _evaluations_section(run_dir: Path) -> Section:
    """One scores table per ``eval/*.json`` (what ``selfsup eval`` writes)."""
    evals = _eval_files(run_dir)
    if not evals:
        return ("evaluations", "Evaluations (eval/)", "<p>No <code>selfsup eval</code> results in eval/ yet.</p>")
    body = ""
    for name, ev in evals:
        head = (f"{ev.get('protocol', '?')} on {ev.get('data', '?')} "
                f"({ev.get('test_images', '?')} test images, {ev.get('train_images', '?')} train images)")
        body += f"<h3>{H.esc(name)}: {H.esc(head)}</h3>" + _scores_table(ev)
        if ev.get("data_source"):
            body += f"<p class=\"sub\">data: {H.esc(ev['data_source'])}</p>"
    return ("evaluations", "Evaluations (eval/)", body)


def _panel_sections(panels: dict[str, bytes], summary: dict[str, Any]) -> list[Section]:
    """The training curves, then the collapse monitors with their last logged values."""
    sections = []
    for group, title, intro in (("curves", "Training curves", ""), ("monitors", "Collapse monitors", _MONITOR_TEXT)):
        figs = [H.img(png, f"{name} plot", wide=name == "alignment_uniformity")
                for name, png in panels.items() if PANEL_GROUPS.get(name) == group]
        if not figs:
            sections.append((group, title, "<p>Nothing logged yet.</p>"))
            continue
        body = intro + f'<div class="grid">{"".join(figs)}</div>'
        if group == "monitors" and summary.get("final_metrics"):
            last = {k: v for k, v in summary["final_metrics"].items() if k not in ("step", "epoch")}
            body += "<h3>Last logged values</h3>" + H.key_value_table(last, ("metric", "value"))
        sections.append((group, title, body))
    return sections


def _representation_sections(parts: dict[str, tuple[bytes, str]]) -> list[Section]:
    return [(anchor, title, H.img(parts[name][0], alt, parts[name][1]))
            for name, anchor, title, alt in _REPRESENTATIONS if name in parts]


def _settings_section(run_dir: Path, meta: dict[str, Any]) -> Section:
    """The configuration as given and as resolved, the data, the package versions and config.yaml."""
    body = '<div class="cols"><div><h3>As given</h3>' + H.key_value_table(_flatten(meta.get("config") or {}))
    body += "</div><div><h3>Resolved</h3>" + H.key_value_table(_flatten(meta.get("resolved") or {})) + "</div>"
    body += "<div><h3>Data</h3>" + H.key_value_table(meta.get("data") or {}, ("", "value"))
    body += "<h3>Versions</h3>" + H.key_value_table(meta.get("versions") or {}, ("package", "version"))
    body += "</div></div>"
    config_text = H.esc((run_dir / "config.yaml").read_text())
    body += f"<details><summary>config.yaml</summary><pre>{config_text}</pre></details>"
    return ("settings", "Settings (config.yaml)", body)


def _scores_table(scores: dict[str, Any]) -> str:
    """Learned, random-init and raw-pixel score side by side, and the gain over random init."""
    keys = score_keys(scores)
    if not keys:
        return "<p>No scores (the run was trained without --eval-after, or its data has no labels).</p>"
    floors = [(prefix, name) for prefix, name in BASELINES if any(prefix + key in scores for key in keys)]
    rows, classes = [], []
    for key in keys:
        learned = scores.get(key)
        strongest = max((v for p, _ in floors if p != "raw_pixels_" and isinstance(v := scores.get(p + key), float)),
                        default=None)
        delta = learned - strongest if strongest is not None else None
        rows.append((score_name(key), H.fmt(learned, True), *(H.fmt(scores.get(p + key), True) for p, _ in floors),
                     "–" if delta is None else f"{100 * delta:+.2f} pts"))
        classes.append(("", "num", *("num" for _ in floors),
                        "num" + ("" if delta is None else " good" if delta > 0 else " bad")))
    header = ("metric", "learned", *(name for _, name in floors), "learned − strongest random init")
    return H.table(header, rows, classes)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _eval_files(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, read_json(path, {"error": "unreadable JSON"}))
            for path in sorted((run_dir / "eval").glob("*.json"))]
