"""Scoring a trained run by a protocol, beside its baselines, into ``RUN_DIR/eval/``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from selfsup.config import ConfigError
from selfsup.data.dataset import DataSplit
from selfsup.data.sources import load_data, parse_class_list
from selfsup.evaluation import protocols as P
from selfsup.models import encoder_at_stage
from selfsup.runs.build import default_init_differs, random_init_encoder
from selfsup.runs.folder import Run, load_run
from selfsup.runs.lock import run_folder_lock
from selfsup.train.distributed import pick_device


def evaluate_run(run_dir: str | Path, protocol: str = "knn", data: str | None = None, device: str = "auto",
                 progress: bool = True, layer: int | None = None, **options: Any) -> dict[str, Any]:
    """Run ``protocol`` on a run folder's encoder and baselines; writes ``eval/`` (see :func:`selfsup.api.evaluate`).
    ``layer``: every encoder read at that ResNet stage (pooled), results in ``eval/layerK/``."""
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
    try:
        setup = eval_setup(run, data, dev, progress, layer)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    eval_dir = Path(run_dir) / "eval" / (f"layer{layer}" if layer else "")
    fresh = not eval_dir.exists()
    try:
        with run_folder_lock(run_dir, "selfsup eval"):
            return P.evaluate_and_save(P.Evaluator(setup, opts), protocol, eval_dir, str(run.path),
                                       method=run.config.method)
    except P.ProtocolError as e:
        raise ConfigError(str(e)) from e
    finally:  # an error before any result (e.g. a bad --data) leaves the run folder as it was
        if fresh and eval_dir.is_dir() and not any(eval_dir.iterdir()):
            eval_dir.rmdir()


def eval_setup(run: Run, data: str | None, device: Any, progress: bool, layer: int | None = None) -> P.EvalSetup:
    """What the evaluator needs of a run: encoder, random-init factory, data loader, normalisation."""
    cfg = dataclasses.replace(run.config, progress=progress)
    channels = len(run.mean)

    def load(spec: str) -> DataSplit:  # the run's data with its --subset; other data native (adapted later)
        same = spec.strip().lower() == cfg.data.strip().lower()
        folder = spec.strip().lower().startswith("folder:")  # decoded (and cached) at the run's size
        return load_data(spec, subset=cfg.subset if same else None, seed=cfg.seed, root=cfg.data_root,
                         image_size=cfg.image_size if same else (run.resolved.image_size if folder else None),
                         progress=progress)

    def log(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    return P.EvalSetup(
        encoder=encoder_at_stage(run.encoder, layer), load=load, run_data=cfg.data, data=data or cfg.data,
        channels=channels,
        random_init=lambda: encoder_at_stage(random_init_encoder(cfg, run.resolved, channels), layer),
        default_init=(lambda: encoder_at_stage(random_init_encoder(cfg, run.resolved, channels, default_init=True),
                                               layer)) if default_init_differs(run.resolved) else None,
        size=run.resolved.image_size, mean=run.mean, std=run.std, crop_scale=tuple(run.resolved.crop_scale),
        holdout_classes=parse_class_list(cfg.holdout_classes) if cfg.holdout_classes else (), seed=cfg.seed,
        device=device, progress=progress, log=log)
