"""Training throughput: selfsup's pipeline against the model's own limit and the standard pipeline.

Three numbers, measured in one run, in images per second (source images, each counted once per
step, however many views it yields):

* ``model_bound`` -- the ceiling: the training step alone (method forward + backward + optimiser
  step + ``on_step_end``) on fixed augmented views already on the device; no data cost.
* ``selfsup`` -- the full pipeline: uint8 images on the device, batched on-device augmentation of
  the method's views, normalisation, step. This *is* ``selfsup.train.loop.fit``, unmodified.
* ``standard`` -- the pipeline most users run today: per-image ``torchvision.transforms.v2`` on PIL
  images in a ``torch.utils.data.DataLoader`` with worker processes (RandomResizedCrop,
  RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur),
  RandomSolarize, ToImage/ToDtype, Normalize), with the same view recipe (sizes, scales,
  strengths, probabilities per view; ops whose probability is 0 are left out), model and batch.

All three run through the same ``fit`` (the training loop): for ``model_bound`` and ``standard``
the loop's augmentation call is swapped for "return the fixed views" or "return the DataLoader's
next batch", so the step, optimiser, EMA update, logging cadence (``log_every``) and online probe
are exactly the loop's. Warm-up steps (which include ``torch.compile`` and DataLoader start-up)
are excluded; on CUDA the device is synchronised before each clock reading.

    python benchmarks/throughput.py --method byol --backbone resnet18 --width 0.25 \\
        --batch-size 256 --image-size 32 --steps 20 --warmup 3
    python benchmarks/throughput.py --backbone resnet50 --width 1 --image-size 224 \\
        --image-folder ~/imagenet-subset --batch-size 256        # CUDA, decode-once folder cache
    python benchmarks/throughput.py --smoke                      # seconds, CI-sized

Prints one JSON object (keys in ``RESULT_KEYS``); ``pipeline_efficiency`` = selfsup / model_bound,
``speedup_vs_standard`` = selfsup / standard.

``--variant NAME:KEY=VALUE[,KEY=VALUE...]`` (repeatable) measures other settings in the same run,
interleaved with the command's own ("base") round by round, so a change is judged by a ratio taken
under the same load: ``variants[NAME]`` has its images/s per mode, ``ratio_to_base`` (median of
the per-round ratios of images/s) and ``cpu_speedup_to_base`` (the same with the training process's
CPU seconds per step, steadier on a shared machine). Keys: ``precision`` (fp32, bf16, auto),
``channels_last`` (true, false, auto), ``compile`` (true/false), ``image_size`` and ``optimizer_impl``
(foreach, fused, for-loop: SGD/AdamW's implementation; LARS is foreach-only). Today's CPU default
against the previous one (fp32, NCHW)::

    python benchmarks/throughput.py --modes selfsup --rounds 3 --precision fp32 --no-channels-last \\
        --variant default:precision=auto,channels_last=auto

Other changes::

    python benchmarks/throughput.py --modes model_bound,selfsup --rounds 3 --variant bf16:precision=bf16 \\
        --variant nhwc:channels_last=true --variant 28px:image_size=28
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

import selfsup.train.feed as feed
import selfsup.train.loop as loop
from selfsup.config import TrainConfig, resolve
from selfsup.data.augment import augment_views, blur_kernel_size, normalize
from selfsup.data.transfer import to_device
from selfsup.data.views import ViewSpec
from selfsup.methods import METHODS
from selfsup.models import BACKBONES
from selfsup.runs import build_method, training_views, versions
from selfsup.runs.train import peak_memory_mb
from selfsup.train.distributed import pick_device

MODES = ("model_bound", "selfsup", "standard")
RESULT_KEYS = ("benchmark", "command", "date", "device", "versions", "host", "settings", "images_per_second",
               "seconds_per_step", "peak_memory_mb", "pipeline_efficiency", "speedup_vs_standard")
SMOKE = {"backbone": "resnet18", "width": 0.0625, "batch_size": 8, "image_size": 16, "steps": 2, "warmup": 1,
         "num_workers": 1, "synthetic": True, "threads": 1}
DEFAULTS = {"method": "byol", "backbone": "resnet18", "width": 0.25, "batch_size": 256, "image_size": 32,
            "steps": 20, "warmup": 3, "num_workers": None, "synthetic": False, "threads": None}
VARIANT_KEYS = ("precision", "channels_last", "compile", "image_size", "optimizer_impl")
OPTIMIZER_IMPLS = ("foreach", "fused", "for-loop")


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), default=None, help="default: byol")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default=None, help="default: resnet18")
    p.add_argument("--width", type=float, default=None, help="width multiplier (default 0.25)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--image-size", type=int, default=None, help="training image side (default 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 3)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers of the standard pipeline (default: usable CPU count)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (the training default): bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the method (compile time is in warm-up)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC model and inputs (default: on CUDA and CPU, as the training loop)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute ResNet stages in backward")
    p.add_argument("--online-probe", action=argparse.BooleanOptionalAction, default=True,
                   help="the loop's online linear probe when the data is labeled (on by default, as in training)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=None,
                        help="fashion-mnist or digits, resized to --image-size (default: fashion-mnist when "
                             "installed, else digits)")
    source.add_argument("--synthetic", action="store_true", default=None, help="random uint8 images instead")
    source.add_argument("--image-folder", metavar="PATH", default=None,
                        help="a folder of images, decoded once into the selfsup cache at --image-size")
    p.add_argument("--cache-dir", default=None,
                   help="decoded-image cache of --image-folder (default ~/.cache/selfsup/folders)")
    p.add_argument("--channels", type=int, default=3, help="channels of --synthetic images (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the training process (default: torch's; --smoke: 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the three measurements, interleaved, and report medians (noisy machines)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list out of {', '.join(MODES)}")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="other settings measured in the same run, interleaved with the base: keys "
                        f"{', '.join(VARIANT_KEYS)} (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    return p


# ---------------------------------------------------------------------------------------------
# Data


def load_images(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``n`` uint8 images [n, C, S, S] (cycled when the source has fewer), their labels, and the source."""
    size = args.image_size
    gen = torch.Generator().manual_seed(args.seed)
    if args.synthetic:
        images = torch.randint(0, 256, (n, args.channels, size, size), dtype=torch.uint8, generator=gen)
        return images, None, f"random uint8 images, {args.channels} channels, {size}px"
    from selfsup.data.sources import fashion_mnist_available, load_data

    if args.image_folder:
        spec = f"folder:{args.image_folder}"
    else:
        spec = args.data or ("fashion-mnist" if fashion_mnist_available() else "digits")
    split = load_data(spec, image_size=size, progress=sys.stderr.isatty(), cache_dir=args.cache_dir)
    train = split.train
    index = torch.randperm(len(train), generator=gen).repeat(math.ceil(n / len(train)))[:n]
    labels = train.labels[index] if train.labels is not None else None
    return train.images[index], labels, split.source


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units (as selfsup.runs.channel_stats, on a tensor of images)."""
    x = images.float().div_(255).transpose(0, 1).flatten(1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def standard_transform(spec: ViewSpec, mean: Sequence[float], std: Sequence[float]):
    """One view of the recipe as the usual per-image torchvision.transforms.v2 pipeline on PIL images."""
    from torchvision.transforms import v2

    ops: list[Any] = [v2.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True)]
    if spec.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(spec.flip_p))
    if spec.jitter_p > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)],
                                  p=spec.jitter_p))
    if spec.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(spec), sigma=spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:  # selfsup solarises x >= t for x = u / 255; on 8-bit PIL that is u >= ceil(255 t)
        ops.append(v2.RandomSolarize(threshold=math.ceil(255 * spec.solarize_threshold), p=spec.solarize_p))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class PILViews(torch.utils.data.Dataset):
    """The common dataset shape: a PIL image per index, one transformed tensor per view."""

    def __init__(self, images: torch.Tensor, transforms: Sequence[Callable]) -> None:
        arr = images.permute(0, 2, 3, 1).numpy()
        self.arrays = arr[..., 0] if arr.shape[-1] == 1 else arr  # [N, H, W] (L) or [N, H, W, 3] (RGB)
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(self.arrays[i]))
        return [t(img) for t in self.transforms]


# ---------------------------------------------------------------------------------------------
# Measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def loop_views(source: Callable[[torch.Tensor, Sequence[ViewSpec], torch.Generator], list[torch.Tensor]] | None,
               counter: dict[str, int]) -> Iterator[None]:
    """Within the block, the training loop gets its views from ``source`` (already normalised);
    ``None`` keeps selfsup's augmentation. Counts the calls, to prove the swap took effect."""
    original_augment, original_normalize = feed.augment_views, loop.normalize

    def counted(batch, views, generator):
        counter["calls"] += 1
        return (source or original_augment)(batch, views, generator)

    feed.augment_views = counted
    if source is not None:
        loop.normalize = lambda x, mean, std: x
    try:
        yield
    finally:
        feed.augment_views, loop.normalize = original_augment, original_normalize


