"""The run folder: where it goes, its ``config.yaml``, and loading a trained run back.

Layout: ``config.yaml`` (settings, resolved values, data statistics, versions), ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/last.pt``, ``summary.json``, ``eval/*.json``, ``report/``,
``skipped_files.txt`` when the data had unreadable files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from selfsup import __version__
from selfsup.config import ConfigError, Resolved, TrainConfig, config_from_dict
from selfsup.data.sources import data_slug
from selfsup.io import read_yaml, write_yaml_atomic
from selfsup.methods import Method
from selfsup.runs.build import build_method
from selfsup.runs.lock import LOCK_FILE, run_folder_lock
from selfsup.train import distributed as dist_train
from selfsup.train.checkpoint import safe_load

CONFIG_FILE = "config.yaml"
CHECKPOINT = Path("checkpoints") / "last.pt"


@dataclass
class Run:
    """A run folder loaded back: its settings, data statistics and trained method."""

    path: Path
    config: TrainConfig
    resolved: Resolved
    mean: list[float]
    std: list[float]
    method: Method

    @property
    def encoder(self) -> nn.Module:
        return self.method.encoder


def versions() -> dict[str, str]:
    return {"selfsup": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.yaml`` of a run folder (a ConfigError naming the folder when it is none)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no {CONFIG_FILE})")
    return read_yaml(path)


def stored_config(run_dir: str | Path) -> TrainConfig:
    return config_from_dict(read_run_config(run_dir)["config"])


def write_run_config(run_dir: Path, content: dict[str, Any]) -> None:
    """--resume reads config.yaml back: a run killed while rewriting it must leave the old file."""
    write_yaml_atomic(run_dir / CONFIG_FILE, content)


def resolved_from_dict(data: dict[str, Any]) -> Resolved:
    return Resolved(**{**data, "crop_scale": tuple(data["crop_scale"])})


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder: settings from ``config.yaml``, weights from ``checkpoints/last.pt``."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir)
    cfg = config_from_dict(meta["config"])
    resolved = resolved_from_dict(meta["resolved"])
    method = build_method(cfg, resolved, meta["data"]["channels"])
    state = safe_load(run_dir / CHECKPOINT, map_location=device)
    method.load_state_dict(state["method"])
    method.to(device).eval()
    return Run(run_dir, cfg, resolved, meta["data"]["mean"], meta["data"]["std"], method)


def run_dir_path(cfg: TrainConfig) -> Path:
    """The run folder ``cfg`` asks for (a new timestamped name without ``out``), checked, nothing written."""
    out = Path(cfg.out or f"runs/{cfg.method}-{data_slug(cfg.data)}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if cfg.resume:
        if not (out / CHECKPOINT).exists():
            raise ConfigError(f"--resume: no checkpoint in {out / CHECKPOINT.parent} (the run stopped before its "
                              "first checkpoint); start it again with --overwrite")
    elif _has_content(out) and not cfg.overwrite:
        raise ConfigError(f"--out: run folder {out} exists; pass --resume to continue it or --overwrite "
                          "to replace it")
    return out


def _has_content(folder: Path) -> bool:
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


def _empty(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file (``--overwrite``, under the lock)."""
    for item in folder.iterdir():
        if item.name == LOCK_FILE:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


@contextlib.contextmanager
def training_run_folder(cfg: TrainConfig, info: dist_train.DistInfo) -> Iterator[Path]:
    """The checked run folder, locked by rank 0 for the block (emptied first with ``--overwrite``);
    every process gets its path, or the same ConfigError."""
    outcome: tuple[str, str] | None = None
    with contextlib.ExitStack() as stack:
        if info.is_main:
            try:
                out = run_dir_path(cfg)
                stack.enter_context(run_folder_lock(out, "selfsup train"))
                if not cfg.resume:
                    _empty(out)
                outcome = ("ok", str(out))
            except ConfigError as err:
                outcome = ("error", str(err))
        if info.distributed:
            outcome = dist_train.broadcast_object(outcome)
        if outcome[0] == "error":
            raise ConfigError(outcome[1])
        yield Path(outcome[1])
