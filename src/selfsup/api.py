"""The Python API; ``selfsup.cli`` mirrors it one to one."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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
from selfsup.train import distributed as dist_train
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
                             small_stem=resolved.small_stem, norm=cfg.norm,
                             grad_checkpointing=cfg.grad_checkpointing,
                             zero_init_residual=resolved.zero_init_residual)
    method_cls = METHODS[cfg.method]
    options = {k: v for k, v in resolved.method_options.items()}
    if "head_norm" in options and cfg.norm != "batchnorm" and "head_norm" not in cfg.method_options:
        options["head_norm"] = cfg.norm
    return method_cls(encoder, method_cls.Config(**options))


def training_views(method: Method, resolved: Resolved) -> list[ViewSpec]:
    """The method's views at the resolved size and crop scale, with recipe/ablation overrides."""
    return [dataclasses.replace(v, **resolved.view_overrides)
            for v in method.views(resolved.image_size, resolved.crop_scale)]


def _load_split(cfg: TrainConfig, pretraining: bool = False) -> DataSplit:
    """The run's data; ``pretraining=True`` also removes ``cfg.holdout_classes`` from train."""
    return load_data(cfg.data, subset=cfg.subset, seed=cfg.seed, root=cfg.data_root,
                     image_size=cfg.image_size, progress=cfg.progress,
                     holdout_classes=cfg.holdout_classes if pretraining else None)


def _run_dir_path(cfg: TrainConfig) -> Path:
    """The run folder ``cfg`` asks for (a new timestamped name without ``out``), checked, nothing written."""
    out = Path(cfg.out or f"runs/{cfg.method}-{cfg.data.replace(':', '_').replace('/', '_')}-"
                          f"{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if cfg.resume:
        if not (out / "checkpoints" / "last.pt").exists():
            raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'} (the run stopped before its first "
                              "checkpoint); start it again with --overwrite")
    elif out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"--out: run folder {out} exists; pass --resume to continue it or --overwrite "
                              "to replace it")
    return out


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    out = _run_dir_path(cfg)
    if not cfg.resume and out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # --overwrite (checked above)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _prepare_run_dir_on_main(cfg: TrainConfig, info: dist_train.DistInfo) -> Path:
    """Rank 0 checks and creates the run folder; every process gets its path (or the same ConfigError)."""
    if not info.distributed:
        return _prepare_run_dir(cfg)
    outcome: tuple[str, str] | None = None
    if info.is_main:
        try:
            outcome = ("ok", str(_prepare_run_dir(cfg)))
        except ConfigError as err:
            outcome = ("error", str(err))
    outcome = dist_train.broadcast_object(outcome)
    if outcome[0] == "error":
        raise ConfigError(outcome[1])
    return Path(outcome[1])


