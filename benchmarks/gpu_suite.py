"""The GPU suite: selfsup's speed and learning figures on one GPU, in under 9 minutes, into one JSON.

Sections, run in this order, each only if its estimated time fits the wall budget (``--budget-minutes``,
default 8.5; a section that does not fit is recorded as skipped, with why). The JSON is rewritten
after every section, so a run stopped early keeps what was measured.

1. ``environment``: device, versions, CPU count.
2. ``resnet18_32px``: ``benchmarks/throughput.py`` for BYOL on ResNet-18 (width 1, small-image stem)
   at 32 px, batch 512, random 3-channel images: images/s (a) model-bound, (b) selfsup, (c) the
   standard per-image torchvision pipeline (DataLoader with one worker per CPU), for fp32, bf16
   autocast, and bf16 + channels_last (interleaved in one run); then bf16 + channels_last +
   ``torch.compile`` (compilation is in the untimed warm-up steps).
3. ``resnet50_224px``: a folder of synthetic 256-px JPEGs (``python -m selfsup.data.synthetic``),
   decoded once into the selfsup cache at 224 px with nvJPEG (``selfsup.data.gpu_decode``; timed,
   and beside it the CPU decode of the same files), then the three throughputs of BYOL on
   ResNet-50 at 224 px, batch 256, bf16 + channels_last, from that cache.
4. ``byol_fashion_mnist``: BYOL on Fashion-MNIST (ResNet-18 at full width, the small-image recipe,
   batch 512, bf16, channels_last) for a fixed wall budget (``--byol-minutes``, cut to what the
   suite's budget leaves): a 13-step probe of the rate sets the number of epochs, then
   ``selfsup train`` trains and scores kNN and the linear probe beside the random-init encoder and
   raw pixels.

Fashion-MNIST is read from ``--fashion-mnist DIR`` (the four idx files, ``.gz`` or not, 30 MB;
e.g. Debian's ``/usr/share/datasets/fashion-mnist``): no network is used anywhere.

    benchmarks/gpu_suite.sh /path/to/fashion-mnist gpu_suite.json
    python benchmarks/gpu_suite.py --fashion-mnist DIR --out gpu_suite.json
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite.json    # CPU, tiny sizes, seconds

``--smoke`` runs every section's code on the CPU at tiny sizes (``torch.compile`` left out: inductor's
CPU compile alone takes minutes; the JPEG batch decoder runs on the CPU), digits standing in for
Fashion-MNIST unless ``--fashion-mnist`` is given.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selfsup.data.sources import FASHION_MNIST_ENV, find_fashion_mnist
from selfsup.runs import versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402

# (section, estimated seconds on one H100/H200) -- a section starts only if it fits the time left
ESTIMATES = {"resnet18_32px": 75, "resnet18_32px_compile": 150, "resnet50_224px": 75, "byol_fashion_mnist": 120}
BYOL_EVAL_RESERVE = 45  # seconds kept for the end-of-run kNN / linear probe and baselines (GPU)
FULL = {"r18_batch": 512, "r18_width": 1.0, "r18_steps": 30, "r18_warmup": 5, "r50_batch": 256, "r50_width": 1.0,
        "r50_size": 224, "r50_steps": 8, "r50_warmup": 3, "jpeg_size": 256, "byol_batch": 512, "byol_width": 1.0,
        "byol_subset": None, "probe_steps": 10, "probe_warmup": 3, "num_workers": None}
SMOKE = {"r18_batch": 8, "r18_width": 0.0625, "r18_steps": 2, "r18_warmup": 1, "r50_batch": 4, "r50_width": 0.0625,
         "r50_size": 16, "r50_steps": 1, "r50_warmup": 1, "jpeg_size": 24, "byol_batch": 32, "byol_width": 0.0625,
         "byol_subset": 256, "probe_steps": 2, "probe_warmup": 1, "num_workers": 0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-mnist", metavar="DIR", default=None,
                   help="folder with Fashion-MNIST's idx files (required unless --smoke)")
    p.add_argument("--out", default="gpu_suite.json", help="the JSON written (default gpu_suite.json)")
    p.add_argument("--budget-minutes", type=float, default=8.5, help="wall budget of the whole suite (8.5)")
    p.add_argument("--byol-minutes", type=float, default=3.0,
                   help="BYOL's training budget (default 3; cut to what the suite budget leaves)")
    p.add_argument("--byol-compile", action="store_true", help="torch.compile the BYOL run (compile time counts)")
    p.add_argument("--sections", default="resnet18_32px,resnet18_32px_compile,resnet50_224px,byol_fashion_mnist",
                   help="comma list of sections to run (default: all)")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:1, cpu")
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at tiny sizes, in seconds")
    return p


class Suite:
    """Runs sections against a deadline and keeps the JSON on disk up to date."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args, self.start = args, time.perf_counter()
        self.deadline = self.start + args.budget_minutes * 60
        self.out = Path(args.out)
        self.result: dict[str, Any] = {
            "benchmark": "gpu_suite", "command": "python benchmarks/gpu_suite.py " + " ".join(argv),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "smoke": args.smoke,
            "budget_seconds": args.budget_minutes * 60, "sections": {}, "skipped": {}}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, fn: Callable[[], dict[str, Any]], estimate: float) -> None:
        if name not in self.args.sections.split(","):
            return
        if not self.args.smoke and estimate > self.left():
            self.result["skipped"][name] = f"needs ~{estimate:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
            self.save()
            return
        began = time.perf_counter()
        try:
            section = fn()
        except Exception as e:  # one broken section must not lose the others' figures
            if self.args.smoke:
                raise
            section = {"error": f"{type(e).__name__}: {e}"}
        section["seconds"] = round(time.perf_counter() - began, 1)
        self.result["sections"][name] = section
        self.save()

    def save(self) -> None:
        self.result["seconds"] = round(time.perf_counter() - self.start, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2) + "\n")
        tmp.replace(self.out)


