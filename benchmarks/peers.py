"""selfsup against lightly (LightlySSL): the same work in both libraries, alternating in one run.

For each method (BYOL, SimCLR) both libraries train the same network -- ResNet-18 with the
small-image stem (3x3 conv, stride 1, no max-pool) at width 0.25, built by
``selfsup.models.build_backbone`` for both -- on the same images (Fashion-MNIST resized to 32 px),
with the same batch size and the same number of steps. Each library does the rest as its users
would:

* **selfsup**: ``selfsup.train.loop.fit`` with the settings ``selfsup train`` resolves for this
  data (the small-image recipe: views, heads, optimiser, schedule, initialisation), augmentation
  in batches on the device. The online probe is off: lightly's loop has none.
* **lightly**: the loop of its examples (``examples/pytorch/byol.py``, ``simclr.py``): its
  transforms per PIL image in a ``torch.utils.data.DataLoader`` (``BYOLTransform`` with
  ``BYOLView1Transform`` / ``BYOLView2Transform``, ``SimCLRTransform``; ``input_size=32``,
  ``gaussian_blur=0`` as its CIFAR-10 benchmark, normalised with the data's own mean and std), its
  heads (``BYOLProjectionHead`` / ``BYOLPredictionHead`` 1024 -> 256, ``SimCLRProjectionHead`` to
  128), its losses (``NegativeCosineSimilarity``, ``NTXentLoss``), ``update_momentum`` with
  ``cosine_schedule(0.99 -> 1)``, and the optimiser of its CIFAR-10 benchmark (SGD, lr 0.06 x
  batch/128, momentum 0.9, weight decay 5e-4, cosine annealing). Its backbone keeps torchvision's
  initialisation, as ``torchvision.models.resnet18()`` in its examples.

The two alternate epoch by epoch in one process (selfsup epoch 1, lightly epoch 1, selfsup epoch
2, ...: lightly's epoch runs inside selfsup's end-of-epoch hook and is not counted in selfsup's
time), so load on a shared machine falls on both alike. Images per second is the median over
epochs ("rounds"); ``ratio`` is the median of the per-round ratios selfsup / lightly. Each epoch
of lightly starts its DataLoader workers, as its examples do (no persistent workers).

Without ``--epochs`` a round is ``--steps`` steps (speed only); with ``--epochs`` each round is an
epoch over ``--subset`` images and both encoders are then scored by the same selfsup code
(``selfsup.evaluation.frozen.evaluate_encoder``: weighted kNN and the linear probe on frozen
features of the training subset and the 10,000 test images).

    python benchmarks/peers.py --steps 10 --rounds 4                     # speed, both methods
    python benchmarks/peers.py --subset 20000 --epochs 5 --batch-size 256 --out peers.json
    python benchmarks/peers.py --smoke                                   # seconds, CI-sized

lightly is an optional dependency: ``pip install 'selfsup[bench]'`` (or ``pip install lightly``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.config import TrainConfig, resolve
from selfsup.data.dataset import DataSplit
from selfsup.evaluation.frozen import evaluate_encoder
from selfsup.models import build_backbone
from selfsup.runs import build_method, channel_stats, load_split, training_views, versions
from selfsup.runs.train import loop_settings
from selfsup.train import distributed as dist_train
from selfsup.train.loop import default_channels_last, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import comma_list  # noqa: E402

METHODS = ("byol", "simclr")
LIBRARIES = ("selfsup", "lightly")
DEFAULTS = {"data": "fashion-mnist", "subset": None, "image_size": 32, "width": 0.25, "batch_size": 256,
            "steps": 10, "rounds": 4, "num_workers": 1, "threads": 1}
SMOKE = {"data": "digits", "subset": None, "image_size": 16, "width": 0.0625, "batch_size": 16, "steps": 2,
         "rounds": 2, "num_workers": 0, "threads": 1}
LIGHTLY_BYOL_HEADS = (1024, 256)  # lightly's examples: BYOLProjectionHead(d, 1024, 256), BYOLPredictionHead
LIGHTLY_SIMCLR_OUT = 128  # SimCLRProjectionHead(d, d, 128)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list out of {', '.join(METHODS)}")
    p.add_argument("--libraries", default=",".join(LIBRARIES),
                   help="comma list out of selfsup, lightly (selfsup alone needs no lightly)")
    p.add_argument("--data", default=None, help="fashion-mnist (default) or digits")
    p.add_argument("--subset", type=int, default=None,
                   help="training images (default: steps x batch without --epochs, all with it)")
    p.add_argument("--image-size", type=int, default=None, help="default 32")
    p.add_argument("--width", type=float, default=None, help="ResNet-18 width multiplier (default 0.25)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs over --subset, then score both encoders (kNN, linear)")
    p.add_argument("--steps", type=int, default=None, help="steps per round without --epochs (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds without --epochs (default 4)")
    p.add_argument("--num-workers", type=int, default=None, help="lightly's DataLoader workers (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    return p


# ---------------------------------------------------------------------------------------------
# lightly, as its examples use it


class LightlyModel(nn.Module):
    """lightly's example models: ``forward`` gives the online output, ``forward_momentum`` the target."""

    def __init__(self, method: str, backbone: nn.Module, feature_dim: int) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.method, self.backbone = method, backbone
        if method == "byol":
            hidden, out = LIGHTLY_BYOL_HEADS
            self.projection_head = BYOLProjectionHead(feature_dim, hidden, out)
            self.prediction_head = BYOLPredictionHead(out, hidden, out)
            self.backbone_momentum = copy.deepcopy(backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
        else:
            self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, LIGHTLY_SIMCLR_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return self.prediction_head(z) if self.method == "byol" else z

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class PILImages(torch.utils.data.Dataset):
    """uint8 images as PIL images through a transform, ``(views, label)`` like a torchvision dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, transform: Any) -> None:
        arr = images.permute(0, 2, 3, 1).numpy()
        self.arrays = arr[..., 0] if arr.shape[-1] == 1 else arr
        self.labels = labels.tolist() if labels is not None else [0] * len(arr)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.arrays[i]))), self.labels[i]


def lightly_transform(method: str, size: int, mean: list[float], std: list[float]) -> Any:
    """lightly's transforms at ``size`` px, without blur (its CIFAR-10 setting), normalised with the data's stats."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform

    normalize = {"mean": mean, "std": std}
    if method == "byol":
        return BYOLTransform(view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=0.0,
                                                                 normalize=normalize),
                             view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.0,
                                                                 normalize=normalize))
    return SimCLRTransform(input_size=size, gaussian_blur=0.0, normalize=normalize)


