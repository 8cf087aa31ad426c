"""Results on disk: one JSON record per protocol and, for ``all``, the papers-style summary.

``<out>/<protocol>-<data>.json`` holds a protocol's flat scores, metrics, info and timing (plus side
files such as ``semi_1pct-<data>-indices.json``); ``all`` adds ``summary-<data>.md`` / ``.json``.
Every file is written atomically (:func:`selfsup.io.write_json_atomic`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selfsup.data.sources import data_slug
from selfsup.evaluation.evaluator import Evaluator, ProtocolResult
from selfsup.evaluation.intervals import with_intervals
from selfsup.evaluation.options import check_protocol, protocol_slug
from selfsup.evaluation.tables import summary_markdown, summary_rows, summary_text
from selfsup.io import write_json_atomic, write_text_atomic

__all__ = ["evaluate_and_save"]


def _record(protocol: str, result: ProtocolResult, evaluator: Evaluator, run: str) -> dict[str, Any]:
    """The JSON record of one protocol: its data (the transfer / few-shot data where it has one) and scores."""
    data = result.info.get("transfer_data") or result.info.get("fewshot_data") or evaluator.setup.data
    split, _ = evaluator.split(data)
    return {"protocol": protocol, "data": data, "data_source": split.source, "run": run,
            "train_images": len(split.train), "test_images": len(split.test),
            **with_intervals(result.scores, len(split.test)),
            "metrics": result.metrics, "info": result.info, "seconds": result.info.get("seconds")}


def _save_protocol(name: str, result: ProtocolResult, evaluator: Evaluator, out_dir: Path,
                   run: str) -> dict[str, Any]:
    """Write ``<protocol>-<data>.json`` and its side files; return the record (with ``files``)."""
    record = _record(name, result, evaluator, run)
    stem = f"{protocol_slug(name)}-{data_slug(record['data'])}"
    for suffix, content in result.files.items():
        path = out_dir / f"{stem}-{suffix}.json"
        write_json_atomic(path, content)
        record.setdefault("files", []).append(str(path))
    write_json_atomic(out_dir / f"{stem}.json", record)
    return record


def evaluate_and_save(evaluator: Evaluator, protocol: str, out_dir: Any, run: str,
                      method: str = "learned") -> dict[str, Any]:
    """Run ``protocol`` (or ``all``), write ``out_dir/<protocol>-<data>.json`` (+ side files such as
    ``semi_1pct-<data>-indices.json``; ``all`` also ``summary-<data>.md`` / ``.json``), return the record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = check_protocol(protocol)
    start = time.perf_counter()
    results = evaluator.run_all() if protocol == "all" else {protocol: evaluator.run(protocol)}
    records = {name: _save_protocol(name, result, evaluator, out_dir, run) for name, result in results.items()}
    if protocol != "all":
        return records[protocol]
    return _save_summary(evaluator, results, records, out_dir, run, method, start)


def _summary_notes(evaluator: Evaluator, results: dict[str, ProtocolResult]) -> list[str]:
    """The summary's footnotes: data, baselines, epochs, few-shot and transfer settings."""
    data = evaluator.setup.data
    split, _ = evaluator.split(data)
    few = results["fewshot"].info
    transfer = results["transfer"].info
    return [
        f"Top-1 accuracy (%) on the {data} test split ({len(split.test)} images); labelled training pool: "
        f"{len(split.train)} images. Few-shot: mean ± 95% CI over {evaluator.options.episodes} episodes.",
        "supervised (from scratch): the same backbone trained with labels only; its kNN/linear cells are "
        "probes of its frozen features, its semi cells the random-init runs (fine-tuning a random-init "
        "encoder is supervised training from scratch, so the random-init fine-tune/semi cells are the same runs).",
        "Epochs (CPU-sized; the papers': linear-aug 80-100, semi 60 (1%) / 30 (10%)): " + ", ".join(
            f"{p} {r.info['settings']['epochs']}" for p, r in results.items() if "settings" in r.info)
        + "; SGD Nesterov 0.9, cosine, random resized crop + flip, no weight decay.",
        f"Few-shot: {few['ways']}-way, {few['queries']} queries per class, Prototypical Networks "
        f"({few['metric']} distance) on frozen features; classes {few['class_names']} of {few['fewshot_data']} "
        f"({few['fewshot_kind']}).",
        f"Transfer: {transfer['transfer_data']} ({transfer['adapted']}), linear probe on frozen features and "
        f"fine-tuning for {transfer['settings']['epochs']} epochs.",
    ]


def _save_summary(evaluator: Evaluator, results: dict[str, ProtocolResult], records: dict[str, dict[str, Any]],
                  out_dir: Path, run: str, method: str, start: float) -> dict[str, Any]:
    """Write ``summary-<data>.md`` / ``.json`` of ``all``; return the summary with ``files`` and ``text``."""
    data = evaluator.setup.data
    split, _ = evaluator.split(data)
    scores: dict[str, Any] = {}
    for name, r in results.items():  # each protocol's accuracies with their intervals on its own test split
        scores.update(with_intervals(r.scores, records[name]["test_images"]))
    o = evaluator.options
    notes = _summary_notes(evaluator, results)
    title = f"{method} on {evaluator.setup.run_data}, evaluated on {data}"
    markdown = summary_markdown(scores, title, method, notes, o.ways, o.shots)
    seconds = time.perf_counter() - start
    summary = {"protocol": "all", "data": data, "data_source": split.source, "run": run,
               "train_images": len(split.train), "test_images": len(split.test), **scores,
               "table": {name: cells for name, cells in summary_rows(scores, method, o.ways, o.shots)},
               "protocols": {name: {"seconds": r["seconds"], "data": r["data"], "info": r["info"]}
                             for name, r in records.items()},
               "notes": notes, "seconds": seconds}
    stem = f"summary-{data_slug(data)}"
    write_text_atomic(out_dir / f"{stem}.md", markdown)
    write_json_atomic(out_dir / f"{stem}.json", summary)
    summary["files"] = [str(out_dir / f"{stem}.md"), str(out_dir / f"{stem}.json")]
    summary["text"] = summary_text(scores, method, o.ways, o.shots)
    return summary
