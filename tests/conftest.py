"""Shared fixtures."""

import os

# Under pytest-xdist (`make test` runs one worker per core) each worker keeps to one thread, and
# idle OpenMP threads sleep instead of spinning: several processes each spinning on every core
# run 5-50x slower on a 2-core machine (measured). Set before torch starts its thread pool.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tiny models: as fast on an idle machine, and on a busy 2-core one it
    avoids OpenMP spin-waits that make several threads 5-50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gloo_worker(rank: int, world: int, init_file: str, out_file: str, fn, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def on_gloo_processes(fn, tmp_path, world: int = 2, args: tuple = ()):
    """Run ``fn(rank, world, *args)`` (a module-level function) on ``world`` gloo CPU processes;
    return rank 0's result."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out_file = str(tmp_path / "dist.pt")
    mp.spawn(_gloo_worker, args=(world, str(tmp_path / "init"), out_file, fn, args), nprocs=world, join=True)
    return torch.load(out_file)


_RANDOM_INIT_KNN: dict[tuple, float] = {}


def random_init_knn_top1(**options) -> float:
    """``random_init_knn_top1`` of ``api.baseline_scores`` for the run ``api.train(**options)`` would
    make, computed once per worker for each distinct data and set of random weights: end-to-end
    tests train with ``baselines=False`` and share this floor."""
    import hashlib

    import torch

    from selfsup.api import _load_split, _merge, baseline_scores, channel_stats, random_init_encoder
    from selfsup.config import TrainConfig, resolve

    cfg = _merge(TrainConfig(), options)
    split = _load_split(cfg)
    resolved = resolve(cfg, split.train.image_size)
    encoder = random_init_encoder(cfg, resolved, split.train.channels)
    weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in encoder.state_dict().values())).hexdigest()
    key = (cfg.data, cfg.subset, cfg.seed, resolved.image_size, weights)
    if key not in _RANDOM_INIT_KNN:
        scores = baseline_scores(cfg, resolved, split, *channel_stats(split), torch.device("cpu"), ["knn"])
        _RANDOM_INIT_KNN[key] = scores["random_init_knn_top1"]
    return _RANDOM_INIT_KNN[key]
