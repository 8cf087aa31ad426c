"""The Python API; ``selfsup.cli`` mirrors it one to one."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torchvision
from torch import nn

from selfsup import __version__
from selfsup.config import (ConfigError, Resolved, TrainConfig, config_from_dict, config_to_dict, read_yaml,
                            resolve, validate, write_yaml)
from selfsup.data.dataset import DataSplit
from selfsup.data.sources import load_data
from selfsup.data.views import ViewSpec
from selfsup.evaluation.frozen import PROTOCOLS_FROZEN, evaluate_encoder, evaluate_raw_pixels
from selfsup.methods import METHODS, Method
from selfsup.models import build_backbone
from selfsup.train.checkpoint import safe_load
from selfsup.train.loop import LoopSettings, derived_seed, fit


@dataclass
class Run:
    """A run folder loaded back: its settings, data and trained method."""

    path: Path
    config: TrainConfig
    resolved: Resolved
    mean: list[float]
    std: list[float]
    method: Method

    @property
    def encoder(self) -> nn.Module:
        return self.method.encoder


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    return {"selfsup": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def channel_stats(split: DataSplit) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images, in [0, 1] units."""
    x = split.train.images.float().div_(255).transpose(0, 1).flatten(1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def build_method(cfg: TrainConfig, resolved: Resolved, in_channels: int, seed: int | None = None) -> Method:
    """Backbone + method heads, initialised from ``seed`` (default: the config's)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    encoder = build_backbone(cfg.backbone, width=cfg.width, in_channels=in_channels,
                             small_stem=resolved.small_stem, norm=cfg.norm)
    method_cls = METHODS[cfg.method]
    options = {k: v for k, v in resolved.method_options.items()}
    if "head_norm" in options and cfg.norm != "batchnorm" and "head_norm" not in cfg.method_options:
        options["head_norm"] = cfg.norm
    return method_cls(encoder, method_cls.Config(**options))


def training_views(method: Method, resolved: Resolved) -> list[ViewSpec]:
    """The method's views at the resolved size and crop scale, with recipe/ablation overrides."""
    return [dataclasses.replace(v, **resolved.view_overrides)
            for v in method.views(resolved.image_size, resolved.crop_scale)]


def _load_split(cfg: TrainConfig) -> DataSplit:
    return load_data(cfg.data, subset=cfg.subset, seed=cfg.seed, root=cfg.data_root,
                     image_size=cfg.image_size, progress=cfg.progress)


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out or f"runs/{cfg.method}-{cfg.data.replace(':', '_').replace('/', '_')}-"
                          f"{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if cfg.resume:
        if not (out / "checkpoints" / "last.pt").exists():
            raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    elif out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"--out: run folder {out} exists; pass --resume to continue it or --overwrite "
                              "to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(config: TrainConfig | None = None, **options: Any) -> dict[str, Any]:
    """Pretrain, evaluate, and write a run folder; returns the summary (also in ``summary.json``).

    ``options`` are ``TrainConfig`` fields or method hyperparameters, e.g.
    ``train(method="byol", data="digits", epochs=5, tau_base=0.99)``. With ``resume=True`` and
    ``out=RUN_DIR`` the stored settings of that run are used and it continues from its checkpoint.
    """
    cfg = _merge(config or TrainConfig(), options)
    if cfg.resume and cfg.out and (Path(cfg.out) / "config.yaml").exists():
        stored = read_yaml(Path(cfg.out) / "config.yaml")["config"]
        cfg = dataclasses.replace(config_from_dict(stored), resume=True, overwrite=False, progress=cfg.progress)
    validate(cfg)
    split = _load_split(cfg)  # data errors surface before anything is written
    if cfg.batch_size > len(split.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(split.train)} training images")
    run_dir = _prepare_run_dir(cfg)
    resolved = resolve(cfg, split.train.image_size)
    mean, std = channel_stats(split)
    device = pick_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    write_yaml(run_dir / "config.yaml", {
        "config": config_to_dict(cfg), "resolved": dataclasses.asdict(resolved),
        "data": {"source": split.source, "train_images": len(split.train), "test_images": len(split.test),
                 "channels": split.train.channels, "native_size": split.train.image_size,
                 "classes": split.train.classes, "mean": mean, "std": std},
        "versions": versions()})
    if split.skipped:
        (run_dir / "skipped_files.txt").write_text("".join(f"{p}\t{r}\n" for p, r in split.skipped))
    method = build_method(cfg, resolved, split.train.channels)
    views = training_views(method, resolved)
    settings = LoopSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=resolved.optimizer,
                            lr=resolved.lr, weight_decay=resolved.weight_decay,
                            warmup_epochs=resolved.warmup_epochs, seed=cfg.seed, log_every=cfg.log_every,
                            checkpoint_every=cfg.checkpoint_every, device=str(device), precision=precision,
                            compile=cfg.compile, progress=cfg.progress)
    result = fit(method, split.train.images, views, mean, std, settings, run_dir=run_dir, resume=cfg.resume)
    summary: dict[str, Any] = {
        "method": cfg.method, "backbone": cfg.backbone, "width": cfg.width, "data": cfg.data,
        "data_source": split.source, "train_images": len(split.train), "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "steps": result.steps, "seconds": result.seconds,
        "images_per_second": result.images_per_second, "device": str(device), "precision": precision,
        "peak_memory_mb": _peak_memory_mb(device), "recipe": resolved.recipe, "versions": versions(),
        "final_metrics": result.last_metrics,
    }
    if split.skipped:
        summary["skipped_files"] = len(split.skipped)
    if cfg.eval_after and split.train.labels is not None:
        summary.update(_frozen_table(method.encoder, cfg, resolved, split, mean, std, device))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _frozen_table(encoder: nn.Module, cfg: TrainConfig, resolved: Resolved, split: DataSplit,
                  mean: list[float], std: list[float], device: torch.device,
                  protocols: Sequence[str] = PROTOCOLS_FROZEN) -> dict[str, float]:
    """Learned, random-init and raw-pixel scores, flat: ``knn_top1``, ``random_init_knn_top1``..."""
    size = resolved.image_size
    random_init = build_method(cfg, resolved, split.train.channels,
                               seed=derived_seed(cfg.seed, "random-init")).encoder
    out: dict[str, float] = {}
    for prefix, scores in (
            ("", evaluate_encoder(encoder, split, size, mean, std, protocols, device, cfg.seed)),
            ("random_init_", evaluate_encoder(random_init, split, size, mean, std, protocols, device, cfg.seed)),
            ("raw_pixels_", evaluate_raw_pixels(split, size, mean, std, protocols, cfg.seed))):
        out.update({prefix + k: v for k, v in scores.items()})
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def _merge(cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    plain = {k: v for k, v in options.items() if k in fields}
    method_options = {**cfg.method_options, **{k: v for k, v in options.items() if k not in fields}}
    return dataclasses.replace(cfg, **plain, method_options=method_options)


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder: settings from ``config.yaml``, weights from ``checkpoints/last.pt``."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "config.yaml"
    if not meta_path.exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no config.yaml)")
    meta = read_yaml(meta_path)
    cfg = config_from_dict(meta["config"])
    resolved_dict = dict(meta["resolved"])
    resolved_dict["crop_scale"] = tuple(resolved_dict["crop_scale"])
    resolved = Resolved(**resolved_dict)
    method = build_method(cfg, resolved, meta["data"]["channels"])
    state = safe_load(run_dir / "checkpoints" / "last.pt", map_location=device)
    method.load_state_dict(state["method"])
    method.to(device).eval()
    return Run(run_dir, cfg, resolved, meta["data"]["mean"], meta["data"]["std"], method)


