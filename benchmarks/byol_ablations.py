"""BYOL's ablation grid (Grill et al. 2020, Sec. 5 and Appendix F) at small scale; prints JSON.

Rows: baseline; no predictor; no stop-gradient; no EMA (tau = 0) with predictor learning-rate
multiplier lambda in {1, 2, 10}; fixed random target (tau = 1); beta = 1 (BYOL + NT-Xent);
encoder/head normalisation none and GroupNorm + Weight Standardisation; batch sizes 512 -> 32 for
BYOL and for the contrastive-only variant (beta term alone: SimCLR expressed by BYOL's switches);
augmentation removals. Each row is one training run on Fashion-MNIST (digits when absent) with the
BYOL small-image recipe and only that switch changed; the random-init encoder and raw pixels are
scored once. Writes ``results.jsonl`` (one line per finished row: an interrupted grid continues
where it stopped), ``table.md``, ``ablations.png`` (final kNN / linear per row) and
``curves.png`` (the std monitor and loss of the collapse-related rows) in ``--out``.

    python benchmarks/byol_ablations.py                   # CPU size: 5k images, 3 epochs, width 0.25, batch 128
    python benchmarks/byol_ablations.py --gpu             # 60k images, 50 epochs, width 1.0
    python benchmarks/byol_ablations.py --rows baseline,no_predictor
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from selfsup.api import compare, train
from selfsup.config import TrainConfig, resolve
from selfsup.data.sources import fashion_mnist_available
from selfsup.evaluation.baselines import baseline_scores
from selfsup.reporting.plots import figure_png
from selfsup.runs import channel_stats, load_split, random_init_encoder
from selfsup.train.distributed import pick_device

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from _common import comma_list  # noqa: E402

BATCH_SIZES = (512, 256, 128, 64, 32)
# The contrastive-only variant: no predictor, target = online network with gradients, the BYOL
# term weighted 0 and the NT-Xent term (beta) weighted 1 (the paper's SimCLR row in Table 5b).
CONTRASTIVE = {"predictor": False, "target": "none", "stop_gradient": False, "bootstrap_weight": 0.0,
               "negatives_beta": 1.0}


def grid(batch_size: int) -> dict[str, dict[str, Any]]:
    """Row name -> options changed from the baseline (``batch_size`` is the baseline's batch)."""
    rows: dict[str, dict[str, Any]] = {
        "baseline": {},
        "no_predictor": {"predictor": False},
        # the paper's row (Table 5b: predictor, no target network, beta 0): target = online, with gradient
        "no_stop_gradient": {"target": "none", "stop_gradient": False},
        "tau0_lambda1": {"target": "none", "predictor_lr_multiplier": 1.0},
        "tau0_lambda2": {"target": "none", "predictor_lr_multiplier": 2.0},
        "tau0_lambda10": {"target": "none", "predictor_lr_multiplier": 10.0},
        "fixed_random_target": {"tau_base": 1.0, "tau_schedule": False},
        "beta1": {"negatives_beta": 1.0},
        "norm_none": {"norm": "none"},
        "norm_groupnorm_ws": {"norm": "groupnorm_ws"},
    }
    for b in BATCH_SIZES:
        if b != batch_size:
            rows[f"batch{b}"] = {"batch_size": b}
    for b in BATCH_SIZES:
        rows[f"contrastive_batch{b}"] = {**CONTRASTIVE, "batch_size": b}
    # Omitted: grayscale removal (the identity on one-channel data) and blur removal (the small-image
    # recipe has no blur, as SimCLR's CIFAR recipe), whose runs would repeat the baseline.
    for name in ("jitter", "solarize", "crop_only"):
        rows[f"no_{name}" if name != "crop_only" else "crop_only"] = {"augment_off": name}
    return rows


def baselines(data: str, subset: int | None, width: float, seed: int) -> dict[str, float]:
    """Random-init encoder (the baseline's architecture) and raw pixels, scored once."""
    cfg = TrainConfig(method="byol", data=data, subset=subset, width=width, seed=seed, epochs=1, progress=False)
    split = load_split(cfg)
    resolved = resolve(cfg, split.train.images.shape[-1])
    mean, std = channel_stats(split)
    random_init = random_init_encoder(cfg, resolved, split.train.channels)
    return baseline_scores(random_init, split, resolved.image_size, mean, std, pick_device("auto"), cfg.seed)


def table(results: list[dict[str, Any]], base: dict[str, float]) -> str:
    """Markdown: one line per row, then the random-init and raw-pixel floors."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    def num(x: float | None, digits: int) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    lines = ["| row | changed | batch | steps | kNN | linear | std x sqrt(d) | RankMe | collapse warning |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        options = dict(r["options"])
        contrastive = all(options.get(k) == v for k, v in CONTRASTIVE.items())
        if contrastive:
            options = {k: v for k, v in options.items() if k not in CONTRASTIVE}
        changed = ", ".join(["contrastive only"] * contrastive + [f"{k}={v}" for k, v in options.items()]) or "-"
        lines.append(f"| {r['row']} | {changed} | {r['batch_size']} | {r['steps']} | {pct(r['knn_top1'])} | "
                     f"{pct(r['linear_top1'])} | {num(r['std_scaled'], 3)} | {num(r['rankme'], 1)} | "
                     f"{'yes' if r['collapsed'] else 'no'} |")
    for name in ("random_init", "raw_pixels"):
        lines.append(f"| {name.replace('_', ' ')} | - | - | - | {pct(base[f'{name}_knn_top1'])} | "
                     f"{pct(base[f'{name}_linear_top1'])} | - | - | - |")
    return "\n".join(lines) + "\n"


def bar_figure(results: list[dict[str, Any]], base: dict[str, float]) -> Figure:
    names = [r["row"] for r in results]
    fig = Figure(figsize=(9, 0.32 * len(names) + 1.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "knn_top1", "kNN top-1 (k=200, T=0.1)"), (axes[1], "linear_top1", "linear top-1")):
        values = [100 * r[key] for r in results]
        colours = ["#d62728" if r["collapsed"] else "#1f77b4" for r in results]
        ax.barh(range(len(names)), values, color=colours)
        ax.axvline(100 * base[f"random_init_{key}"], color="#555", ls="--", label="random-init encoder")
        ax.axvline(100 * base[f"raw_pixels_{key}"], color="#2ca02c", ls=":", label="raw pixels")
        ax.set_xlabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, 100)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    fig.suptitle("BYOL ablations (red: flagged collapsed by the std monitor)")
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPU-sized defaults: 60k images, 50 epochs, width 1.0")
    parser.add_argument("--subset", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--width", type=float)
    parser.add_argument("--batch-size", type=int, default=128, help="the baseline's batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", help="comma list of row names (default: all)")
    parser.add_argument("--out", default="runs/byol-ablations")
    args = parser.parse_args()
    subset = args.subset or (None if args.gpu else 5000)
    epochs = args.epochs or (50 if args.gpu else 3)
    width = args.width or (1.0 if args.gpu else 0.25)
    data = "fashion-mnist" if fashion_mnist_available() else "digits"
    subset = None if data == "digits" else subset
    rows = grid(args.batch_size)
    chosen = comma_list(parser, "--rows", args.rows, rows) if args.rows else list(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "baselines.json"
    if not base_path.exists():
        base_path.write_text(json.dumps(baselines(data, subset, width, args.seed), indent=2))
    base = json.loads(base_path.read_text())
    results_path = out / "results.jsonl"
    lines = results_path.read_text().splitlines() if results_path.exists() else []
    done = {r["row"]: r for r in map(json.loads, lines)}
    for name in chosen:
        if name in done:
            continue
        options = {"batch_size": args.batch_size, **rows[name]}
        started = time.time()
        s = train(method="byol", data=data, subset=subset, backbone="resnet18", width=width, epochs=epochs,
                  seed=args.seed, out=str(out / name), overwrite=True, progress=False, baselines=False, **options)
        final = s["final_metrics"]
        record = {"row": name, "options": rows[name], "batch_size": options["batch_size"], "steps": s["steps"],
                  "knn_top1": s["knn_top1"], "linear_top1": s["linear_top1"],
                  "std_scaled": final.get("std_scaled"), "rankme": final.get("rankme"),
                  "collapsed": bool(s["collapse_warning_steps"]),
                  "seconds": round(time.time() - started, 1)}
        with results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done[name] = record
        print(json.dumps(record), file=sys.stderr, flush=True)
    results = [done[n] for n in chosen]
    (out / "table.md").write_text(table(results, base))
    (out / "ablations.png").write_bytes(figure_png(bar_figure(results, base)))
    curve_rows = [n for n in ("baseline", "no_predictor", "no_stop_gradient", "tau0_lambda1", "tau0_lambda10",
                              "fixed_random_target") if n in chosen]
    if curve_rows:
        compare([out / n for n in curve_rows], out / "curves.png", metrics=["loss", "std_scaled", "rankme"])
    print(json.dumps({
        "benchmark": "byol_ablations", "data": data, "subset": subset, "epochs": epochs, "width": width,
        "baseline_batch_size": args.batch_size, "seed": args.seed, **base, "rows": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {'cuda' if torch.cuda.is_available() else 'cpu'}",
        "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
    }, indent=2))


if __name__ == "__main__":
    main()