@contextlib.contextmanager
def optimizer_implementation(impl: str) -> Iterator[None]:
    """Within the block, the loop's SGD/AdamW run as ``impl``: foreach (the loop's CPU choice), fused or
    for-loop (one kernel sequence per parameter). LARS has a foreach implementation only."""
    if impl == "foreach":
        yield
        return
    original = loop.build_optimizer

    def build(*a, **k):
        optimizer = original(*a, **k)
        if isinstance(optimizer, torch.optim.SGD | torch.optim.AdamW):
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = (True, False) if impl == "fused" else (None, False)
        return optimizer

    loop.build_optimizer = build
    try:
        yield
    finally:
        loop.build_optimizer = original


def parse_variant(parser: argparse.ArgumentParser, text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (name, overrides of the command's arguments)."""
    name, sep, body = text.partition(":")
    if not name or not sep or not body:
        parser.error(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    overrides: dict[str, Any] = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in VARIANT_KEYS or not eq:
            parser.error(f"--variant {text!r}: {item!r}; keys are {', '.join(VARIANT_KEYS)}")
        if key == "channels_last" and value.lower() == "auto":
            overrides[key] = None  # the training loop's default for the device
        elif key in ("channels_last", "compile"):
            if value.lower() not in ("true", "false", "1", "0"):
                parser.error(f"--variant {text!r}: {key} takes true or false")
            overrides[key] = value.lower() in ("true", "1")
        elif key == "image_size":
            overrides[key] = int(value)
        elif key == "precision" and value not in ("fp32", "bf16", "auto"):
            parser.error(f"--variant {text!r}: precision is fp32, bf16 or auto")
        elif key == "optimizer_impl" and value not in OPTIMIZER_IMPLS:
            parser.error(f"--variant {text!r}: optimizer_impl is one of {', '.join(OPTIMIZER_IMPLS)}")
        else:
            overrides[key] = value
    return name, overrides


def measure(mode: str, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, float]:
    """Train ``warmup + steps`` steps through ``fit`` with this mode's view source; time the last ``steps``."""
    device: torch.device = ctx["device"]
    cfg, resolved, images, labels = ctx["cfg"], ctx["resolved"], ctx["images"], ctx["labels"]
    mean, std, batch = ctx["mean"], ctx["std"], args.batch_size
    method = build_method(cfg, resolved, images.shape[1])  # same seed: same initial weights in every mode
    views = training_views(method, resolved)
    dummy = torch.zeros((images.shape[0], images.shape[1], 1, 1), dtype=torch.uint8)  # no data cost
    channels_last = loop.default_channels_last(device) if args.channels_last is None else args.channels_last
    loader, batches = None, {}
    if mode == "selfsup":
        source, train_images = None, images
    elif mode == "model_bound":
        gen = torch.Generator().manual_seed(args.seed)
        fixed = [normalize(v, mean, std) for v in augment_views(images[:batch].to(device), views, gen)]
        if channels_last:
            fixed = [v.contiguous(memory_format=torch.channels_last) for v in fixed]
        source, train_images = (lambda b, v, g: fixed), dummy
    else:
        transforms = [standard_transform(v, mean, std) for v in views]
        loader = torch.utils.data.DataLoader(
            PILViews(images, transforms), batch_size=batch, shuffle=True, drop_last=True,
            num_workers=args.num_workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(args.seed))

        def source(b, v, g):  # the loop's augment_views(batch, views, generator) -> the loader's next batch
            if "it" not in batches:
                batches["it"] = iter(loader)
            return [to_device(x, device) for x in next(batches["it"])]

        train_images = dummy

    clock: dict[str, float] = {}
    original_hook = method.on_batch_start

    def on_batch_start(indices: torch.Tensor) -> None:  # the loop calls it at the start of every step
        clock["calls"] = clock.get("calls", 0) + 1
        if clock["calls"] == args.warmup + 1:
            synchronize(device)
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()
        original_hook(indices)

    method.on_batch_start = on_batch_start
    settings = loop.LoopSettings(
        epochs=1, batch_size=batch, optimizer=resolved.optimizer, lr=resolved.lr,
        weight_decay=resolved.weight_decay, warmup_epochs=resolved.warmup_epochs, seed=args.seed,
        log_every=cfg.log_every, device=str(device), precision=ctx["precision"], compile=args.compile,
        progress=False, online_probe=args.online_probe, channels_last=args.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    counter = {"calls": 0}
    with loop_views(source, counter), optimizer_implementation(getattr(args, "optimizer_impl", "foreach")):
        result = loop.fit(method, train_images, views, mean, std, settings,
                          labels=labels if args.online_probe else None)
    synchronize(device)
    seconds = time.perf_counter() - clock["start"]
    cpu_seconds = time.process_time() - clock["cpu_start"]
    batches.clear()  # drops the DataLoader iterator: its workers exit (and are reaped) now
    loader = None
    steps = result.steps - args.warmup
    if counter["calls"] != result.steps:
        raise RuntimeError(f"{mode}: the training loop called augment_views {counter['calls']} times in "
                           f"{result.steps} steps; benchmarks/throughput.py is out of date with train/loop.py")
    out = {"images_per_second": steps * batch / seconds, "seconds_per_step": seconds / steps,
           "process_cpu_seconds_per_step": cpu_seconds / steps, "peak_memory_mb": peak_memory_mb(device)}
    if mode == "standard" and args.num_workers > 0:  # the workers have exited and been reaped by now
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        out["workers_cpu_seconds_per_batch"] = cpu / result.steps  # whole run, warm-up and start-up included
        out["workers_peak_rss_mb"] = after.ru_maxrss / 1024
    return out


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {usable_cpus()} usable cores)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark for command-line ``argv``; returns the result (``__main__`` prints it as JSON)."""
    threads = torch.get_num_threads()
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    finally:
        torch.set_num_threads(threads)  # in-process callers (the tests) keep their thread count


def _run(argv: list[str]) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    fill = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    if args.data or args.image_folder:
        fill["synthetic"] = False
    for key, value in fill.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.num_workers is None:
        args.num_workers = usable_cpus()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: choose from {', '.join(MODES)}")
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 2 or args.rounds < 1:
        raise SystemExit("--steps, --warmup and --rounds must be >= 1, --batch-size >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if loop.native_bf16(device) else "fp32")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None

    variants = [parse_variant(build_parser(), text) for text in args.variant]
    if len({name for name, _ in variants} | {"base"}) != len(variants) + 1:
        raise SystemExit("--variant: names must differ from each other and from 'base'")
    ctx = _context(args, device, precision)
    images, labels, source, cfg, resolved = (ctx[k] for k in ("images", "labels", "source", "cfg", "resolved"))
    others = []
    for name, overrides in variants:
        vargs = argparse.Namespace(**{**vars(args), **overrides})
        vprecision = vargs.precision if vargs.precision != "auto" else ("bf16" if loop.native_bf16(device) else "fp32")
        others.append((name, overrides, vargs, _context(vargs, device, vprecision)))

    rounds: list[dict[str, dict[str, float]]] = []
    variant_rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name, _ in variants}
    for _ in range(args.rounds):  # base, then each variant, round after round: the same load for all
        rounds.append({mode: measure(mode, args, ctx) for mode in modes})
        for name, _, vargs, vctx in others:
            variant_rounds[name].append({mode: measure(mode, vargs, vctx) for mode in modes})

    def median(mode: str, key: str) -> float:
        return statistics.median(r[mode][key] for r in rounds)

    ips = {m: median(m, "images_per_second") for m in modes}
    views = training_views(build_method(cfg, resolved, images.shape[1]), resolved)
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "command": "python benchmarks/throughput.py" + (" " + shlex.join(argv) if argv else ""),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": describe_device(device),
        "versions": {**versions(), "numpy": np.__version__, "pillow": _pillow_version()},
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
                 "torch_threads": torch.get_num_threads(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                 "load_average_start": load_start,
                 "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "settings": {"method": args.method, "backbone": args.backbone, "width": args.width,
                     "batch_size": args.batch_size, "image_size": args.image_size, "channels": images.shape[1],
                     "data": source, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                     "num_workers": args.num_workers, "precision": precision, "compile": args.compile,
                     "channels_last": (loop.default_channels_last(device) if args.channels_last is None
                                       else args.channels_last),
                     "grad_checkpointing": args.grad_checkpointing, "recipe": resolved.recipe,
                     "optimizer": resolved.optimizer, "log_every": cfg.log_every,
                     "online_probe": bool(args.online_probe and labels is not None),
                     "views": [dataclasses.asdict(v) for v in views]},
        "images_per_second": ips,
        "seconds_per_step": {m: median(m, "seconds_per_step") for m in modes},
        # CPU time of this (training) process in the timed steps, all threads; DataLoader workers not included
        "process_cpu_seconds_per_step": {m: median(m, "process_cpu_seconds_per_step") for m in modes},
        "peak_memory_mb": {m: median(m, "peak_memory_mb") for m in modes},
        "pipeline_efficiency": (ips["selfsup"] / ips["model_bound"]
                                if {"selfsup", "model_bound"} <= ips.keys() else None),
        "speedup_vs_standard": (ips["selfsup"] / ips["standard"]
                                if {"selfsup", "standard"} <= ips.keys() else None),
    }
    if device.type == "cpu":
        result["peak_memory_note"] = ("CPU: peak RSS of this process (ru_maxrss) after each mode, cumulative; "
                                      "DataLoader workers separately in workers_peak_rss_mb")
    if any("workers_cpu_seconds_per_batch" in r.get("standard", {}) for r in rounds):
        result["workers_peak_rss_mb"] = max(r["standard"]["workers_peak_rss_mb"] for r in rounds)
        # CPU time the DataLoader workers spent per batch (start-up and warm-up included): the
        # standard pipeline's augmentation cost, which runs beside the training process
        result["workers_cpu_seconds_per_batch"] = median("standard", "workers_cpu_seconds_per_batch")
    if device.type == "cpu" and {"selfsup", "standard"} <= set(modes):
        # On a CPU shared with other jobs, wall-clock rates follow the load; the CPU work per step does
        # not. Training process + DataLoader workers, per step; the ratio is the speed-up a dedicated
        # CPU-bound machine would see.
        work = {m: result["process_cpu_seconds_per_step"][m] for m in modes}
        work["standard"] += result.get("workers_cpu_seconds_per_batch", 0.0)
        result["cpu_seconds_per_step_with_workers"] = work
        result["cpu_work_ratio_standard_over_selfsup"] = work["standard"] / work["selfsup"]
    if args.rounds > 1:
        result["per_round_images_per_second"] = [{m: r[m]["images_per_second"] for m in modes} for r in rounds]
    if variants:
        result["variants"] = {}
        for name, overrides, _, vctx in others:
            vr = variant_rounds[name]
            result["variants"][name] = {
                "overrides": overrides, "precision": vctx["precision"],
                "images_per_second": {m: statistics.median(r[m]["images_per_second"] for r in vr) for m in modes},
                "seconds_per_step": {m: statistics.median(r[m]["seconds_per_step"] for r in vr) for m in modes},
                "process_cpu_seconds_per_step": {m: statistics.median(r[m]["process_cpu_seconds_per_step"]
                                                                      for r in vr) for m in modes},
                "ratio_to_base": {m: statistics.median(v[m]["images_per_second"] / b[m]["images_per_second"]
                                                       for v, b in zip(vr, rounds)) for m in modes},
                # the same comparison in CPU time of the training process (steadier on a shared machine)
                "cpu_speedup_to_base": {m: statistics.median(
                    b[m]["process_cpu_seconds_per_step"] / v[m]["process_cpu_seconds_per_step"]
                    for v, b in zip(vr, rounds)) for m in modes},
                "per_round_images_per_second": [{m: r[m]["images_per_second"] for m in modes} for r in vr],
            }
    return result


def _context(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, Any]:
    """The images, run config and resolved recipe that ``measure`` trains on, for ``args``."""
    n = args.batch_size * (args.warmup + args.steps)  # one epoch of exactly warmup + steps steps
    images, labels, source = load_images(args, n)
    mean, std = channel_stats(images)
    cfg = TrainConfig(method=args.method, data="benchmark", backbone=args.backbone, width=args.width,
                      batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                      compile=args.compile, grad_checkpointing=args.grad_checkpointing, progress=False)
    resolved = resolve(cfg, args.image_size)
    return {"device": device, "cfg": cfg, "resolved": resolved, "images": images, "labels": labels,
            "mean": mean, "std": std, "precision": precision, "source": source}


def _pillow_version() -> str:
    import PIL

    return PIL.__version__


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