def evaluate(run_dir: str | Path, protocol: str = "knn", data: str | None = None,
             device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score a run's frozen encoder (with random-init and raw-pixel baselines) on ``data``.

    Writes ``eval/<protocol>-<data>.json`` in the run folder and returns the same dict.
    """
    if protocol not in PROTOCOLS_FROZEN:
        raise ConfigError(f"--protocol: unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS_FROZEN)}")
    dev = pick_device(device)
    run = load_run(run_dir, device=str(dev))
    cfg = dataclasses.replace(run.config, data=data or run.config.data, progress=progress)
    split = _load_split(cfg)
    start = time.perf_counter()
    scores = _frozen_table(run.encoder, cfg, run.resolved, split, run.mean, run.std, dev, [protocol])
    result = {"protocol": protocol, "data": cfg.data, "data_source": split.source, "run": str(run.path),
              "train_images": len(split.train), "test_images": len(split.test), **scores,
              "seconds": time.perf_counter() - start}
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{protocol}-{cfg.data.replace(':', '_').replace('/', '_')}.json").write_text(json.dumps(result, indent=2))
    return result


def preview(data: str = "fashion-mnist", out: str | Path = "preview.png", method: str = "byol",
            image_size: int | None = None, recipe: str = "auto", crop_scale_min: float | None = None,
            n: int = 8, seed: int = 0, data_root: str | None = None) -> Path:
    """Write a PNG grid of images and the views ``method`` would train on."""
    from selfsup.reporting.preview import save_preview

    cfg = TrainConfig(method=method, data=data, image_size=image_size, recipe=recipe,
                      crop_scale_min=crop_scale_min, seed=seed, data_root=data_root, progress=False)
    validate(cfg)
    split = _load_split(cfg)
    resolved = resolve(cfg, split.train.image_size)
    views = training_views(build_method(cfg, resolved, split.train.channels), resolved)
    return save_preview(split.train, views, out, n=n, seed=seed)


DEMO_SETTINGS: dict[str, Any] = {"method": "byol", "backbone": "resnet18", "width": 0.25, "epochs": 5,
                                 "batch_size": 256}


def demo(out: str | Path = "runs/demo", epochs: int | None = None, subset: int | None = None,
         progress: bool = True) -> dict[str, Any]:
    """The README's first run: BYOL on Fashion-MNIST (10k images) when present, else digits.

    Replaces ``out`` if it exists, prints which data it used, and returns the summary.
    """
    from selfsup.data.sources import fashion_mnist_available

    if fashion_mnist_available():
        data, default_subset = "fashion-mnist", 10000
        print("demo: using Fashion-MNIST (found on this machine)")
    else:
        data, default_subset = "digits", None
        print("demo: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); using scikit-learn's digits")
    settings = {**DEMO_SETTINGS, "epochs": epochs or DEMO_SETTINGS["epochs"]}
    return train(data=data, subset=subset or default_subset, out=str(out), overwrite=True, progress=progress,
                 **settings)