def _write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """--resume reads config.yaml back: a run killed while rewriting it must leave the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_yaml(tmp, data)
    tmp.replace(path)


def train(config: TrainConfig | None = None, **options: Any) -> dict[str, Any]:
    """Pretrain, evaluate, and write a run folder; returns the summary (also in ``summary.json``).

    ``options`` are ``TrainConfig`` fields or method hyperparameters, e.g.
    ``train(method="byol", data="digits", epochs=5, tau_base=0.99)``. With ``resume=True`` and
    ``out=RUN_DIR`` the stored settings of that run are used and it continues from its checkpoint
    (on any number of processes; an ``epochs`` given with it extends the run, an ``eval_after``
    given with it applies).

    ``devices=N`` (N > 1) starts N processes through ``torch.distributed.run`` and returns rank 0's
    summary. In a process started by torchrun each process calls ``train``: ``batch_size`` is the
    global batch, split evenly over the processes; rank 0 alone writes the run folder and evaluates.
    """
    cfg = _merge(config or TrainConfig(), options)
    if cfg.resume and cfg.out and (Path(cfg.out) / "config.yaml").exists():
        stored = config_from_dict(read_yaml(Path(cfg.out) / "config.yaml")["config"])
        epochs = options.get("epochs", stored.epochs)
        if epochs < stored.epochs:
            raise ConfigError(f"--epochs: a resumed run can only be extended; it was started with {stored.epochs}")
        cfg = dataclasses.replace(stored, resume=True, overwrite=False, progress=cfg.progress, devices=cfg.devices,
                                  epochs=epochs, eval_after=options.get("eval_after", stored.eval_after),
                                  out=cfg.out)  # the folder named now, even if moved or copied
    validate(cfg)
    if cfg.devices > 1 and not dist_train.launched_by_torchrun():
        return _train_on_processes(cfg)
    info = dist_train.init_from_env(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        dist_train.teardown(barrier=False)


def _train_on_processes(cfg: TrainConfig) -> dict[str, Any]:
    """``--devices N``: check what can be checked here, then run ``selfsup train`` on N processes."""
    if pick_device(cfg.device).type == "cuda" and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"--devices: {cfg.devices} processes but {torch.cuda.device_count()} GPUs are visible")
    split = _load_split(cfg, pretraining=True)  # data errors here, once (and a folder's cache is built once)
    if cfg.batch_size > len(split.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(split.train)} training images")
    del split
    out = _run_dir_path(cfg)
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
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def _train(cfg: TrainConfig, info: dist_train.DistInfo) -> dict[str, Any]:
    """One process's part of ``train`` (the only part without torchrun)."""
    world = info.world_size
    if dist_train.launched_by_torchrun() and cfg.devices > 1 and cfg.devices != world:
        raise ConfigError(f"--devices: {cfg.devices}, but torchrun started {world} processes")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size: the global batch {cfg.batch_size} does not split evenly over {world} "
                          "processes")
    split = _load_split(cfg, pretraining=True)  # data errors surface before anything is written
    if cfg.batch_size > len(split.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(split.train)} training images")
    run_dir = _prepare_run_dir_on_main(cfg, info)
    resolved = resolve(cfg, split.train.image_size)
    mean, std = channel_stats(split)
    device = info.device
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    sync_bn = world > 1 and (cfg.sync_bn if cfg.sync_bn is not None else METHODS[cfg.method].sync_batchnorm)
    if info.is_main:
        _write_yaml_atomic(run_dir / "config.yaml", {
            "config": config_to_dict(cfg), "resolved": dataclasses.asdict(resolved),
            "data": {"source": split.source, "train_images": len(split.train), "test_images": len(split.test),
                     "channels": split.train.channels, "native_size": split.train.image_size,
                     "classes": split.train.classes, "mean": mean, "std": std},
            "distributed": {"processes": world, "batch_per_process": cfg.batch_size // world, "sync_bn": sync_bn},
            "versions": versions()})
        if split.skipped:
            (run_dir / "skipped_files.txt").write_text("".join(f"{p}\t{r}\n" for p, r in split.skipped))
    method = build_method(cfg, resolved, split.train.channels)
    views = training_views(method, resolved)
    settings = LoopSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=resolved.optimizer,
                            lr=resolved.lr, weight_decay=resolved.weight_decay,
                            warmup_epochs=resolved.warmup_epochs, lars_eta=resolved.lars_eta,
                            lars_clip=resolved.lars_clip, seed=cfg.seed, log_every=cfg.log_every,
                            checkpoint_every=cfg.checkpoint_every, device=str(device), precision=precision,
                            compile=cfg.compile, progress=cfg.progress, online_probe=cfg.online_probe,
                            sync_bn=sync_bn, channels_last=cfg.channels_last)
    hooks = [knn_check(split, resolved.image_size, mean, std, device, cfg.knn_every)] if cfg.knn_every else []
    try:
        result = fit(method, split.train.images, views, mean, std, settings, run_dir=run_dir, resume=cfg.resume,
                     labels=split.train.labels, epoch_hooks=hooks)
    finally:
        dist_train.revert_sync_batchnorm(method)  # plain BatchNorm again for evaluation
    summary: dict[str, Any] = {
        "method": cfg.method, "backbone": cfg.backbone, "width": cfg.width, "data": cfg.data,
        "data_source": split.source, "train_images": len(split.train), "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "steps": result.steps, "seconds": result.seconds,
        "images_per_second": result.images_per_second, "device": str(device), "precision": precision,
        "peak_memory_mb": _peak_memory_mb(device), "recipe": resolved.recipe, "versions": versions(),
        "final_metrics": result.last_metrics, "collapse_warning_steps": result.collapse_warning_steps,
        "processes": world, "sync_bn": sync_bn,
    }
    if world > 1:  # training is done everywhere; rank 0 evaluates alone, the others return
        dist_train.teardown()
        if not info.is_main:
            return summary
    if split.skipped:
        summary["skipped_files"] = len(split.skipped)
    if cfg.eval_after and split.train.labels is not None:
        eval_split = _load_split(cfg) if cfg.holdout_classes else split  # labels of every class
        summary.update(_frozen_table(method.encoder, cfg, resolved, eval_split, mean, std, device,
                                     protocols=cfg.eval_protocols.split(","), baselines=cfg.baselines))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def knn_check(split: DataSplit, size: int, mean: list[float], std: list[float], device: torch.device,
              every: int) -> Callable[[int, int, Method], dict[str, float]]:
    """An epoch hook: kNN top-1 of the current encoder on the test split every ``every`` epochs."""

    def hook(epoch: int, step: int, method: Method) -> dict[str, float]:
        if (epoch + 1) % every or split.train.labels is None:
            return {}
        scores = evaluate_encoder(method.encoder, split, size, mean, std, ["knn"], device)
        return {"knn_top1": scores["knn_top1"]}

    return hook


