"""``selfsup report`` and ``selfsup compare``: the sub-parsers and handlers ``selfsup.cli`` adds,
mirroring ``selfsup.api.report`` and ``selfsup.api.compare`` one to one."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from selfsup.api import compare, report
from selfsup.reporting.figures import EMBEDDINGS
from selfsup.reporting.plots import DEFAULT_COMPARE_METRICS


def add_parsers(sub: Any) -> None:
    """Add the ``report`` and ``compare`` sub-parsers to ``selfsup``'s sub-parser collection."""
    rp = sub.add_parser("report", help="plots and a self-contained HTML page for a run (RUN_DIR/report/)",
                        description="Write PNG plots of RUN_DIR/metrics.jsonl (loss, lr, tau, collapse monitors, "
                                    "online accuracy) into RUN_DIR/report/, and index.html: one shareable file "
                                    "with the settings, scores vs baselines, curves, a 2-D map of test "
                                    "embeddings, a nearest-neighbour retrieval grid and the augmentations.")
    rp.add_argument("run_dir")
    rp.add_argument("--html", action=argparse.BooleanOptionalAction, default=True,
                    help="also write index.html (needs the checkpoint and the data for the map and retrieval)")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--max-points", type=int, default=2000, help="test images in the 2-D map (default: 2000)")
    rp.add_argument("--max-gallery", type=int, default=10000,
                    help="training images searched for neighbours; 0: all (default: 10000)")
    rp.add_argument("--embedding", default="auto", choices=list(EMBEDDINGS),
                    help="auto: UMAP when umap-learn is installed, else t-SNE")
    rp.add_argument("--queries", type=int, default=8, help="retrieval queries (default: 8)")
    rp.add_argument("--neighbors", type=int, default=8, help="neighbours per query (default: 8)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    cp = sub.add_parser("compare", help="overlay several runs' curves in one PNG (an ablation in one picture)",
                        description="One panel per metric, one line per run, legend = run folder names. "
                                    "A star marks each run's final evaluation from summary.json.")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cp.add_argument("--out", required=True, help="output FILE.png")
    cp.add_argument("--metrics", default=None,
                    help=f"comma-separated metrics.jsonl keys (default: {','.join(DEFAULT_COMPARE_METRICS)})")
    cp.add_argument("--x", default="step", choices=["step", "epoch"], help="x axis (default: step)")


def _cmd_report(args: argparse.Namespace) -> int:
    result = report(args.run_dir, html=args.html, device=args.device, max_points=args.max_points,
                    max_gallery=args.max_gallery or None, embedding=args.embedding, queries=args.queries,
                    neighbors=args.neighbors, seed=args.seed, progress=args.progress)
    names = list(result.plots) + list(result.images)
    print(f"wrote {len(names)} plots to {result.directory}: {', '.join(f'{n}.png' for n in names)}")
    for note in result.notes:
        print(f"note: {note}")
    if result.html is not None:
        print(f"report: {result.html}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    result = compare(args.run_dirs, out=args.out, metrics=args.metrics, x=args.x)
    print(f"wrote {result.path}: {', '.join(result.metrics)} for {', '.join(result.labels)}")
    if result.skipped:
        print(f"note: not logged by these runs: {', '.join(result.skipped)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"report": _cmd_report, "compare": _cmd_compare}
