"""Episodic few-shot training and its evaluation: ``selfsup fewshot`` (Python: :func:`train_fewshot`).

An episodic method (:class:`~selfsup.methods.protonet.ProtoNet`,
:class:`~selfsup.methods.crosstransformer.CrossTransformer`) learns from labelled episodes of the
*base* classes, drawn by :class:`~selfsup.data.episodes.EpisodeSampler`; the novel classes
(``holdout_classes``) never appear in training. A fraction ``simclr_episodes`` of the episodes are
SimCLR episodes (Doersch et al. 2020, Sec. 4). The backbone starts from scratch or from any selfsup
run (``init=RUN_DIR``: ``selfsup.runs.load_run(RUN_DIR).encoder``, its image size and normalisation),
so BYOL features can be fine-tuned episodically.

This is its own loop rather than a method of ``selfsup train``: that loop draws unlabelled batches
uniformly and augments every image with the same list of views, while an episode needs labels,
class-balanced draws, a support/query split, and (SimCLR episodes) different augmentations for
support and query images.

After training, the run is scored on episodes of the novel classes (5-way 1- and 5-shot, 15
queries, 600 episodes, mean and 95% CI as ``selfsup eval --protocol fewshot``; the CrossTransformer
classifies with its own head), on every domain of ``eval_data`` (all of its classes), and for
supervision collapse (:mod:`selfsup.evaluation.collapse`). ``eval_init`` scores the starting encoder
(random or pretrained) with Prototypical Networks on frozen features, for comparison.

The run folder holds ``fewshot.yaml`` (settings), ``metrics.jsonl``, ``checkpoints/fewshot.pt``,
``summary.json`` and ``collapse.png`` (``collapse-value.png`` on a CrossTransformer's value-head
features, ``collapse-init.png`` for the starting encoder); :func:`evaluate_fewshot_run` scores a
finished run again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from selfsup.config import SMALL_IMAGE_CROP_SCALE, SMALL_IMAGE_MAX, ConfigError
from selfsup.data.augment import augment, normalize, to_float
from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.episodes import Episode, EpisodeSampler, EpisodeSpec, simclr_episode, simclr_episode_views
from selfsup.data.sources import DataSpecError, load_data, parse_class_list
from selfsup.data.views import ViewSpec
from selfsup.evaluation.adapt import adapt_split
from selfsup.evaluation.collapse import measure_supervision_collapse
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.fewshot import crosstransformer_fewshot_eval, fewshot_eval
from selfsup.evaluation.frozen import eval_preprocess
from selfsup.io import write_json_atomic, write_yaml_atomic
from selfsup.methods.crosstransformer import CrossTransformer
from selfsup.methods.crosstransformer_head import SpatialEncoder
from selfsup.methods.protonet import EpisodicMethod, ProtoNet
from selfsup.models import BACKBONES, build_backbone
from selfsup.runs import channel_stats, load_run
from selfsup.seeds import derived_seed
from selfsup.train.checkpoint import atomic_save, safe_load
from selfsup.train.distributed import pick_device

__all__ = ["EPISODIC_METHODS", "EpisodicConfig", "train_fewshot", "load_fewshot_run", "fewshot_scores",
           "base_training_images", "episode_batch", "build_episodic_method", "lr_at", "starting_encoder",
           "frozen_feature_maps", "evaluate_fewshot_run"]

EPISODIC_METHODS: dict[str, type[EpisodicMethod]] = {m.name: m for m in (ProtoNet, CrossTransformer)}
SCHEDULES = ("step", "cosine")
CONFIG_FILE, CHECKPOINT = "fewshot.yaml", Path("checkpoints") / "fewshot.pt"


@dataclass
class EpisodicConfig:
    """Everything :func:`train_fewshot` needs; ``None`` means the method's / recipe's / init run's value.
    Each field is a ``selfsup fewshot`` flag (``simclr_episodes`` -> ``--simclr-episodes``)."""

    method: str = "protonet"  # protonet | crosstransformer
    init: str | None = None  # a selfsup run folder whose encoder to start from; None: from scratch
    data: str | None = None  # default: the init run's data, else fashion-mnist
    holdout_classes: str | None = None  # the novel classes, never in a training episode; default: the init run's
    subset: int | None = None  # base-class training images the episodes are drawn from (seeded); None: all
    image_size: int | None = None  # from scratch only (an init run fixes its own)
    backbone: str = "resnet18"  # from scratch only
    width: float = 1.0  # from scratch only
    recipe: str = "auto"  # paper | small | auto (small for images <= 64 px)
    episodes: int = 500  # training episodes (= optimiser steps)
    ways: int = 5
    shots: int = 5
    queries: int = 15
    variable_episodes: bool = False  # Meta-Dataset's variable ways and shots (ways = the least number of ways)
    simclr_episodes: float = 0.0  # fraction of SimCLR episodes (the paper: 0.5)
    key_dim: int | None = None  # CrossTransformer: key/query head width (128)
    value_dim: int | None = None  # CrossTransformer: value head width (128)
    high_res: bool | None = None  # CrossTransformer: dilated last stage (paper True; small recipe False)
    lr: float | None = None  # Adam lr (ProtoNet 1e-3, CrossTransformer 6e-4)
    weight_decay: float | None = None
    schedule: str | None = None  # step (the papers') | cosine (small recipe)
    eval_episodes: int = 600
    eval_ways: int = 5
    eval_shots: str = "1,5"
    eval_queries: int = 15
    eval_data: str | None = None  # more domains, comma-separated (e.g. "digits,folder:PATH"): episodes over all classes
    eval_pool: str = "all"  # images of the test episodes: all (train + test, as selfsup eval) | test (the test split)
    eval_init: bool = True  # also score the starting encoder (Prototypical Networks on its frozen features)
    collapse_k: int = 10
    collapse_queries: int = 1000
    seed: int = 0
    out: str | None = None
    overwrite: bool = False
    device: str = "auto"
    log_every: int = 10
    progress: bool = True


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"--{option.replace('_', '-')}: {message}")


def _shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        shots = []
    _check(bool(shots) and min(shots) >= 1, "eval_shots", f"must be a comma list of positive integers, got {text!r}")
    return shots


def validate(cfg: EpisodicConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad option."""
    _check(cfg.method in EPISODIC_METHODS, "method",
           f"unknown episodic method {cfg.method!r}; choose from {', '.join(EPISODIC_METHODS)}")
    _check(cfg.init is not None or cfg.backbone in BACKBONES, "backbone", f"unknown backbone {cfg.backbone!r}")
    _check(cfg.method != "crosstransformer" or cfg.init is not None or cfg.backbone.startswith("resnet"), "backbone",
           "the CrossTransformer reads a ResNet's feature maps")
    _check(cfg.recipe in ("auto", "paper", "small"), "recipe", "choose from auto, paper, small")
    for name in ("episodes", "eval_episodes", "eval_queries", "shots", "queries", "collapse_k", "log_every"):
        _check(getattr(cfg, name) >= 1, name, f"must be a positive integer, got {getattr(cfg, name)}")
    _check(cfg.ways >= 2 and cfg.eval_ways >= 2, "ways", "episodes need at least 2 ways")
    _check(0.0 <= cfg.simclr_episodes <= 1.0, "simclr_episodes", f"must be in [0, 1], got {cfg.simclr_episodes}")
    _check(cfg.width > 0, "width", f"must be positive, got {cfg.width}")
    _check(cfg.subset is None or cfg.subset > 0, "subset", f"must be positive, got {cfg.subset}")
    _check(cfg.lr is None or cfg.lr > 0, "lr", f"must be positive, got {cfg.lr}")
    _check(cfg.weight_decay is None or cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    _check(cfg.schedule is None or cfg.schedule in SCHEDULES, "schedule", f"choose from {', '.join(SCHEDULES)}")
    _check(cfg.collapse_queries >= 0, "collapse_queries", "must be >= 0")
    _check(cfg.eval_pool in ("all", "test"), "eval_pool", f"choose from all, test; got {cfg.eval_pool!r}")
    _shots(cfg.eval_shots)
    if cfg.holdout_classes is not None:
        try:
            parse_class_list(cfg.holdout_classes)
        except ValueError as e:
            raise ConfigError(f"--holdout-classes: {e}") from e


# ---------------------------------------------------------------------------------------------
# Building the model


@dataclass
class Start:
    """Where training starts: the encoder, how it reads images, and what it was pretrained on."""

    encoder: nn.Module
    encoder_spec: dict[str, Any]  # build_backbone arguments of the encoder (to load the run back)
    data: str
    image_size: int | None
    mean: list[float] | None
    std: list[float] | None
    holdout: list[int] | None  # classes the init run held out of pretraining (None: from scratch)
    source: str


def starting_encoder(cfg: EpisodicConfig, channels: int | None = None, image_size: int | None = None) -> Start:
    if cfg.init is None:
        size = image_size
        spec = dict(name=cfg.backbone, width=cfg.width, in_channels=channels, small_stem=size <= SMALL_IMAGE_MAX)
        torch.manual_seed(derived_seed(cfg.seed, "fewshot-init"))
        return Start(build_backbone(**spec), spec, cfg.data or "fashion-mnist", size, None, None, None,
                     "random initialisation")
    run = load_run(cfg.init)
    rc, rr = run.config, run.resolved
    spec = dict(name=rc.backbone, width=rc.width, in_channels=len(run.mean), small_stem=rr.small_stem, norm=rc.norm,
                zero_init_residual=rr.zero_init_residual)
    holdout = parse_class_list(rc.holdout_classes) if rc.holdout_classes else []
    encoder = run.encoder
    encoder.train()
    return Start(encoder, spec, rc.data, rr.image_size, list(run.mean), list(run.std), holdout,
                 f"{rc.method} run {cfg.init}")


def build_episodic_method(name: str, encoder: nn.Module, small: bool, options: dict[str, Any]) -> EpisodicMethod:
    """Method ``name`` around ``encoder``: the paper's Config, the small-image recipe when ``small``, then
    ``options`` (non-``None`` values that are fields of the Config)."""
    cls = EPISODIC_METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    values = dict(cls.SMALL_IMAGE_RECIPE) if small else {}
    values.update({k: v for k, v in options.items() if k in fields and v is not None})
    try:
        config = cls.Config(**values)
    except ValueError as e:
        raise ConfigError(f"{name} options: {e}") from e
    return cls(encoder, config)


def _optimizer_settings(cls: type[EpisodicMethod], cfg: EpisodicConfig, small: bool) -> dict[str, Any]:
    settings = {**cls.OPTIMIZER, **(cls.SMALL_IMAGE_OPTIMIZER if small else {})}
    for name in ("lr", "weight_decay", "schedule"):
        if getattr(cfg, name) is not None:
            settings[name] = getattr(cfg, name)
    return settings


def lr_at(step: int, total: int, settings: dict[str, Any]) -> float:
    """The lr of episode ``step``: step decay (``decay_rate`` every ``decay_every``) or a cosine to zero."""
    if settings["schedule"] == "cosine":
        return settings["lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
    return settings["lr"] * settings["decay_rate"] ** (step // settings["decay_every"])


# ---------------------------------------------------------------------------------------------
# Data


def _load(spec: str, size: int | None, channels: int | None, progress: bool) -> tuple[DataSplit, str]:
    try:
        split = load_data(spec, image_size=size if spec.startswith(("folder:", "store:")) else None, progress=progress)
    except DataSpecError as e:
        raise ConfigError(f"--data: {e}") from e
    if split.train.labels is None:
        raise ConfigError(f"--data: {spec!r} has no labels; episodes need them")
    if channels is None or size is None:
        return split, "unchanged"
    return adapt_split(split, channels, size)


def base_training_images(split: DataSplit, base: Sequence[int], subset: int | None = None,
                         seed: int = 0) -> ImageDataset:
    """The training images of the ``base`` classes only (a ``seed``-drawn ``subset`` of them when given):
    every training episode is drawn from these, so no novel class is ever seen."""
    train = split.train.select(torch.isin(split.train.labels, torch.tensor(list(base))).nonzero().squeeze(1))
    if subset is not None:
        _check(subset <= len(train), "subset", f"only {len(train)} base-class training images")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:subset]
        train = train.select(pick.sort().values)
    return train


def episode_batch(images: torch.Tensor, episode: Episode, size: int, simclr: bool = False,
                  views: tuple[ViewSpec, ViewSpec] | None = None, generator: torch.Generator | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(support, support_labels, query, query_labels)``: float images in [0, 1] (not normalised).

    A plain episode's images are taken as they are (resized to ``size``); a SimCLR episode
    (``simclr=True``, :func:`~selfsup.data.episodes.simclr_episode`) augments its support images with
    ``views[0]`` and its queries, copies of support images, with ``views[1]`` (drawn from ``generator``)."""
    device = images.device
    if not simclr:
        return (to_float(images[episode.support.to(device)], size), episode.support_labels,
                to_float(images[episode.query.to(device)], size), episode.query_labels)
    if views is None or generator is None:
        raise ValueError("a SimCLR episode needs its two views and a generator")
    e = simclr_episode(episode)
    support = augment(images[e.support.to(device)], views[0], generator)
    query = augment(images[e.query.to(device)], views[1], generator)
    return support, e.support_labels, query, e.query_labels


# ---------------------------------------------------------------------------------------------
# Training


def train_fewshot(config: EpisodicConfig | None = None, **options: Any) -> dict[str, Any]:
    """Train an episodic few-shot method and score it; returns the summary (also ``summary.json``).

    ``selfsup fewshot`` calls this with an :class:`EpisodicConfig` built from its flags; in Python,
    ``train_fewshot(method="crosstransformer", init="runs/byol", simclr_episodes=0.5, out="runs/ctx")``.
    """
    cfg = dataclasses.replace(config or EpisodicConfig(), **options)
    validate(cfg)
    log = print if cfg.progress else (lambda message: None)
    device = pick_device(cfg.device)
    if cfg.init is not None:
        start = starting_encoder(cfg)
        data = cfg.data or start.data
        _check(cfg.image_size in (None, start.image_size), "image_size",
               f"the init run reads {start.image_size}-px images, got {cfg.image_size}")
        split, adapted = _load(data, start.image_size, start.encoder_spec["in_channels"], cfg.progress)
    else:
        data = cfg.data or "fashion-mnist"
        split, adapted = _load(data, cfg.image_size, None, cfg.progress)
        if cfg.image_size is not None and split.train.image_size != cfg.image_size:
            split, adapted = adapt_split(split, split.train.channels, cfg.image_size)
        start = starting_encoder(cfg, split.train.channels, split.train.image_size)
    size, channels = start.image_size, start.encoder_spec["in_channels"]
    holdout = cfg.holdout_classes or (",".join(map(str, start.holdout)) if start.holdout else None)
    _check(holdout is not None, "holdout_classes", "name the novel classes (e.g. 5-9): they are kept out of the "
           "training episodes and the few-shot test is on them")
    novel = parse_class_list(holdout)
    if start.holdout is not None and data.strip().lower() == start.data.strip().lower():
        leaked = sorted(set(novel) - set(start.holdout))
        _check(not leaked, "holdout_classes", f"the init run pretrained on classes {leaked} of {data!r}, which would "
               "be novel here; pretrain with --holdout-classes covering them")
    all_classes = sorted(set(split.train.labels.unique().tolist()))
    base = [c for c in all_classes if c not in novel]
    missing = sorted(set(novel) - set(all_classes))
    _check(not missing, "holdout_classes", f"classes {missing} are not in {data!r} (classes {all_classes})")
    _check(len(novel) >= cfg.eval_ways, "holdout_classes", f"{cfg.eval_ways}-way test episodes need {cfg.eval_ways} "
           f"novel classes, got {novel}")
    _check(len(base) >= cfg.ways, "ways", f"{cfg.ways}-way training episodes need {cfg.ways} base classes; "
           f"{data!r} has {len(base)} ({base})")
    train = base_training_images(split, base, cfg.subset, cfg.seed)
    if start.mean is None:
        start.mean, start.std = channel_stats(DataSplit(train=train, test=split.test, source=split.source))
    small = cfg.recipe == "small" or (cfg.recipe == "auto" and size <= SMALL_IMAGE_MAX)
    method = build_episodic_method(cfg.method, start.encoder, small, dataclasses.asdict(cfg)).to(device)
    optim_settings = _optimizer_settings(type(method), cfg, small)

    run_dir = _prepare_run_dir(cfg)
    settings = {"config": dataclasses.asdict(cfg), "resolved": {
        "data": data, "holdout_classes": novel, "base_classes": base, "image_size": size, "channels": channels,
        "recipe": "small" if small else "paper", "method_config": dataclasses.asdict(method.config),
        "optimizer": {"name": "adam", **optim_settings}, "encoder": start.encoder_spec, "init": start.source,
        "mean": start.mean, "std": start.std, "train_images": len(train), "adapted": adapted,
        "data_source": split.source}}
    write_yaml_atomic(run_dir / CONFIG_FILE, settings)
    log(f"{cfg.method}: {cfg.episodes} episodes on base classes {base} of {data} ({len(train)} images), "
        f"novel classes {novel}; from {start.source}")

    spec = EpisodeSpec(ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, variable=cfg.variable_episodes)
    fit = _fit(method, train.images.to(device), train.labels, spec, cfg, optim_settings, size, start.mean, start.std,
               small, run_dir / "metrics.jsonl", device, log)
    method.eval()
    atomic_save({"method": method.state_dict(), "settings": settings}, run_dir / CHECKPOINT)

    log("scoring on novel-class episodes" + (f" and {cfg.eval_data}" if cfg.eval_data else ""))
    scores = fewshot_scores(method, cfg, split, novel, size, channels, start.mean, start.std, device, run_dir,
                            initial=starting_encoder(cfg, channels, size).encoder if cfg.eval_init else None)
    summary = {"method": cfg.method, "init": start.source, "simclr_episodes": cfg.simclr_episodes, "data": data,
               "novel_classes": novel, "base_classes": base, **fit, **scores}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _prepare_run_dir(cfg: EpisodicConfig) -> Path:
    out = Path(cfg.out or f"runs/fewshot-{cfg.method}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        _check(cfg.overwrite, "out", f"run folder {out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _fit(method: EpisodicMethod, images: torch.Tensor, labels: torch.Tensor, spec: EpisodeSpec, cfg: EpisodicConfig,
         optim_settings: dict[str, Any], size: int, mean: Sequence[float], std: Sequence[float], small: bool,
         metrics_path: Path, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    sampler = EpisodeSampler(labels, spec=spec, seed=derived_seed(cfg.seed, "episodes"))
    coin = torch.Generator().manual_seed(derived_seed(cfg.seed, "simclr-episodes"))
    aug = torch.Generator().manual_seed(derived_seed(cfg.seed, "augment"))
    views = simclr_episode_views(size, SMALL_IMAGE_CROP_SCALE if small else (0.08, 1.0))
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=optim_settings["lr"],
                                 weight_decay=optim_settings["weight_decay"])
    method.train()
    started, images_seen, simclr_count = time.perf_counter(), 0, 0
    window: list[tuple[float, float]] = []
    steps = range(cfg.episodes)
    bar = tqdm(steps, desc=cfg.method, unit="episode", disable=not cfg.progress, leave=False)
    with open(metrics_path, "w", encoding="utf-8") as metrics:
        for step in bar:
            episode = sampler.sample()
            simclr = cfg.simclr_episodes > 0 and float(torch.rand((), generator=coin)) < cfg.simclr_episodes
            support, support_labels, query, query_labels = episode_batch(images, episode, size, simclr, views, aug)
            support, query = normalize(support, mean, std), normalize(query, mean, std)
            lr = lr_at(step, cfg.episodes, optim_settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, accuracy = method.episode_loss(support, support_labels.to(device), query, query_labels.to(device))
            if not torch.isfinite(loss):
                raise RuntimeError(f"episode {step}: the loss is {float(loss)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += len(support) + len(query)
            simclr_count += simclr
            window.append((float(loss.detach()), float(accuracy)))
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.episodes:
                mean_loss = sum(w[0] for w in window) / len(window)
                mean_acc = sum(w[1] for w in window) / len(window)
                record = {"step": step + 1, "loss": mean_loss, "episode_accuracy": mean_acc, "lr": lr,
                          "simclr_fraction": simclr_count / (step + 1), "seconds": time.perf_counter() - started}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.2f}")
                window = []
    seconds = time.perf_counter() - started
    log(f"trained {cfg.episodes} episodes in {seconds:.0f} s ({images_seen / seconds:.0f} images/s); "
        f"last episodes: loss {mean_loss:.3f}, accuracy {mean_acc:.3f}")
    return {"episodes": cfg.episodes, "train_seconds": seconds, "images_per_second": images_seen / seconds,
            "simclr_episodes_done": simclr_count, "final_loss": mean_loss, "final_episode_accuracy": mean_acc}


# ---------------------------------------------------------------------------------------------
# Scoring


def _pool(split: DataSplit, classes: Sequence[int] | None, which: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of train + test (``which="all"``, the few-shot pool of ``selfsup eval --protocol
    fewshot``) or of the test split, restricted to ``classes`` (all when ``None``)."""
    parts = [split.test] if which == "test" else [split.train, split.test]
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    if classes is None:
        return images, labels
    keep = torch.isin(labels, torch.tensor(list(classes))).nonzero().squeeze(1)
    return images[keep], labels[keep]


def frozen_feature_maps(encoder: nn.Module, images: torch.Tensor, size: int, mean: Sequence[float],
                        std: Sequence[float], device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """Feature maps ``[N, C, H, W]`` of the frozen encoder, kept in float16 (they can be large)."""
    spatial, pre = SpatialEncoder(encoder), eval_preprocess(size, mean, std)
    shape = spatial(pre(images[:1].to(device))).shape[1:] if len(images) else ()
    parts = [extract_features(spatial, images[i:i + chunk], pre, device=device).half().view(-1, *shape)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def _episode_scores(method: EpisodicMethod | None, encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    cfg: EpisodicConfig, size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                    prefix: str) -> dict[str, float]:
    """``{prefix}fewshot_<W>way_<K>shot`` and ``_ci95`` for each test shot: the CrossTransformer's head for a
    CrossTransformer, else Prototypical Networks on the frozen pooled features."""
    scores: dict[str, float] = {}
    if isinstance(method, CrossTransformer):
        feats = frozen_feature_maps(encoder, images, size, mean, std, device)
        run = lambda shot: crosstransformer_fewshot_eval(  # noqa: E731
            feats, labels, method.head, cfg.eval_ways, shot, cfg.eval_queries, cfg.eval_episodes, cfg.seed)
    else:
        feats = extract_features(encoder, images, eval_preprocess(size, mean, std), device=device)
        run = lambda shot: fewshot_eval(  # noqa: E731
            feats, labels, cfg.eval_ways, shot, cfg.eval_queries, cfg.eval_episodes, cfg.seed)
    for shot in _shots(cfg.eval_shots):
        r = run(shot)
        key = f"{prefix}fewshot_{cfg.eval_ways}way_{shot}shot"
        scores[key], scores[key + "_ci95"] = r.mean, r.ci95
    return scores


def fewshot_scores(method: EpisodicMethod, cfg: EpisodicConfig, split: DataSplit, novel: Sequence[int], size: int,
                   channels: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                   run_dir: Path | None = None, initial: nn.Module | None = None) -> dict[str, Any]:
    """Few-shot accuracy on the novel classes of ``split`` and on each ``cfg.eval_data`` domain, and supervision
    collapse on ``split``'s test images (with ``run_dir``, its figure as ``collapse.png``); the same for the
    ``initial`` encoder (prefix ``init_``, Prototypical Networks on frozen features) when given."""
    images, labels = _pool(split, novel, cfg.eval_pool)
    domains = [d.strip() for d in (cfg.eval_data or "").split(",") if d.strip()]
    loaded = {d: _load(d, size, channels, False)[0] for d in domains}
    names = split.train.classes
    scores: dict[str, Any] = {}
    for prefix, model, encoder in (("", method, method.encoder), ("init_", None, initial)):
        if encoder is None:
            continue
        encoder.to(device).eval()
        scores.update(_episode_scores(model, encoder, images, labels, cfg, size, mean, std, device, prefix))
        for domain, other in loaded.items():
            d_images, d_labels = _pool(other, None, cfg.eval_pool)
            tag = domain.split(":")[0].replace("-", "_")
            scores.update(_episode_scores(model, encoder, d_images, d_labels, cfg, size, mean, std, device,
                                          f"{prefix}{tag}_"))
        if not cfg.collapse_queries:
            continue
        what = "starting encoder" if prefix else cfg.method
        views = [(prefix, encoder, f"{what}, pooled backbone features")]
        if model is not None and isinstance(model, CrossTransformer):
            views.append(("value_", _Call(model.value_embedding), f"{what}, pooled value-head features"))
        for key, embedder, title in views:
            result, figure = measure_supervision_collapse(
                embedder, split.test.images, split.test.labels, novel, size, mean, std, k=cfg.collapse_k,
                queries=cfg.collapse_queries, seed=cfg.seed, device=device, class_names=names,
                figure_queries=8 if run_dir is not None else 0,
                title=f"{title}: nearest test images of novel-class queries (green own class, amber other novel "
                      "class, red base class)")
            scores.update({f"{key}collapse_{k}": v for k, v in result.as_dict().items()
                           if k in ("same_class", "other_novel", "base", "chance_same_class", "chance_base")})
            if figure is not None and run_dir is not None:
                figure.savefig(run_dir / f"collapse{'-' + key.rstrip('_') if key else ''}.png", dpi=90)
    return scores


class _Call(nn.Module):
    """A bound method of a module as a module (what feature extraction takes)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.owner, self.fn = fn.__self__, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def evaluate_fewshot_run(run_dir: str | Path, device: str = "auto", **overrides: Any) -> dict[str, Any]:
    """Score a ``selfsup fewshot`` run folder again (``overrides``: evaluation fields of :class:`EpisodicConfig`,
    e.g. ``eval_data="digits"``, ``eval_episodes=1000``); its ``summary.json`` is updated with the scores."""
    run_dir = Path(run_dir)
    method, settings = load_fewshot_run(run_dir, "cpu")
    cfg = dataclasses.replace(EpisodicConfig(**settings["config"]), **overrides)
    validate(cfg)
    r = settings["resolved"]
    split, _ = _load(r["data"], r["image_size"], r["channels"], False)
    target = pick_device(device)
    initial = starting_encoder(cfg, r["channels"], r["image_size"]).encoder if cfg.eval_init else None
    scores = fewshot_scores(method.to(target), cfg, split, r["holdout_classes"], r["image_size"], r["channels"],
                            r["mean"], r["std"], target, run_dir, initial)
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    write_json_atomic(path, {**summary, **scores})
    return scores


def load_fewshot_run(run_dir: str | Path, device: str = "cpu") -> tuple[EpisodicMethod, dict[str, Any]]:
    """The trained method of a ``selfsup fewshot`` run folder (eval mode) and its settings."""
    state = safe_load(Path(run_dir) / CHECKPOINT, map_location=device)
    settings = state["settings"]
    resolved = settings["resolved"]
    encoder = build_backbone(**resolved["encoder"])
    cls = EPISODIC_METHODS[settings["config"]["method"]]
    method = cls(encoder, cls.Config(**resolved["method_config"]))
    method.load_state_dict(state["method"])
    return method.to(device).eval(), settings