def random_init_encoder(cfg: TrainConfig, resolved: Resolved, in_channels: int) -> nn.Module:
    """The run's backbone at initialisation, from a seed of its own: every comparison's floor."""
    return build_method(cfg, resolved, in_channels, seed=derived_seed(cfg.seed, "random-init")).encoder


def baseline_scores(cfg: TrainConfig, resolved: Resolved, split: DataSplit, mean: list[float], std: list[float],
                    device: torch.device, protocols: Sequence[str] = PROTOCOLS_FROZEN) -> dict[str, float]:
    """The floors every learned encoder is compared with, flat: ``random_init_knn_top1``,
    ``raw_pixels_linear_top1``...: a random-init encoder of the run's architecture, and raw pixels."""
    size = resolved.image_size
    random_init = random_init_encoder(cfg, resolved, split.train.channels)
    out: dict[str, float] = {}
    for prefix, scores in (
            ("random_init_", evaluate_encoder(random_init, split, size, mean, std, protocols, device, cfg.seed)),
            ("raw_pixels_", evaluate_raw_pixels(split, size, mean, std, protocols, cfg.seed))):
        out.update({prefix + k: v for k, v in scores.items()})
    return out


def _frozen_table(encoder: nn.Module, cfg: TrainConfig, resolved: Resolved, split: DataSplit,
                  mean: list[float], std: list[float], device: torch.device,
                  protocols: Sequence[str] = PROTOCOLS_FROZEN, baselines: bool = True) -> dict[str, float]:
    """Learned scores (``knn_top1``...) and, with ``baselines``, :func:`baseline_scores` beside them."""
    out = dict(evaluate_encoder(encoder, split, resolved.image_size, mean, std, protocols, device, cfg.seed))
    if baselines:
        out.update(baseline_scores(cfg, resolved, split, mean, std, device, protocols))
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
             device: str = "auto", progress: bool = True, **options: Any) -> dict[str, Any]:
    """Score a run's encoder by ``protocol``, beside a random-init encoder of the same architecture
    (and raw pixels / a supervised encoder where they apply), on ``data`` (default: the run's).

    ``protocol``: knn, linear, linear-aug, finetune, semi:1%, semi:10% (any semi:P%), supervised,
    fewshot, transfer, or all (see ``selfsup.evaluation.protocols``). ``options`` are
    ``EvalOptions`` fields: ``epochs``, ``batch_size``, ``lr``, ``episodes``, ``ways``, ``shots``,
    ``queries``, ``metric``, ``transfer_data``, ``seed``. Writes ``eval/<protocol>-<data>.json``
    (``all``: every protocol's file and ``eval/summary-<data>.md`` / ``.json``) in the run folder
    and returns the same dict.
    """
    from selfsup.data.sources import parse_class_list
    from selfsup.evaluation import protocols as P

    try:
        protocol = P.check_protocol(protocol)
        opts = P.EvalOptions(**{k: v for k, v in options.items() if v is not None})
        opts.check()
    except TypeError as e:
        raise ConfigError(f"evaluate: unknown option ({e})") from e
    except P.ProtocolError as e:
        raise ConfigError(str(e)) from e
    dev = pick_device(device)
    run = load_run(run_dir, device=str(dev))
    cfg = dataclasses.replace(run.config, progress=progress)
    channels = len(run.mean)

    def load(spec: str) -> DataSplit:  # the run's data with its --subset; other data native (adapted later)
        same = spec.strip().lower() == cfg.data.strip().lower()
        folder = spec.strip().lower().startswith("folder:")  # decoded (and cached) at the run's size
        return load_data(spec, subset=cfg.subset if same else None, seed=cfg.seed, root=cfg.data_root,
                         image_size=cfg.image_size if same else (run.resolved.image_size if folder else None),
                         progress=progress)

    setup = P.EvalSetup(
        encoder=run.encoder, load=load, run_data=cfg.data, data=data or cfg.data, channels=channels,
        random_init=lambda: random_init_encoder(cfg, run.resolved, channels),
        size=run.resolved.image_size, mean=run.mean, std=run.std, crop_scale=tuple(run.resolved.crop_scale),
        holdout_classes=parse_class_list(cfg.holdout_classes) if cfg.holdout_classes else (), seed=cfg.seed,
        device=dev, progress=progress, log=(lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None))
    eval_dir = Path(run_dir) / "eval"
    fresh = not eval_dir.exists()
    try:
        return P.evaluate_and_save(P.Evaluator(setup, opts), protocol, eval_dir, str(run.path),
                                   method=cfg.method)
    except P.ProtocolError as e:
        raise ConfigError(str(e)) from e
    finally:  # an error before any result (e.g. a bad --data) leaves the run folder as it was
        if fresh and eval_dir.is_dir() and not any(eval_dir.iterdir()):
            eval_dir.rmdir()


