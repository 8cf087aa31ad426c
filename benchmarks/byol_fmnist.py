"""BYOL on Fashion-MNIST under the CPU protocol; prints one JSON object.

Protocol (issue 2): ResNet-18 at width 0.25, small-image stem, 10,000 training images, 5 epochs,
batch 256; kNN (k=200, T=0.1) and linear top-1 on the 10,000 test images, against a random-init
encoder of the same architecture and raw pixels; images/s and peak memory.

    python benchmarks/byol_fmnist.py [--recipe small|paper] [--epochs 5] [--out runs/bench-byol]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Any

import torch

from selfsup.api import train

SUMMARY_KEYS = ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1", "raw_pixels_knn_top1",
                "raw_pixels_linear_top1", "images_per_second", "seconds", "peak_memory_mb", "device", "steps")


def run_protocol(method: str = "byol", recipe: str = "small", subset: int = 10000, epochs: int = 5,
                 batch_size: int = 256, width: float = 0.25, seed: int = 0, out: str = "runs/bench-byol-fmnist",
                 baselines: bool = True, data: str = "fashion-mnist", backbone: str = "resnet18") -> dict[str, Any]:
    """Train ``method`` under the CPU protocol and return the benchmark's JSON record (``data`` and
    ``backbone`` for the methods that need others: colour images, a ViT; ``subset`` 0: every image)."""
    summary = train(method=method, data=data, subset=subset or None, backbone=backbone, width=width,
                    epochs=epochs, batch_size=batch_size, recipe=recipe, seed=seed, out=out, overwrite=True,
                    progress=False, baselines=baselines)
    return {
        "method": method, "data": data, "backbone": backbone,
        "recipe": recipe, "subset": subset, "epochs": epochs, "batch_size": batch_size,
        "width": width, "seed": seed, **{k: summary[k] for k in SUMMARY_KEYS if k in summary},
        "final_std_scaled": summary["final_metrics"].get("std_scaled"),
        "final_rankme": summary["final_metrics"].get("rankme"),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "versions": summary["versions"],
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="byol")
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-byol-fmnist")
    parser.add_argument("--data", default="fashion-mnist")  # colorization: photos (with --subset 0)
    parser.add_argument("--backbone", default="resnet18")  # MAE: vit_tiny
    args = parser.parse_args()
    record = run_protocol(args.method, args.recipe, args.subset, args.epochs, args.batch_size, args.width,
                          args.seed, args.out, data=args.data, backbone=args.backbone)
    print(json.dumps({"benchmark": "byol_fmnist", **record,
                      "command": " ".join([sys.executable.split('/')[-1], *sys.argv])}, indent=2))


if __name__ == "__main__":
    main()
