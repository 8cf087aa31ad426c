"""Pretraining a run end to end: check, write the run folder, train, score beside the baselines."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selfsup.config import ConfigError, Resolved, TrainConfig, config_to_dict, resolve, validate
from selfsup.data.dataset import DataSplit
from selfsup.evaluation.baselines import frozen_table
from selfsup.evaluation.frozen import evaluate_encoder
from selfsup.io import write_json_atomic
from selfsup.methods import METHODS, Method
from selfsup.models import encoder_at_stage
from selfsup.runs.build import (
    build_method,
    channel_stats,
    data_mode,
    default_init_differs,
    load_split,
    merge_options,
    random_init_encoder,
    stream_source,
    training_views,
    with_train_size,
)
from selfsup.runs.folder import run_dir_path, stored_config, training_run_folder, versions, write_run_config
from selfsup.train import distributed as dist_train
from selfsup.train.loop import FitResult, LoopSettings, fit


def train(config: TrainConfig | None = None, **options: Any) -> dict[str, Any]:
    """Pretrain, evaluate and write a run folder; returns the summary (see :func:`selfsup.api.train`)."""
    cfg = merge_options(config or TrainConfig(), options)
    if cfg.resume and cfg.out and (Path(cfg.out) / "config.yaml").exists():
        cfg = resumed_config(cfg, options)
    validate(cfg)
    if cfg.devices > 1 and not dist_train.launched_by_torchrun():
        return train_on_processes(cfg)
    info = dist_train.init_from_env(cfg.device)
    try:
        return train_this_process(cfg, info)
    finally:
        dist_train.teardown(barrier=False)


def resumed_config(cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """The stored settings of the run in ``cfg.out``, with what a resume may change."""
    stored = stored_config(cfg.out)
    epochs = options.get("epochs", stored.epochs)
    if epochs < stored.epochs:
        raise ConfigError(f"--epochs: a resumed run can only be extended; it was started with {stored.epochs}")
    return dataclasses.replace(stored, resume=True, overwrite=False, progress=cfg.progress, devices=cfg.devices,
                               epochs=epochs, eval_after=options.get("eval_after", stored.eval_after),
                               out=cfg.out)  # the folder named now, even if moved or copied


def train_on_processes(cfg: TrainConfig) -> dict[str, Any]:
    """``--devices N``: check what can be checked here, then run ``selfsup train`` on N processes."""
    if dist_train.pick_device(cfg.device).type == "cuda" and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"--devices: {cfg.devices} processes but {torch.cuda.device_count()} GPUs are visible")
    mode = data_mode(cfg)
    split = load_split(cfg, pretraining=True, mode=mode)  # data errors here, once (a folder's cache built once)
    if mode == "memory":
        _check_batch(cfg, split)
    out = run_dir_path(cfg)
    # a resumed run reads its stored settings; pass the ones a resume may change even at their defaults
    explicit = ("epochs", "eval_after") if cfg.resume else ()
    code = dist_train.launch(["train", *config_argv(dataclasses.replace(cfg, out=str(out)), explicit)], cfg.devices)
    if code:
        raise dist_train.DistributedRunFailed(code, cfg.devices)
    return json.loads((out / "summary.json").read_text())


def config_argv(cfg: TrainConfig, explicit: Sequence[str] = ()) -> list[str]:
    """``selfsup train`` flags that reproduce ``cfg`` (fields that differ from the defaults, and ``explicit``)."""
    defaults = TrainConfig()
    values = [(f.name, getattr(cfg, f.name), getattr(defaults, f.name)) for f in dataclasses.fields(TrainConfig)
              if f.name != "method_options"]
    values += [(name, value, None) for name, value in cfg.method_options.items()]
    argv: list[str] = []
    for name, value, default in values:
        if value is None or (value == default and name not in explicit):
            continue
        argv += option_flags(name, value)
    return argv


def option_flags(name: str, value: Any) -> list[str]:
    """One option as ``selfsup train`` flags: ``--batch-size 64``, ``--predictor`` / ``--no-predictor``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


def _check_batch(cfg: TrainConfig, split: DataSplit) -> None:
    if cfg.batch_size > len(split.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(split.train)} training images")


def _check_processes(cfg: TrainConfig, world: int) -> None:
    if dist_train.launched_by_torchrun() and cfg.devices > 1 and cfg.devices != world:
        raise ConfigError(f"--devices: {cfg.devices}, but torchrun started {world} processes")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size: the global batch {cfg.batch_size} does not split evenly over {world} "
                          "processes")


def train_this_process(cfg: TrainConfig, info: dist_train.DistInfo) -> dict[str, Any]:
    """One process's part of ``train`` (the only part without torchrun)."""
    _check_processes(cfg, info.world_size)
    mode = data_mode(cfg)
    split = load_split(cfg, pretraining=True, mode=mode)  # data errors surface before anything is written
    if mode == "memory":
        _check_batch(cfg, split)
    with training_run_folder(cfg, info) as run_dir:
        return _train_into(run_dir, cfg, info, mode, split)