class LightlyRun:
    """One lightly training run, advanced an epoch at a time (its examples' loop, unchanged)."""

    def __init__(self, method: str, images: torch.Tensor, labels: torch.Tensor | None, mean: list[float],
                 std: list[float], args: argparse.Namespace, epochs: int, device: torch.device) -> None:
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss

        torch.manual_seed(args.seed)
        backbone = build_backbone("resnet18", width=args.width, in_channels=images.shape[1], small_stem=True)
        self.model = LightlyModel(method, backbone, backbone.feature_dim).to(device)
        self.method, self.device, self.epochs = method, device, epochs
        self.criterion = NegativeCosineSimilarity() if method == "byol" else NTXentLoss()
        dataset = PILImages(images, labels, lightly_transform(method, args.image_size, mean, std))
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                                  num_workers=args.num_workers,
                                                  generator=torch.Generator().manual_seed(args.seed))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.06 * args.batch_size / 128, momentum=0.9,
                                         weight_decay=5e-4)
        self.total_steps = epochs * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.total_steps)
        self.step, self.losses = 0, []

    def train_epoch(self) -> dict[str, float]:
        """One epoch; its wall time (DataLoader start included) and CPU time (workers included)."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        model, device = self.model, self.device
        model.train()
        start, cpu_start, children = time.perf_counter(), time.process_time(), _children_cpu()
        total_loss, steps = torch.zeros(()), 0
        for (x0, x1), _ in self.loader:
            x0, x1 = x0.to(device), x1.to(device)
            if self.method == "byol":
                m = cosine_schedule(self.step, self.total_steps, 0.99, 1.0)
                update_momentum(model.backbone, model.backbone_momentum, m=m)
                update_momentum(model.projection_head, model.projection_head_momentum, m=m)
                p0, p1 = model(x0), model(x1)
                z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
                loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
            else:
                loss = self.criterion(model(x0), model(x1))
            total_loss += loss.detach().cpu()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.scheduler.step()
            self.step += 1
            steps += 1
        _synchronize(device)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start + _children_cpu() - children  # workers have exited: reaped
        self.losses.append(float(total_loss) / max(steps, 1))
        return {"steps": steps, "seconds": seconds, "cpu_seconds": cpu}


# ---------------------------------------------------------------------------------------------
# Measurement


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(method: str, split: DataSplit, args: argparse.Namespace, libraries: Sequence[str],
               epochs: int, device: torch.device) -> dict[str, Any]:
    """selfsup's ``fit`` over ``epochs`` epochs; after each, one lightly epoch (in fit's epoch hook)."""
    cfg = TrainConfig(method=method, data=args.data, subset=len(split.train), image_size=args.image_size,
                      backbone="resnet18", width=args.width, epochs=epochs, batch_size=args.batch_size,
                      seed=args.seed, device=str(device), progress=False, online_probe=False)
    resolved = resolve(cfg, split.train.image_size)
    mean, std = channel_stats(split)
    settings = loop_settings(cfg, resolved, dist_train.DistInfo(device=device))
    images, labels = split.train.images, split.train.labels
    rounds: list[dict[str, dict[str, float]]] = [{} for _ in range(epochs)]
    peer = LightlyRun(method, images, labels, mean, std, args, epochs, device) if "lightly" in libraries else None
    clock = {"start": time.perf_counter(), "cpu": time.process_time()}

    def after_epoch(epoch: int, step: int, _method: Any) -> dict[str, float]:
        _synchronize(device)
        seconds, cpu = time.perf_counter() - clock["start"], time.process_time() - clock["cpu"]
        steps = step // (epoch + 1)
        rounds[epoch]["selfsup"] = {"steps": steps, "seconds": seconds, "cpu_seconds": cpu}
        if peer is not None:
            rounds[epoch]["lightly"] = peer.train_epoch()
        clock["start"], clock["cpu"] = time.perf_counter(), time.process_time()
        return {}

    method_obj = build_method(cfg, resolved, split.train.channels)
    views = training_views(method_obj, resolved)
    result = None
    if "selfsup" in libraries:
        result = fit(method_obj, images, views, mean, std, settings, epoch_hooks=[after_epoch])
    else:
        for epoch in range(epochs):
            rounds[epoch]["lightly"] = peer.train_epoch()
    out: dict[str, Any] = {"settings": {
        "selfsup": {"recipe": resolved.recipe, "optimizer": resolved.optimizer, "lr": resolved.lr,
                    "weight_decay": resolved.weight_decay, "warmup_epochs": resolved.warmup_epochs,
                    "precision": settings.precision,
                    "channels_last": (default_channels_last(device) if settings.channels_last is None
                                      else settings.channels_last),
                    "zero_init_residual": resolved.zero_init_residual,
                    "method_options": resolved.method_options,
                    "crop_scale": list(resolved.crop_scale)},
        "lightly": {"optimizer": "sgd", "lr": 0.06 * args.batch_size / 128, "momentum": 0.9, "weight_decay": 5e-4,
                    "schedule": "cosine annealing per step", "num_workers": args.num_workers,
                    "transform": "BYOLTransform(View1, View2)" if method == "byol" else "SimCLRTransform",
                    "zero_init_residual": False}}}
    out["per_round"] = rounds
    ips = {lib: [r[lib]["steps"] * args.batch_size / r[lib]["seconds"] for r in rounds] for lib in libraries}
    out["images_per_second"] = {lib: statistics.median(v) for lib, v in ips.items()}
    out["cpu_seconds_per_step"] = {lib: statistics.median(r[lib]["cpu_seconds"] / r[lib]["steps"] for r in rounds)
                                   for lib in libraries}
    if len(libraries) == 2:
        out["ratio"] = statistics.median(a / b for a, b in zip(ips["selfsup"], ips["lightly"]))
        per_step = {lib: [r[lib]["cpu_seconds"] / r[lib]["steps"] for r in rounds] for lib in libraries}
        out["cpu_work_ratio_lightly_over_selfsup"] = statistics.median(
            a / b for a, b in zip(per_step["lightly"], per_step["selfsup"]))
    if result is not None:
        out["selfsup_final_metrics"] = result.last_metrics
    if peer is not None:
        out["lightly_epoch_losses"] = peer.losses
    if args.epochs:
        encoders = {"selfsup": method_obj.encoder if result is not None else None,
                    "lightly": peer.model.backbone if peer is not None else None}
        out["scores"] = {lib: evaluate_encoder(enc, split, args.image_size, mean, std, ["knn", "linear"], device,
                                               seed=args.seed)
                         for lib, enc in encoders.items() if enc is not None}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison for command-line ``argv``; returns the result (``__main__`` prints it)."""
    threads = torch.get_num_threads()
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    finally:
        torch.set_num_threads(threads)


