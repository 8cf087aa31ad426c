"""What a run is built from: its data, its method (backbone + heads) and views, its random-init floor."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from selfsup.config import ConfigError, Resolved, TrainConfig
from selfsup.data.dataset import DataSplit
from selfsup.data.folder import DEFAULT_IMAGE_SIZE
from selfsup.data.sources import load_data, store_path
from selfsup.data.store import Store, StoreError
from selfsup.data.stream import StreamSource
from selfsup.data.views import ViewSpec
from selfsup.methods import METHODS, Method
from selfsup.models import build_backbone
from selfsup.seeds import derived_seed


def merge_options(cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """``cfg`` with ``options`` applied: ``TrainConfig`` fields, the rest as method hyperparameters."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    plain = {k: v for k, v in options.items() if k in fields}
    method_options = {**cfg.method_options, **{k: v for k, v in options.items() if k not in fields}}
    return dataclasses.replace(cfg, **plain, method_options=method_options)


# Streaming: the training rows decoded for the end-of-run kNN / linear probe (the test split is whole),
# and the decoded size above which ``--data-mode auto`` streams a store instead of holding it.
STREAM_EVAL_TRAIN_IMAGES = 10000
MEMORY_MODE_MAX_BYTES = 4 * 2**30


def data_mode(cfg: TrainConfig) -> str:
    """``memory`` or ``stream``: ``cfg.data_mode``, or for ``auto`` whether the decoded store would fit."""
    store = store_path(cfg.data)
    if store is None:
        if cfg.data_mode == "stream":
            raise ConfigError(f"--data-mode stream: {cfg.data} is not a store; build one with "
                              "`selfsup convert folder:PATH --out STORE` and train with --data store:STORE")
        return "memory"
    if cfg.data_mode != "auto":
        return cfg.data_mode
    try:
        reader = Store(store, "train")
    except StoreError as e:
        raise ConfigError(f"--data: {e}") from e
    size = cfg.image_size or DEFAULT_IMAGE_SIZE
    return "stream" if len(reader) * reader.channels * size * size > MEMORY_MODE_MAX_BYTES else "memory"


def load_split(cfg: TrainConfig, pretraining: bool = False, mode: str = "memory") -> DataSplit:
    """The run's data; ``pretraining=True`` also removes ``cfg.holdout_classes`` from train. In
    ``stream`` mode only the rows the final evaluation scores are decoded (``STREAM_EVAL_TRAIN_IMAGES``)."""
    if mode == "stream" and (cfg.subset or cfg.holdout_classes):
        raise ConfigError("--data-mode stream: --subset and --holdout-classes need the in-memory path "
                          "(--data-mode memory)")
    return load_data(cfg.data, subset=cfg.subset, seed=cfg.seed, root=cfg.data_root,
                     image_size=cfg.image_size, progress=cfg.progress,
                     holdout_classes=cfg.holdout_classes if pretraining else None,
                     max_train=STREAM_EVAL_TRAIN_IMAGES if mode == "stream" else None)


def stream_source(cfg: TrainConfig, views: list[ViewSpec], rank: int, world_size: int) -> StreamSource:
    """The training batches of a streamed store for this process (crops drawn on the full images)."""
    try:
        return StreamSource(store_path(cfg.data), views, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size,
                            workers=cfg.data_workers)
    except StoreError as e:
        raise ConfigError(f"--data: {e}") from e


def channel_stats(split: DataSplit, method: str | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images, in [0, 1] units; for a ``method`` that fixes its
    pixel scaling (``INPUT_NORMALIZATION = (mean, std)``, e.g. colorization reads RGB in [0, 1]) those values."""
    fixed = getattr(METHODS[method], "INPUT_NORMALIZATION", None) if method else None
    if fixed is not None:
        return [float(fixed[0])] * split.train.channels, [float(fixed[1])] * split.train.channels
    x = split.train.images.float().div_(255).transpose(0, 1).flatten(1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def build_method(cfg: TrainConfig, resolved: Resolved, in_channels: int, seed: int | None = None) -> Method:
    """Backbone + method heads, initialised from ``seed`` (default: the config's)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    encoder = build_backbone(cfg.backbone, width=cfg.width, in_channels=in_channels,
                             small_stem=resolved.small_stem, norm=cfg.norm,
                             grad_checkpointing=cfg.grad_checkpointing,
                             zero_init_residual=resolved.zero_init_residual, image_size=resolved.image_size)
    method_cls = METHODS[cfg.method]
    options = dict(resolved.method_options)
    if "head_norm" in options and cfg.norm != "batchnorm" and "head_norm" not in cfg.method_options:
        options["head_norm"] = cfg.norm
    return method_cls(encoder, method_cls.Config(**options))


def with_train_size(resolved: Resolved, cfg: TrainConfig, split: DataSplit, mode: str) -> Resolved:
    """``resolved`` with a method option ``num_instances`` left at 0 set to the number of training images
    (Exemplar-CNN's classifier has one class per image), so that ``config.yaml`` records it."""
    if resolved.method_options.get("num_instances") != 0:
        return resolved
    count = len(Store(store_path(cfg.data), "train")) if mode == "stream" else len(split.train)
    return dataclasses.replace(resolved, method_options={**resolved.method_options, "num_instances": count})


def training_views(method: Method, resolved: Resolved) -> list[ViewSpec]:
    """The method's views at the resolved size and crop scale, with recipe/ablation overrides."""
    return [dataclasses.replace(v, **resolved.view_overrides)
            for v in method.views(resolved.image_size, resolved.crop_scale)]


def random_init_encoder(cfg: TrainConfig, resolved: Resolved, in_channels: int,
                        default_init: bool = False) -> nn.Module:
    """The run's backbone at initialisation, from a seed of its own: every comparison's floor.
    ``default_init``: at the framework's default initialisation instead (torchvision's: no
    zero-initialised residual blocks), the same random weights otherwise."""
    if default_init:
        resolved = dataclasses.replace(resolved, zero_init_residual=False)
    return build_method(cfg, resolved, in_channels, seed=derived_seed(cfg.seed, "random-init")).encoder


def default_init_differs(resolved: Resolved) -> bool:
    """Whether the run's initialisation differs from the framework's default (so both floors are shown)."""
    return bool(resolved.zero_init_residual)