def export(run_dir: str | Path, format: str = "safetensors", out: str | Path | None = None) -> dict[str, Any]:
    """Export a run's trained backbone for use elsewhere; returns ``{"path", "files", "format", ...}``.

    ``format``: ``torchvision`` (``state_dict`` for ``torchvision.models.resnetXX()`` + a ``.json``
    sidecar; width 1 and BatchNorm only), ``safetensors`` (weights + settings in the header) or
    ``onnx`` (dynamic batch). ``out`` defaults to ``RUN_DIR/export/encoder.<ext>``.
    """
    from selfsup.handoff import export_encoder

    return export_encoder(run_dir, format, out)


def embed(run_dir: str | Path, data: str | None = None, out: str | Path | None = None, split: str = "all",
          batch_size: int = 256, device: str = "auto", data_root: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Write the frozen encoder's embeddings of a whole dataset (``.npy``, ``.npz`` or ``.parquet``).

    ``data`` defaults to the run's (without ``subset``); ``split``: ``all`` (train then test rows),
    ``train`` or ``test``; rows are in dataset order with ``split``, ``index``, ``label``, ``class``,
    ``path`` and ``embedding`` columns. ``out`` defaults to ``RUN_DIR/embeddings/DATA.npy``.
    """
    from selfsup.handoff import embed_dataset

    return embed_dataset(run_dir, data=data, out=out, split=split, batch_size=batch_size, device=device,
                         data_root=data_root, progress=progress)


def load_encoder(run_dir_or_file: str | Path, device: str = "cpu") -> nn.Module:
    """The trained backbone, in eval mode, from a run folder, a ``.safetensors`` export, or a
    torchvision ``.pt`` export (with its ``.json`` sidecar); ``.selfsup_info`` holds image size,
    mean and std, and ``.selfsup_info.preprocess()`` maps uint8 images to its input."""
    from selfsup.handoff import load_encoder as _load_encoder

    return _load_encoder(run_dir_or_file, device=device)


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


def report(run_dir: str | Path, html: bool = True, device: str = "auto", max_points: int = 2000,
           max_gallery: int | None = 10000, embedding: str = "auto", queries: int = 8, neighbors: int = 8,
           seed: int = 0, progress: bool = True) -> Any:
    """Write PNG plots of ``metrics.jsonl`` and (with ``html``) a self-contained ``index.html``
    into ``RUN_DIR/report/``; returns a ``ReportResult`` (``.plots``, ``.images``, ``.html``, ``.notes``).

    The page adds a 2-D map of at most ``max_points`` test embeddings (``embedding``: auto = UMAP
    when ``umap-learn`` is installed, else t-SNE), ``queries`` retrieval queries with their
    ``neighbors`` nearest training images (among at most ``max_gallery``), the augmentation preview,
    the [CLS] attention maps of 8 test images when the backbone is a ViT (``attention.png``), and
    the tables of ``summary.json`` and ``eval/*.json``.
    """
    from selfsup.reporting.report import build_report

    return build_report(run_dir, html=html, device=device, max_points=max_points, max_gallery=max_gallery,
                        embedding=embedding, n_queries=queries, k=neighbors, seed=seed, progress=progress)


def compare(run_dirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | str | None = None,
            x: str = "step") -> Any:
    """Overlay several runs in one PNG: one panel per metric, one line per run, legend = folder names.

    ``metrics`` (list or comma-separated; default loss, std_scaled, rankme, knn_top1) are
    ``metrics.jsonl`` keys; ``*_top1`` scores in ``summary.json`` are marked as final points.
    ``x``: ``step`` or ``epoch``. Returns a ``CompareResult`` (``.path``, ``.labels``, ``.metrics``).
    """
    from selfsup.reporting.plots import write_compare

    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    for run_dir in run_dirs:
        if not (Path(run_dir) / "metrics.jsonl").exists():
            raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no metrics.jsonl)")
    if x not in ("step", "epoch"):
        raise ConfigError(f"--x: choose step or epoch, got {x!r}")
    try:
        return write_compare(run_dirs, out, metrics=metrics, x=x)
    except ValueError as err:
        raise ConfigError(f"--metrics: {err}") from err


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