def throughput_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a throughput.py result the suite keeps (images/s, ratios, memory, settings)."""
    keep = ("images_per_second", "seconds_per_step", "peak_memory_mb", "pipeline_efficiency", "speedup_vs_standard",
            "workers_cpu_seconds_per_batch", "variants")
    settings = {k: result["settings"][k] for k in ("method", "backbone", "width", "batch_size", "image_size",
                                                   "channels", "steps", "warmup", "num_workers", "precision",
                                                   "compile", "channels_last", "recipe", "data")}
    return {"command": result["command"], "settings": settings, **{k: result[k] for k in keep if k in result}}


def _throughput_argv(s: dict[str, Any], device: str, backbone: str, width: float, size: int, batch: int,
                     steps: int, warmup: int) -> list[str]:
    argv = ["--method", "byol", "--backbone", backbone, "--width", str(width), "--image-size", str(size),
            "--batch-size", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--device", device]
    if s["num_workers"] is not None:
        argv += ["--num-workers", str(s["num_workers"])]
    return argv


def resnet18_32px(s: dict[str, Any], device: str, smoke: bool) -> dict[str, Any]:
    """fp32, bf16, bf16 + channels_last: three modes each, interleaved in one throughput.py run."""
    argv = _throughput_argv(s, device, "resnet18", s["r18_width"], 32 if not smoke else 16, s["r18_batch"],
                            s["r18_steps"], s["r18_warmup"])
    argv += ["--synthetic", "--channels", "3", "--precision", "fp32", "--no-channels-last",
             "--variant", "bf16:precision=bf16,channels_last=false",
             "--variant", "bf16_channels_last:precision=bf16,channels_last=true"]
    return throughput_figures(throughput.main(argv))


def resnet18_32px_compile(s: dict[str, Any], device: str, smoke: bool) -> dict[str, Any]:
    argv = _throughput_argv(s, device, "resnet18", s["r18_width"], 32 if not smoke else 16, s["r18_batch"],
                            s["r18_steps"], s["r18_warmup"])
    argv += ["--synthetic", "--channels", "3", "--precision", "bf16", "--channels-last"]
    if smoke:  # inductor's CPU compile takes minutes: the smoke run checks the path without it
        return {"note": "smoke: torch.compile left out", **throughput_figures(throughput.main(argv))}
    return throughput_figures(throughput.main(argv + ["--compile"]))


def resnet50_224px(s: dict[str, Any], device: str, smoke: bool, work: Path) -> dict[str, Any]:
    """Synthetic JPEG folder -> GPU-decoded cache (timed, beside the CPU decode) -> three throughputs."""
    from selfsup.data.folder import load_folder
    from selfsup.data.gpu_decode import decode_jpegs
    from selfsup.data.synthetic import make_synthetic_folder

    n = s["r50_batch"] * (s["r50_steps"] + s["r50_warmup"])
    folder = work / f"synthetic-{n}-{s['jpeg_size']}"
    began = time.perf_counter()
    make_synthetic_folder(folder, n, size=s["jpeg_size"], progress=False)
    out: dict[str, Any] = {"images": n, "jpeg_size": s["jpeg_size"],
                           "make_images_command": f"python -m selfsup.data.synthetic --out DIR --n {n} "
                                                  f"--size {s['jpeg_size']}",
                           "make_images_seconds": round(time.perf_counter() - began, 1)}
    size = s["r50_size"]
    on_cuda = torch.device(device).type == "cuda"
    decode = {}
    for name, where in (("cpu", "cpu"), ("gpu", "cuda" if on_cuda else None)):
        began = time.perf_counter()
        if where is None:  # smoke: the batched decoder's code on the CPU (what load_folder runs on a GPU)
            files = sorted(str(p) for p in folder.rglob("*.jpg"))
            decoded = decode_jpegs(files, size, device="cpu")
            count = len(decoded)
        else:  # the cache throughput.py reads is the GPU-decoded one
            split = load_folder(folder, image_size=size, cache_dir=work / f"{name}-cache", progress=False,
                                decode_device=where)
            count = len(split.train) + len(split.test)
        seconds = time.perf_counter() - began
        decode[name] = {"images": count, "seconds": round(seconds, 2), "images_per_second": count / seconds}
    out["decode_once"] = decode
    argv = _throughput_argv(s, device, "resnet50", s["r50_width"], size, s["r50_batch"], s["r50_steps"],
                            s["r50_warmup"])
    argv += ["--image-folder", str(folder), "--cache-dir", str(work / ("gpu-cache" if on_cuda else "cpu-cache")),
             "--precision", "bf16", "--channels-last"]
    out.update(throughput_figures(throughput.main(argv)))
    return out


def byol_fashion_mnist(s: dict[str, Any], device: str, smoke: bool, work: Path, suite: Suite) -> dict[str, Any]:
    """Probe the rate, train BYOL for the epochs that fit the budget, score kNN and linear."""
    from selfsup.runs.train import train

    args = suite.args
    data = "fashion-mnist" if args.fashion_mnist else "digits"
    native = 28 if data == "fashion-mnist" else 8  # selfsup train keeps a built-in dataset's own size
    probe_argv = _throughput_argv(s, device, "resnet18", s["byol_width"], native, s["byol_batch"], s["probe_steps"],
                                  s["probe_warmup"])
    probe_argv += ["--data", data, "--modes", "selfsup"]
    if args.byol_compile:
        probe_argv.append("--compile")
    rate = throughput.main(probe_argv)["images_per_second"]["selfsup"]
    budget = min(args.byol_minutes * 60, suite.left() - BYOL_EVAL_RESERVE) if not smoke else 2.0
    train_images = s["byol_subset"] or (60000 if data == "fashion-mnist" else 1437)
    steps_per_epoch = train_images // s["byol_batch"]
    epochs = max(1, int(budget * rate / (steps_per_epoch * s["byol_batch"])))
    options = dict(method="byol", data=data, data_root=args.fashion_mnist, subset=s["byol_subset"],
                   backbone="resnet18", width=s["byol_width"], epochs=epochs, batch_size=s["byol_batch"],
                   device=device, compile=args.byol_compile, out=str(work / "byol-run"), overwrite=True,
                   progress=False, eval_protocols="knn,linear", seed=0)
    began = time.perf_counter()
    summary = train(**options)
    total = time.perf_counter() - began
    keys = [k for k in summary if k.endswith("_top1") or k.endswith("_top5")]
    return {"data": summary.get("data_source"), "budget_seconds": round(budget, 1), "probe_images_per_second": rate,
            "epochs": epochs, "steps": summary["steps"], "train_seconds": round(summary["seconds"], 1),
            "eval_seconds": round(total - summary["seconds"], 1), "images_per_second": summary["images_per_second"],
            "precision": summary["precision"], "peak_memory_mb": summary["peak_memory_mb"],
            "recipe": summary["recipe"], "options": {k: v for k, v in options.items() if k not in ("out",)},
            "std_scaled": summary["final_metrics"].get("std_scaled"), **{k: summary[k] for k in keys}}


def environment(device: str) -> dict[str, Any]:
    d = torch.device(device)
    env: dict[str, Any] = {"versions": versions(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "device": str(d), "cuda_available": torch.cuda.is_available()}
    if d.type == "cuda":
        props = torch.cuda.get_device_properties(d)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.fashion_mnist:
        found = find_fashion_mnist(args.fashion_mnist)
        if found is None or found[1] != "root":  # that folder itself, not a copy found elsewhere
            raise SystemExit(f"--fashion-mnist: no Fashion-MNIST idx files in {args.fashion_mnist}")
    elif not args.smoke:
        raise SystemExit("--fashion-mnist DIR is required (the folder with Fashion-MNIST's idx files)")
    device = "cpu" if args.smoke else str(throughput.pick_device(args.device))
    if not args.smoke and torch.device(device).type != "cuda" and args.device == "auto":
        raise SystemExit("no CUDA device: --smoke runs the suite's code on the CPU at tiny sizes "
                         "(--device cpu runs the full sizes on the CPU: hours)")
    s = SMOKE if args.smoke else FULL
    previous_env = os.environ.get(FASHION_MNIST_ENV)
    if args.fashion_mnist:  # every loader in the suite reads this folder (and never downloads)
        os.environ[FASHION_MNIST_ENV] = str(Path(args.fashion_mnist).expanduser().absolute())
    suite = Suite(args, argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="selfsup-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)
    try:
        suite.result["sections"]["environment"] = environment(device)
        suite.save()
        suite.run("resnet18_32px", lambda: resnet18_32px(s, device, args.smoke), ESTIMATES["resnet18_32px"])
        suite.run("resnet18_32px_compile", lambda: resnet18_32px_compile(s, device, args.smoke),
                  ESTIMATES["resnet18_32px_compile"])
        suite.run("resnet50_224px", lambda: resnet50_224px(s, device, args.smoke, work), ESTIMATES["resnet50_224px"])
        suite.run("byol_fashion_mnist", lambda: byol_fashion_mnist(s, device, args.smoke, work, suite),
                  ESTIMATES["byol_fashion_mnist"])
    finally:
        torch.set_num_threads(threads)
        if previous_env is None:
            os.environ.pop(FASHION_MNIST_ENV, None)
        else:
            os.environ[FASHION_MNIST_ENV] = previous_env
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    suite.save()
    return suite.result


if __name__ == "__main__":
    result = main()
    print(json.dumps({k: v for k, v in result.items() if k != "sections"} |
                     {"sections": sorted(result["sections"])}, indent=2))
