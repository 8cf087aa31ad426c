"""What several test files build: tiny methods, the tiny trained run, `selfsup train` flags, gloo processes,
the random-init floor of end-to-end runs. Fixtures that share these live in conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import TrainConfig, resolve
from selfsup.evaluation.baselines import baseline_scores
from selfsup.methods import METHODS, Method
from selfsup.models import build_backbone
from selfsup.runs import channel_stats, load_split, merge_options, random_init_encoder
from selfsup.runs.train import option_flags, train  # selfsup.api.train's body: gloo workers import no plotting

# ---------------------------------------------------------------------------------------------
# Tiny methods

# Head sizes small enough for a training step in milliseconds on a CPU, each method's structure kept
# (a queue longer than a batch, a few prototypes, two local crops of half the global size).
TINY_HEADS: dict[str, dict[str, Any]] = {
    "byol": dict(projector_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32),
    "simclr": dict(projector_hidden_dim=32, projection_dim=16),
    "moco": dict(projector_hidden_dim=32, projection_dim=16, queue_size=64),
    "simsiam": dict(projector_hidden_dim=32, projection_dim=32, predictor_hidden_dim=8),
    "barlow_twins": dict(projector_hidden_dim=32, projection_dim=32),
    "vicreg": dict(expander_hidden_dim=32, embedding_dim=32),
    "nnclr": dict(projector_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32, queue_size=64),
    "swav": dict(projector_hidden_dim=32, projection_dim=16, num_prototypes=10, num_local_crops=2,
                 local_crop_size_fraction=0.5),
    "dino": dict(head_hidden_dim=32, bottleneck_dim=16, out_dim=40, num_local_crops=2, local_crop_size_fraction=0.5),
    "deepcluster_v2": dict(projector_hidden_dim=32, projection_dim=16, num_prototypes=4, num_clusterings=2,
                           num_local_crops=2, local_crop_size_fraction=0.5),
    "cpc_v2": dict(grid=4, patch_fraction=0.5, target_dim=8, context_dim=8, context_layers=2),
    "bownet": dict(num_words=8, kmeans_iterations=3),
    "obow": dict(num_words=16, num_patches=2, crop_size_fraction=0.75, patch_size_fraction=0.5),
    "npid": dict(embedding_dim=16, num_negatives=8),
    "pirl": dict(embedding_dim=16, num_negatives=8, jigsaw_size=12, tile_size=2, tile_gap=2, tile_jitter=1),
    "wmse": dict(projector_hidden_dim=32, embedding_dim=2, w_size=4),
    "moco_v3": dict(projector_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32),
    "rotnet": dict(head_hidden_dim=16),
    "jigsaw": dict(num_permutations=10, tile_size=2, tile_gap=1, tile_jitter=0, tile_dim=8, hidden_dim=16),
    "relative_patch": dict(patch_size=2, patch_gap=1, patch_jitter=0, patch_dim=8, hidden_dim=16),
    "exemplar": dict(num_instances=16, hidden_dim=16),
    "colorization": dict(decoder_width=16),
    "inpainting": dict(decoder_width=16),
    "denoising_ae": dict(decoder_width=16),
    "mae": dict(decoder_dim=16, decoder_depth=1, decoder_heads=2),
}


def tiny_method(name: str, *, backbone: str = "resnet18", width: float = 0.125, in_channels: int = 1,
                grad_checkpointing: bool = False, **overrides: Any) -> Method:
    """Method ``name`` with its ``TINY_HEADS`` (``overrides``: other ``Config`` values) on a small-stem
    backbone, initialised from seed 0."""
    if name not in TINY_HEADS:
        raise KeyError(f"method {name!r} has no tiny head sizes: add them to TINY_HEADS in tests/helpers.py")
    torch.manual_seed(0)
    encoder = build_backbone(backbone, width=width, in_channels=in_channels, small_stem=True,
                             grad_checkpointing=grad_checkpointing)
    cls = METHODS[name]
    return cls(encoder, cls.Config(**{**TINY_HEADS[name], **overrides}))


# ---------------------------------------------------------------------------------------------
# The tiny trained run

# BYOL on 256 digits, one epoch of 4 steps (each logged), evaluated with its baselines: what the export,
# report and reliability tests read. Its folder is named after it (report legends show the name).
TINY_RUN: dict[str, Any] = dict(method="byol", data="digits", subset=256, backbone="resnet18", width=0.125,
                                epochs=1, batch_size=64, log_every=1, progress=False, projector_hidden_dim=64,
                                projection_dim=32, predictor_hidden_dim=64)
TINY_RUN_NAME = "byol-tiny"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread inside: as fast for tiny models on an idle machine, and on a busy 2-core one it
    avoids OpenMP spin-waits that make several threads 5-50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_tiny_run(parent: Path, name: str = TINY_RUN_NAME, **overrides: Any) -> Path:
    """Train ``TINY_RUN`` (with ``overrides``) into ``parent / name`` on one thread; return the folder."""
    out = parent / name
    with one_torch_thread():
        train(**{**TINY_RUN, **overrides}, out=str(out))
    return out


def copy_run(run: Path, parent: Path) -> Path:
    """A copy of the run folder ``run`` in ``parent``, under the same name: for tests that change it."""
    return Path(shutil.copytree(run, parent / run.name))


def train_flags(**options: Any) -> list[str]:
    """``options`` (``TrainConfig`` fields and method hyperparameters) as ``selfsup train`` flags, in order."""
    return [flag for name, value in options.items() for flag in option_flags(name, value)]


# ---------------------------------------------------------------------------------------------
# The random-init floor of end-to-end runs

_RANDOM_INIT_KNN: dict[tuple, float] = {}


def random_init_knn_top1(**options: Any) -> float:
    """``random_init_knn_top1`` of the run ``selfsup.api.train(**options)`` would make (its random-init
    encoder scored as the run's final evaluation scores it), computed once per process for each distinct
    data and set of random weights: end-to-end tests train with ``baselines=False`` and share this floor."""
    cfg = merge_options(TrainConfig(), options)
    split = load_split(cfg)
    resolved = resolve(cfg, split.train.image_size)
    encoder = random_init_encoder(cfg, resolved, split.train.channels)
    weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in encoder.state_dict().values())).hexdigest()
    key = (cfg.data, cfg.subset, cfg.seed, resolved.image_size, weights)
    if key not in _RANDOM_INIT_KNN:
        scores = baseline_scores(encoder, split, resolved.image_size, *channel_stats(split), torch.device("cpu"),
                                 cfg.seed, ["knn"])
        _RANDOM_INIT_KNN[key] = scores["random_init_knn_top1"]
    return _RANDOM_INIT_KNN[key]


# ---------------------------------------------------------------------------------------------
# Several processes


def _gloo_worker(rank: int, world: int, init_file: str, out_file: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def on_gloo_processes(fn: Callable, tmp_path: Path, world: int = 2, args: tuple = ()) -> Any:
    """Run ``fn(rank, world, *args)`` (a module-level function) on ``world`` gloo CPU processes;
    return rank 0's result."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out_file = str(tmp_path / "dist.pt")
    mp.spawn(_gloo_worker, args=(world, str(tmp_path / "init"), out_file, fn, args), nprocs=world, join=True)
    return torch.load(out_file)


# ---------------------------------------------------------------------------------------------
# `selfsup` in subprocesses (kill -9 / SIGTERM tests) and bit-for-bit comparisons

SRC = Path(__file__).resolve().parents[1] / "src"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def spawn_selfsup(*args: object, log: Path) -> subprocess.Popen:
    """``selfsup ARGS`` in a subprocess, stdout and stderr to the file ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "selfsup", *map(str, args)], env=subprocess_env(),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_exit(proc: subprocess.Popen, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def file_stamp(path: Path) -> tuple[int, int] | None:
    """Identity of the file now at ``path`` (atomic_save replaces it: a new inode each save)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.005) -> bool:
    """Poll ``condition()`` until true (-> True) or ``proc`` exits first (-> False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(poll)
    proc.kill()
    raise AssertionError("timed out waiting for the training subprocess")


def assert_identical(a, b, where: str) -> None:
    """Same nested structure, same values; tensors compared with torch.equal (bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
