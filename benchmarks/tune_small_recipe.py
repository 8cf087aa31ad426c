"""Measure small-image recipe candidates for a method: one JSON line per setting.

Each setting trains on a Fashion-MNIST subset (digits when absent) and reports kNN/linear top-1
against the random-init encoder of the same architecture.

    python benchmarks/tune_small_recipe.py --method byol --subset 5000 --epochs 5 --batch-size 128 \
        --grid '{"tau_base": [0.99, 0.97]}' '{"lr": [0.5, 2.0]}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile

from selfsup.api import train
from selfsup.data.sources import fashion_mnist_available


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="byol")
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="fashion-mnist or digits (default: fashion-mnist when present)")
    parser.add_argument("--grid", nargs="*", default=["{}"],
                        help="JSON objects of option -> list of values; each object is one grid")
    args = parser.parse_args()
    data = args.data or ("fashion-mnist" if fashion_mnist_available() else "digits")
    for grid in map(json.loads, args.grid):
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            options = dict(zip(keys, values))
            with tempfile.TemporaryDirectory() as tmp:
                settings = dict(method=args.method, data=data, subset=args.subset if data != "digits" else None,
                                backbone="resnet18", width=args.width, epochs=args.epochs,
                                batch_size=args.batch_size, seed=args.seed, out=tmp, overwrite=True,
                                progress=False)
                s = train(**{**settings, **options})
            print(json.dumps({"method": args.method, "data": data, "options": options,
                              **{k: round(s[k], 4) for k in ("knn_top1", "random_init_knn_top1", "linear_top1",
                                                             "random_init_linear_top1", "seconds")},
                              "std_scaled": round(s["final_metrics"].get("std_scaled", float("nan")), 3),
                              "rankme": round(s["final_metrics"].get("rankme", float("nan")), 1)}), flush=True)


if __name__ == "__main__":
    main()
