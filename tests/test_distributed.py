"""Multi-process training (torchrun + DDP, gloo on the CPU): the same run on 1 or N processes.

* Gradient equality, for every registered method (``METHODS``, so methods added later are covered):
  a global batch of 8 split over 2 processes (rows [4r, 4r + 4) on rank r, SyncBatchNorm, DDP)
  gives the loss, the gradient of every trainable parameter and, after the steps, the whole state
  (EMA targets, BN statistics, queues in global order, memory banks, prototypes) of one process on
  the 8 rows. Four steps over a 16-row "dataset" (two epochs) drive every hook as the loop does
  (``on_epoch_start``, ``on_batch_start`` with the process's dataset rows, ``before_optimizer_step``,
  ``on_step_end``). Models in float64, tolerance rtol 1e-6 / atol 1e-9 (the parts that run in float32
  under lower precisions, Barlow Twins, VICReg, SwAV's Sinkhorn, DINO's centre, stay in float64 here:
  float32 rounding, amplified by four optimiser steps, differs between CPUs). Augmentation is
  bypassed: both runs see the same fixed view tensors.
* End to end: ``torchrun --nproc-per-node 2 -m selfsup train`` on digits, resumed on 1 process,
  then resumed again on 2 through ``selfsup train --devices 2``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import TINY_HEADS, tiny_method, train_flags
from selfsup.methods import METHODS

WORLD = 2
BATCH = 8  # global
SIZE = 8
ROWS = 16  # the "dataset": 2 steps per epoch
STEPS = 4  # 2 epochs: queues written and read, DeepCluster's bank filled then clustered
# Per-method settings beyond the tiny heads (RGB input, float64): exercise the cross-process code paths;
# queues of 24 rows wrap within the test (MoCo queues 16 keys a step here, NNCLR 8 projections).
EXTRA = {"byol": {"negatives_beta": 0.5}, "moco": {"symmetric": True, "queue_size": 24}, "nnclr": {"queue_size": 24},
         "mae": {"backbone": "vit_tiny"}}  # MAE runs on ViTs only
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _views(method, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(BATCH, 3, spec.size, spec.size, generator=g, dtype=torch.float64)
            for spec in method.views(SIZE, (0.2, 1.0))]


def _run_steps(name: str, rank: int, world: int) -> dict:
    """STEPS optimiser steps of ``name`` on this process's rows, hooks called as the loop calls them;
    the losses averaged over processes, the gradients as the optimiser sees them (after DDP)."""
    from selfsup.train import distributed as dt

    method = tiny_method(name, in_channels=3, **EXTRA.get(name, {})).double()
    model = dt.wrap(method, torch.device("cpu"), sync_bn=True)  # the method itself on one process
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    per_process, steps_per_epoch = BATCH // world, ROWS // BATCH
    mine = slice(rank * per_process, (rank + 1) * per_process)
    record: dict = {"loss": [], "grads": []}
    method.train()
    for step in range(STEPS):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0:
            method.on_epoch_start(epoch, steps_per_epoch)
        order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(epoch))
        method.on_batch_start(order[position * BATCH:(position + 1) * BATCH][mine])
        out = model([v[mine] for v in _views(method, step)])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        record["loss"].append(dt.mean_over_processes(out.loss.detach()).item())
        record["grads"].append({n: None if p.grad is None else p.grad.clone()
                                for n, p in method.named_parameters() if p.requires_grad})
        method.before_optimizer_step(step, STEPS)
        optimizer.step()
        method.on_step_end(step + 1, STEPS)
    dt.revert_sync_batchnorm(method)
    record["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return record


def _worker(rank: int, world: int, port: int, out_dir: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from selfsup.train import distributed as dt

    info = dt.init_from_env("cpu")
    assert (info.rank, info.world_size, info.device.type) == (rank, world, "cpu")
    torch.save({name: _run_steps(name, rank, world) for name in names}, Path(out_dir) / f"rank{rank}.pt")
    dt.teardown()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    names = list(METHODS)
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out), names), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_two_processes_match_one_process(name, two_process_results):
    one = _run_steps(name, 0, 1)
    ranks = [r[name] for r in two_process_results]
    rtol, atol = 1e-6, 1e-9
    for step in range(STEPS):
        for r in ranks:
            assert r["loss"][step] == pytest.approx(one["loss"][step], rel=rtol, abs=atol), (name, step)
            assert r["grads"][step].keys() == one["grads"][step].keys()
            for key, grad in one["grads"][step].items():
                if grad is None:
                    assert r["grads"][step][key] is None, key
                    continue
                torch.testing.assert_close(r["grads"][step][key], grad, rtol=rtol, atol=atol,
                                           msg=lambda m, k=key, s=step: f"{name} step {s} grad {k}: {m}")
    # after the steps: weights, EMA targets, BN running statistics, queues (global order), pointers
    for r in ranks:
        assert r["state"].keys() == one["state"].keys()
        for key, value in one["state"].items():
            torch.testing.assert_close(r["state"][key], value, rtol=rtol, atol=atol,
                                       msg=lambda m, k=key: f"{name} state {k}: {m}")


def _interrupt_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    """``fit`` on 2 processes; rank 1 alone gets SIGTERM during step 3."""
    import signal
    import types

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from selfsup.train import distributed as dt
    from selfsup.train.loop import LoopSettings, TrainingInterrupted, fit

    dt.init_from_env("cpu")
    method = tiny_method("byol", in_channels=3, **EXTRA["byol"])
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if rank == 1:
        def kill_at(self, step, total_steps):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return type(self).on_step_end(self, step, total_steps)

        method.on_step_end = types.MethodType(kill_at, method)
    settings = LoopSettings(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, weight_decay=0.0, warmup_epochs=0,
                            log_every=2, progress=False)
    outcome = {}
    try:
        fit(method, images, method.views(SIZE, (0.2, 1.0)), [0.5] * 3, [0.25] * 3, settings, run_dir=Path(run_dir))
    except TrainingInterrupted as err:
        outcome = {"step": err.step, "checkpoint": None if err.checkpoint is None else str(err.checkpoint)}
    (Path(run_dir) / f"outcome{rank}.json").write_text(json.dumps(outcome))
    dt.teardown()


@pytest.mark.slow
def test_a_signal_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    mp.spawn(_interrupt_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    outcomes = [json.loads((tmp_path / f"outcome{r}.json").read_text()) for r in range(WORLD)]
    assert [o["step"] for o in outcomes] == [3, 3]
    assert outcomes[0]["checkpoint"] == str(tmp_path / "checkpoints" / "last.pt") and outcomes[1]["checkpoint"] is None
    from selfsup.train.checkpoint import safe_load

    assert safe_load(tmp_path / "checkpoints" / "last.pt")["step"] == 3
    assert [r["step"] for r in _records(tmp_path)] == [2]  # rank 0 alone wrote metrics


def test_checkpoint_keys_are_those_of_the_plain_method():
    from selfsup.train import distributed as dt

    method = tiny_method("byol", in_channels=3, **EXTRA["byol"]).double()
    keys = list(method.state_dict())
    assert dt.convert_sync_batchnorm(method) > 0
    assert list(method.state_dict()) == keys
    dt.revert_sync_batchnorm(method)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in method.modules())


def test_config_argv_round_trips_through_the_parser():
    from selfsup.cli import build_parser
    from selfsup.config import TrainConfig
    from selfsup.runs import merge_options
    from selfsup.runs.train import config_argv

    cfg = merge_options(TrainConfig(), dict(method="byol", data="digits", width=0.125, devices=2, sync_bn=False,
                                     progress=False, eval_after=False, tau_base=0.95, predictor=False))
    args = vars(build_parser().parse_args(["train", *config_argv(cfg)]))
    again = merge_options(TrainConfig(), {k: v for k, v in args.items() if k != "command" and v is not None})
    assert again == cfg


def test_batch_that_does_not_split_over_devices_is_a_clear_error(tmp_path, capsys):
    from selfsup.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--devices", "3", "--batch-size", "64", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# End to end: 2 processes -> resume on 1 -> resume on 2 (through --devices)

TINY_RUN = train_flags(method="byol", data="digits", subset=640, width=0.125, batch_size=64, seed=3,
                       **TINY_HEADS["byol"], log_every=5, progress=False, online_probe=False)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_run_resumes_on_one_process_and_back_on_two(tmp_path):
    from selfsup.api import train
    from selfsup.train.checkpoint import safe_load

    run = tmp_path / "run"
    steps_per_epoch = 640 // 64
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "selfsup", "train", *TINY_RUN, "--epochs", "1", "--no-eval-after", "--out", str(run)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = safe_load(run / "checkpoints" / "last.pt")
    assert state["step"] == steps_per_epoch
    assert not any(k.startswith("module.") for k in state["method"])
    assert [r["step"] for r in _records(run) if "loss" in r] == [5, 10]  # rank 0 alone logs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == WORLD and summary["sync_bn"] is True

    # the 2-process checkpoint continues on 1 process (here, in this process) for a second epoch
    summary = train(out=str(run), resume=True, epochs=2, progress=False)
    assert summary["processes"] == 1 and summary["steps"] == 2 * steps_per_epoch
    one_process = safe_load(run / "checkpoints" / "last.pt")
    assert one_process["step"] == 2 * steps_per_epoch

    # and that 1-process checkpoint continues on 2 processes, started by --devices, with the evaluation
    cmd = [sys.executable, "-m", "selfsup", "train", "--out", str(run), "--resume", "--epochs", "3",
           "--devices", str(WORLD), "--no-progress", "--eval-after"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("knn_top1") == 1, done.stdout  # the summary table, printed once
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == WORLD and summary["steps"] == 3 * steps_per_epoch
    assert 0.0 <= summary["knn_top1"] <= 1.0
    steps = [r["step"] for r in _records(run) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 3 * steps_per_epoch