def _train_into(run_dir: Path, cfg: TrainConfig, info: dist_train.DistInfo, mode: str,
                split: DataSplit) -> dict[str, Any]:
    """Train, score and write ``run_dir`` (locked by this run)."""
    resolved = with_train_size(resolve(cfg, split.train.image_size), cfg, split, mode)
    mean, std = channel_stats(split, cfg.method)
    settings = loop_settings(cfg, resolved, info)
    method = build_method(cfg, resolved, split.train.channels)
    views = training_views(method, resolved)
    images, labels, count = split.train.images, split.train.labels, len(split.train)
    if mode == "stream":
        images = stream_source(cfg, views, info.rank, info.world_size)
        labels, count = images.labels, images.num_images
    data = {"source": split.source, "mode": mode, "train_images": count}
    if info.is_main:
        _write_run_files(run_dir, cfg, resolved, split, data, mean, std, settings, info.world_size)
    hooks = [knn_check(split, resolved.image_size, mean, std, info.device, cfg.knn_every)] if cfg.knn_every else []
    try:
        result = fit(method, images, views, mean, std, settings, run_dir=run_dir, resume=cfg.resume, labels=labels,
                     epoch_hooks=hooks)
    finally:
        dist_train.revert_sync_batchnorm(method)  # plain BatchNorm again for evaluation
    summary = _summary(cfg, resolved, data, settings, result, info)
    if info.distributed:  # training is done everywhere; rank 0 evaluates alone, the others return
        dist_train.teardown()
        if not info.is_main:
            return summary
    if split.skipped:
        summary["skipped_files"] = len(split.skipped)
    if cfg.eval_after and split.train.labels is not None:
        summary.update(_final_scores(method, cfg, resolved, split, mean, std, info.device))
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def loop_settings(cfg: TrainConfig, resolved: Resolved, info: dist_train.DistInfo) -> LoopSettings:
    device = info.device
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    sync_bn = info.world_size > 1 and (cfg.sync_bn if cfg.sync_bn is not None else METHODS[cfg.method].sync_batchnorm)
    return LoopSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=resolved.optimizer,
                        lr=resolved.lr, weight_decay=resolved.weight_decay,
                        warmup_epochs=resolved.warmup_epochs, lars_eta=resolved.lars_eta,
                        lars_clip=resolved.lars_clip, seed=cfg.seed, log_every=cfg.log_every,
                        checkpoint_every=cfg.checkpoint_every, device=str(device), precision=precision,
                        compile=cfg.compile, progress=cfg.progress, online_probe=cfg.online_probe,
                        sync_bn=sync_bn, channels_last=cfg.channels_last)


def _write_run_files(run_dir: Path, cfg: TrainConfig, resolved: Resolved, split: DataSplit, data: dict[str, Any],
                     mean: list[float], std: list[float], settings: LoopSettings, world: int) -> None:
    """``config.yaml`` (what --resume, eval, export and report read back) and ``skipped_files.txt``."""
    write_run_config(run_dir, {
        "config": config_to_dict(cfg), "resolved": dataclasses.asdict(resolved),
        "data": {"source": split.source, "train_images": data["train_images"], "test_images": len(split.test),
                 "channels": split.train.channels, "native_size": split.train.image_size,
                 "classes": split.train.classes, "mean": mean, "std": std, "mode": data["mode"]},
        "distributed": {"processes": world, "batch_per_process": cfg.batch_size // world,
                        "sync_bn": settings.sync_bn},
        "versions": versions()})
    if split.skipped:
        (run_dir / "skipped_files.txt").write_text("".join(f"{p}\t{r}\n" for p, r in split.skipped))


def _summary(cfg: TrainConfig, resolved: Resolved, data: dict[str, Any], settings: LoopSettings,
             result: FitResult, info: dist_train.DistInfo) -> dict[str, Any]:
    device = info.device
    return {
        "method": cfg.method, "backbone": cfg.backbone, "width": cfg.width, "data": cfg.data,
        "data_source": data["source"], "data_mode": data["mode"], "train_images": data["train_images"],
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "steps": result.steps, "seconds": result.seconds,
        "images_per_second": result.images_per_second, "device": str(device), "precision": settings.precision,
        "peak_memory_mb": peak_memory_mb(device), "recipe": resolved.recipe, "versions": versions(),
        "final_metrics": result.last_metrics, "collapse_warning_steps": result.collapse_warning_steps,
        "processes": info.world_size, "sync_bn": settings.sync_bn,
    }


def _final_scores(method: Method, cfg: TrainConfig, resolved: Resolved, split: DataSplit, mean: list[float],
                  std: list[float], device: torch.device) -> dict[str, float]:
    """The end-of-run table: learned encoder and (with ``cfg.baselines``) the random-init and raw-pixel floors."""
    eval_split = load_split(cfg) if cfg.holdout_classes else split  # labels of every class
    random_init = default_init = None
    if cfg.baselines:
        random_init = random_init_encoder(cfg, resolved, split.train.channels)
        if default_init_differs(resolved):
            default_init = random_init_encoder(cfg, resolved, split.train.channels, default_init=True)
    at_layer = [None if e is None else encoder_at_stage(e, cfg.eval_layer)
                for e in (method.encoder, random_init, default_init)]
    scores = frozen_table(at_layer[0], eval_split, resolved.image_size, mean, std, device, cfg.seed,
                          cfg.eval_protocols.split(","), random_init=at_layer[1], default_init=at_layer[2])
    return {**scores, "test_images": len(eval_split.test), "eval_layer": cfg.eval_layer}


def knn_check(split: DataSplit, size: int, mean: list[float], std: list[float], device: torch.device,
              every: int) -> Callable[[int, int, Method], dict[str, float]]:
    """An epoch hook: kNN top-1 of the current encoder on the test split every ``every`` epochs."""

    def hook(epoch: int, step: int, method: Method) -> dict[str, float]:
        if (epoch + 1) % every or split.train.labels is None:
            return {}
        scores = evaluate_encoder(method.encoder, split, size, mean, std, ["knn"], device)
        return {"knn_top1": scores["knn_top1"]}

    return hook


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20