def _run(argv: list[str]) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in {**DEFAULTS, **(SMOKE if args.smoke else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    methods = comma_list(parser, "--methods", args.methods, METHODS)
    libraries = comma_list(parser, "--libraries", args.libraries, LIBRARIES)
    if "lightly" in libraries:
        try:
            import lightly  # noqa: F401
        except ImportError:
            parser.error("lightly is not installed: pip install 'selfsup[bench]' (or --libraries selfsup)")
    torch.set_num_threads(args.threads)
    device = dist_train.pick_device(args.device)
    epochs = args.epochs or args.rounds
    subset = args.subset or (None if args.epochs else args.steps * args.batch_size)
    load_start = os.getloadavg()
    split = load_split(TrainConfig(data=args.data, subset=subset, seed=args.seed, image_size=args.image_size,
                                   progress=False))
    start = time.perf_counter()
    per_method = {m: run_method(m, split, args, libraries, epochs, device) for m in methods}
    result: dict[str, Any] = {
        "benchmark": "peers",
        "command": "python benchmarks/peers.py" + (" " + shlex.join(argv) if argv else ""),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "versions": {**versions(), "lightly": _lightly_version()},
        "host": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_start": load_start,
                 "load_average_end": os.getloadavg()},
        "settings": {"data": split.source, "train_images": len(split.train), "test_images": len(split.test),
                     "image_size": args.image_size, "channels": split.train.channels, "backbone": "resnet18",
                     "width": args.width, "small_stem": True, "batch_size": args.batch_size,
                     "epochs": args.epochs, "rounds": epochs,
                     "steps_per_round": len(split.train) // args.batch_size, "libraries": libraries},
        "seconds": time.perf_counter() - start,
        "methods": per_method,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _lightly_version() -> str | None:
    try:
        import lightly
    except ImportError:
        return None
    return lightly.__version__


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
