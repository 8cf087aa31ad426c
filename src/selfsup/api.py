"""The Python API: a facade that composes the library for users; ``selfsup.cli`` mirrors it one to one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.config import ConfigError, TrainConfig, options_from_file, resolve, validate
from selfsup.data.sources import fashion_mnist_available
from selfsup.data.store import DEFAULT_SHARD_SIZE, StoreInfo, build_store
from selfsup.handoff import embed_dataset, export_encoder
from selfsup.handoff import load_encoder as _load_encoder
from selfsup.reporting.plots import write_compare
from selfsup.reporting.preview import save_preview
from selfsup.reporting.report import build_report
from selfsup.runs import Run, build_method, load_run, load_split, merge_options, training_views
from selfsup.runs.evaluate import evaluate_run
from selfsup.runs.train import train as _train_run

__all__ = ["Run", "compare", "convert", "demo", "embed", "evaluate", "export", "load_config", "load_encoder",
           "load_run", "preview", "report", "train"]


def load_config(file_or_recipe: str | Path, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file, a run folder's ``config.yaml`` (that run's settings) or a
    recipe by name (``selfsup methods``, README "Configuration"), with ``overrides`` applied:
    ``train(load_config("byol-cifar10", data="folder:cifar10"))``."""
    return merge_options(TrainConfig(), {**options_from_file(file_or_recipe), **overrides})


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
    return _train_run(config, **options)


def evaluate(run_dir: str | Path, protocol: str = "knn", data: str | None = None,
             device: str = "auto", progress: bool = True, **options: Any) -> dict[str, Any]:
    """Score a run's encoder by ``protocol``, beside a random-init encoder of the same architecture
    (and raw pixels / a supervised encoder where they apply), on ``data`` (default: the run's).

    ``protocol``: knn, linear, linear-aug, finetune, semi:1%, semi:10% (any semi:P%), supervised,
    fewshot, transfer, or all (see ``selfsup.evaluation.protocols``). ``options`` are
    ``EvalOptions`` fields: ``epochs``, ``batch_size``, ``lr``, ``episodes``, ``ways``, ``shots``,
    ``queries``, ``metric``, ``transfer_data``, ``seed``; ``layer`` (1-4) reads every encoder at that
    ResNet stage, into ``eval/layerK/``. Writes ``eval/<protocol>-<data>.json``
    (``all``: every protocol's file and ``eval/summary-<data>.md`` / ``.json``) in the run folder
    and returns the same dict.
    """
    return evaluate_run(run_dir, protocol=protocol, data=data, device=device, progress=progress, **options)


def convert(source: str | Path, out: str | Path, short_side: int | None = None,
            shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None, progress: bool = True) -> StoreInfo:
    """Build an on-disk store (WebDataset tar shards + an index) from ``folder:PATH`` for data bigger
    than memory; train from it with ``data="store:OUT"``. ``short_side`` re-encodes larger images down
    to that short side (aspect kept); unreadable files are skipped and listed (``.skipped``)."""
    return build_store(source, out, shard_size=shard_size, short_side=short_side, workers=workers,
                       progress=progress)


def export(run_dir: str | Path, format: str = "safetensors", out: str | Path | None = None) -> dict[str, Any]:
    """Export a run's trained backbone for use elsewhere; returns ``{"path", "files", "format", ...}``.

    ``format``: ``torchvision`` (``state_dict`` for ``torchvision.models.resnetXX()`` + a ``.json``
    sidecar; width 1 and BatchNorm only), ``safetensors`` (weights + settings in the header) or
    ``onnx`` (dynamic batch). ``out`` defaults to ``RUN_DIR/export/encoder.<ext>``.
    """
    return export_encoder(run_dir, format, out)


def embed(run_dir: str | Path, data: str | None = None, out: str | Path | None = None, split: str = "all",
          batch_size: int = 256, device: str = "auto", data_root: str | None = None,
          progress: bool = True, layer: int | None = None) -> dict[str, Any]:
    """Write the frozen encoder's embeddings of a whole dataset (``.npy``, ``.npz`` or ``.parquet``).

    ``data`` defaults to the run's (without ``subset``); ``split``: ``all`` (train then test rows),
    ``train`` or ``test``; rows are in dataset order with ``split``, ``index``, ``label``, ``class``,
    ``path`` and ``embedding`` columns. ``out`` defaults to ``RUN_DIR/embeddings/DATA.npy``.
    ``layer`` (1-4): the pooled features of that ResNet stage instead of the encoder's output.
    """
    return embed_dataset(run_dir, data=data, out=out, split=split, batch_size=batch_size, device=device,
                         data_root=data_root, progress=progress, layer=layer)


def load_encoder(run_dir_or_file: str | Path, device: str = "cpu") -> nn.Module:
    """The trained backbone, in eval mode, from a run folder, a ``.safetensors`` export, or a
    torchvision ``.pt`` export (with its ``.json`` sidecar); ``.selfsup_info`` holds image size,
    mean and std, and ``.selfsup_info.preprocess()`` maps uint8 images to its input."""
    return _load_encoder(run_dir_or_file, device=device)


def preview(data: str = "fashion-mnist", out: str | Path = "preview.png", method: str = "byol",
            image_size: int | None = None, recipe: str = "auto", crop_scale_min: float | None = None,
            n: int = 8, seed: int = 0, data_root: str | None = None, backbone: str = "resnet18") -> Path:
    """Write a PNG grid of images and the views ``method`` would train on (``backbone``: MAE needs a ViT)."""
    cfg = TrainConfig(method=method, data=data, image_size=image_size, recipe=recipe, backbone=backbone,
                      crop_scale_min=crop_scale_min, seed=seed, data_root=data_root, progress=False)
    validate(cfg)
    split = load_split(cfg)
    resolved = resolve(cfg, split.train.image_size)
    method = build_method(cfg, resolved, split.train.channels)
    return save_preview(split.train, training_views(method, resolved), out, n=n, seed=seed, method=method)


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
    return build_report(run_dir, html=html, device=device, max_points=max_points, max_gallery=max_gallery,
                        embedding=embedding, n_queries=queries, k=neighbors, seed=seed, progress=progress)


def compare(run_dirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | str | None = None,
            x: str = "step") -> Any:
    """Overlay several runs in one PNG: one panel per metric, one line per run, legend = folder names.

    ``metrics`` (list or comma-separated; default loss, std_scaled, rankme, knn_top1) are
    ``metrics.jsonl`` keys; ``*_top1`` scores in ``summary.json`` are marked as final points.
    ``x``: ``step`` or ``epoch``. Returns a ``CompareResult`` (``.path``, ``.labels``, ``.metrics``).
    """
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
    if fashion_mnist_available():
        data, default_subset = "fashion-mnist", 10000
        print("demo: using Fashion-MNIST (found on this machine)")
    else:
        data, default_subset = "digits", None
        print("demo: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); using scikit-learn's digits")
    settings = {**DEMO_SETTINGS, "epochs": epochs or DEMO_SETTINGS["epochs"]}
    return train(data=data, subset=subset or default_subset, out=str(out), overwrite=True, progress=progress,
                 **settings)
