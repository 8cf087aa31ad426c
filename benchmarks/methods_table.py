"""Every registered method under BYOL's CPU protocol (issues 4 and 10); prints JSON, writes a table.

Each method runs ``benchmarks/byol_fmnist.py --method NAME`` in its own process (so peak memory
is that method's alone): Fashion-MNIST, ResNet-18 width 0.25, 10k images, 5 epochs, batch 256,
small-image recipe, kNN and linear top-1 on the 10k test images. Finished methods are kept in
``OUT/results.jsonl``, so an interrupted table continues where it stopped; ``OUT/table.md`` is
rewritten after each method.

    python benchmarks/methods_table.py [--methods byol,simclr,...] [--out runs/methods-table]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from selfsup.methods import METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from _common import comma_list  # noqa: E402

# Methods that cannot run the protocol as it stands: colorization needs colour images (the photos
# source, all 2,050 training crops), MAE a ViT (ViT-Tiny, patch 4). Their rows list their own floors.
PROTOCOL_ARGS: dict[str, list[str]] = {"colorization": ["--data", "photos", "--subset", "0"],
                                       "mae": ["--backbone", "vit_tiny"]}


def table(records: list[dict[str, Any]]) -> str:
    """Markdown, one row per method, then the random-init and raw-pixel floors of each data and backbone."""
    lines = ["| method | kNN top-1 | linear top-1 | images/s | peak memory (MB) | std x sqrt(d) | RankMe |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {100 * r['knn_top1']:.2f} | {100 * r['linear_top1']:.2f} | "
                     f"{r['images_per_second']:.0f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['final_std_scaled'] or float('nan'):.2f} | {r['final_rankme'] or float('nan'):.1f} |")
    protocols: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        protocols.setdefault((r.get("data", "fashion-mnist"), r.get("backbone", "resnet18")), r)
    for (data, backbone), r in protocols.items():
        where = "" if (data, backbone) == ("fashion-mnist", "resnet18") else f" ({data}, {backbone})"
        for name in ("random_init", "raw_pixels"):
            lines.append(f"| {name.replace('_', ' ')}{where} | {100 * r[f'{name}_knn_top1']:.2f} | "
                         f"{100 * r[f'{name}_linear_top1']:.2f} | - | - | - | - |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--out", default="runs/methods-table")
    args = parser.parse_args()
    methods = comma_list(parser, "--methods", args.methods, METHODS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {r["method"]: r for r in map(json.loads, results.read_text().splitlines())} if results.exists() else {}
    script = Path(__file__).with_name("byol_fmnist.py")
    for method in methods:
        if method in done:
            continue
        proc = subprocess.run([sys.executable, str(script), "--method", method, "--epochs", str(args.epochs),
                               "--subset", str(args.subset), "--out", str(out / method),
                               *PROTOCOL_ARGS.get(method, [])],
                              check=True, stdout=subprocess.PIPE, text=True)
        done[method] = json.loads(proc.stdout)
        with results.open("a") as f:
            f.write(json.dumps(done[method]) + "\n")
        (out / "table.md").write_text(table([done[m] for m in methods if m in done]))
        print(json.dumps({k: done[method][k] for k in ("method", "knn_top1", "linear_top1", "images_per_second")}),
              file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "methods_table", "results": [done[m] for m in methods]}, indent=2))


if __name__ == "__main__":
    main()
