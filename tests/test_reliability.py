"""Issue 8, reliability: crash-safe runs, NaN stops, safe checkpoints, broken images, clear errors.

The SIGKILL and SIGTERM/SIGINT tests run ``python -m selfsup`` (what the ``selfsup`` console
script runs) as subprocesses with one thread each, so an interrupted run and its uninterrupted
reference compute with the same thread settings and can be compared bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from helpers import (
    assert_identical,
    copy_run,
    file_stamp,
    spawn_selfsup,
    train_flags,
    wait_exit,
    wait_for,
)
from selfsup.api import load_run, train
from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.methods.byol import BYOL
from selfsup.train import loop as loop_module
from selfsup.train.checkpoint import CheckpointError, UnsafeCheckpointError, atomic_save, safe_load
from selfsup.train.loop import NonFiniteLoss, TrainingInterrupted, _MetricsLogger

SRC = Path(selfsup.__file__).resolve().parents[1]
BYOL_HEADS = dict(projector_hidden_dim=64, projection_dim=32, predictor_hidden_dim=64)
HEADS = train_flags(**BYOL_HEADS)
# the brief's tiny run: 1437 digits / 64 = 22 steps per epoch, 66 steps, a checkpoint every 2 steps
TINY_ARGS = train_flags(data="digits", width=0.125, batch_size=64, epochs=3, checkpoint_every=2, progress=False,
                        eval_after=False, **BYOL_HEADS, seed=1)
TINY_STEPS = 66
# 256 digits / 64 = 4 steps per epoch: in-process runs (SMALL) and the same through the CLI (default seed)
SMALL_CLI = dict(data="digits", subset=256, width=0.125, batch_size=64, progress=False, eval_after=False, **BYOL_HEADS)
SMALL = dict(SMALL_CLI, method="byol", backbone="resnet18", seed=2)
SMALL_ARGS = train_flags(**SMALL_CLI)


# ---------------------------------------------------------------------------------------------
# helpers


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def spawn():
    """``_spawn`` whose processes are all killed at the end of the test, whatever happened."""
    live: list[subprocess.Popen] = []

    def start(*args: object, log: Path) -> subprocess.Popen:
        live.append(spawn_selfsup(*args, log=log))
        return live[-1]

    yield start
    for proc in live:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# 1. SIGKILL at pseudo-random points, resume until done: bit-identical to an uninterrupted run


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_ends_bit_identical(tmp_path, spawn):
    ref_dir, run = tmp_path / "reference", tmp_path / "run"
    reference = spawn("train", *TINY_ARGS, "--out", ref_dir, log=tmp_path / "reference.log")  # alongside
    ckpt = run / "checkpoints" / "last.pt"
    rng = random.Random(20240508)
    # "checkpoint": wait for a checkpoint written by this process (>= a drawn step), then kill
    # 0-120 ms later: mid-step, mid-log or mid-save. "startup": kill 0.05-1.5 s after the launch,
    # while importing, loading data, rewriting config.yaml / metrics.jsonl or loading the checkpoint.
    plan = ["checkpoint", "checkpoint", "startup", "checkpoint", "checkpoint"]
    targets = iter(sorted(rng.sample(range(2, 48, 2), 4)))  # checkpoint steps to wait for
    killed: list[tuple[str, int]] = []
    steps_seen = [0]
    log = tmp_path / "run.log"
    proc = spawn("train", *TINY_ARGS, "--out", run, log=log)
    for kind in plan:
        if kind == "startup":
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            target = max(steps_seen[-1] + 2, next(targets))
            state = {"stamp": file_stamp(ckpt), "step": steps_seen[-1]}

            def reached(state: dict = state, target: int = target) -> bool:
                stamp = file_stamp(ckpt)
                if stamp is not None and stamp != state["stamp"]:
                    state["stamp"], state["step"] = stamp, safe_load(ckpt)["step"]
                return state["step"] >= target

            wait_for(reached, proc)
            time.sleep(rng.uniform(0.0, 0.12))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        rc = wait_exit(proc)
        if rc == 0:  # finished before the kill landed (a very fast machine)
            break
        assert rc == -signal.SIGKILL, (rc, log.read_text()[-3000:])
        # a kill at any moment leaves a loadable checkpoint that never goes backwards
        step = safe_load(ckpt)["step"]
        assert steps_seen[-1] <= step <= TINY_STEPS
        steps_seen.append(step)
        killed.append((kind, step))
        proc = spawn("train", "--out", run, "--resume", "--no-progress", log=log)
    else:
        assert wait_exit(proc) == 0, log.read_text()[-3000:]
    print("kills (kind, checkpoint step after the kill):", killed)
    assert sum(kind == "checkpoint" for kind, _ in killed) >= 3, killed  # real mid-training kills
    assert wait_exit(reference) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    a, b = safe_load(ref_dir / "checkpoints" / "last.pt"), safe_load(ckpt)
    assert a["step"] == b["step"] == TINY_STEPS
    assert_identical(a["method"], b["method"], "method")
    assert_identical(a["optimizer"], b["optimizer"], "optimizer")
    # the log replays too: every line parses (a partial line from a kill was dropped), no step twice
    assert _steps(run) == _steps(ref_dir)
    assert json.loads((run / "summary.json").read_text())["steps"] == TINY_STEPS
    assert not list(ckpt.parent.glob(".*.tmp"))  # a temp file from a kill mid-save is cleaned up


def test_resume_drops_a_partial_last_line_of_metrics(tmp_path):
    """What SIGKILL mid-write leaves: a cut-off last line (and records past the checkpoint)."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:9])  # '{"step": '
    logger = _MetricsLogger(run, resume_step=20)
    logger.log({"step": 21, "loss": 0.5})
    logger.close()
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [10, 20, 21]


# ---------------------------------------------------------------------------------------------
# 2. SIGTERM / SIGINT through the CLI: exit 130, the resume command, a checkpoint at that step


@pytest.mark.slow
def test_sigterm_and_sigint_exit_130_with_resume_command_and_checkpoint(tmp_path, spawn):
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):  # both at once: one core each
        run = tmp_path / sig.name
        procs[sig] = (run, spawn("train", *TINY_ARGS, "--log-every", "1", "--out", run,
                                  log=tmp_path / f"{sig.name}.log"))
    for sig, (run, proc) in procs.items():
        metrics = run / "metrics.jsonl"
        # the first logged step: the training loop (and its signal handlers) is running
        assert wait_for(lambda m=metrics: m.exists() and m.stat().st_size > 0, proc), "exited early"
        proc.send_signal(sig)
    for sig, (run, proc) in procs.items():
        rc = wait_exit(proc)
        err = (tmp_path / f"{sig.name}.log").read_text()
        assert rc == 130, (sig, rc, err[-2000:])
        match = re.search(r"stopped at step (\d+); checkpoint saved", err)
        assert match, err
        assert f"selfsup train --out {run} --resume" in err
        assert "Traceback" not in err
        step = int(match.group(1))
        assert 0 < step < TINY_STEPS
        assert safe_load(run / "checkpoints" / "last.pt")["step"] == step
        assert max(_steps(run)) == step


def test_ctrl_c_outside_the_training_steps_exits_130_without_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("selfsup.runs.build.load_data", interrupted)  # Ctrl-C while the data loads
    assert main(["train", *SMALL_ARGS, "--out", str(tmp_path / "run")]) == 130
    assert "selfsup train: interrupted." in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 3. Numerical faults: stop with exit 3 naming the step; never save a non-finite state


def test_absurd_learning_rate_stops_with_exit_3_naming_step_and_causes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL_ARGS, "--epochs", "2", "--lr", "1e30", "--log-every", "1",
                 "--out", str(run)]) == 3
    err = _one_line_error(capsys)
    assert re.search(r"at step \d+", err) and ("nan" in err or "not finite" in err)
    assert "--lr" in err and "--precision fp32" in err
    assert not (run / "checkpoints" / "last.pt").exists()  # nothing good to keep, nothing bad saved
    # a run stopped before its first checkpoint cannot be resumed, and says what to do instead
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "--overwrite" in _one_line_error(capsys)


def _record_saves(monkeypatch) -> list[tuple[int, bytes]]:
    """Wrap the loop's atomic_save: (step, file bytes) of every checkpoint written."""
    saves: list[tuple[int, bytes]] = []

    def recording(obj, path):
        out = atomic_save(obj, path)
        saves.append((obj["step"], Path(path).read_bytes()))
        return out

    monkeypatch.setattr(loop_module, "atomic_save", recording)
    return saves


def test_nan_loss_stops_at_that_step_and_keeps_the_last_checkpoint_byte_for_byte(tmp_path, monkeypatch, capsys):
    saves = _record_saves(monkeypatch)
    original = BYOL.training_step
    calls = {"n": 0}

    def nan_at_step_7(self, views):
        out = original(self, views)
        calls["n"] += 1
        return dataclasses.replace(out, loss=out.loss * float("nan")) if calls["n"] == 7 else out

    monkeypatch.setattr(BYOL, "training_step", nan_at_step_7)
    run = tmp_path / "run"
    assert main(["train", *SMALL_ARGS, "--epochs", "3", "--seed", "2", "--checkpoint-every", "2",
                 "--log-every", "1", "--out", str(run)]) == 3
    err = _one_line_error(capsys)
    assert "loss is nan at step 7;" in err and "learning rate" in err
    assert str(run / "checkpoints" / "last.pt") in err and "was kept" in err
    assert [s for s, _ in saves] == [2, 4, 6]
    assert (run / "checkpoints" / "last.pt").read_bytes() == saves[-1][1]
    assert safe_load(run / "checkpoints" / "last.pt")["step"] == 6


@pytest.mark.parametrize("path, checkpoint_every, poison_step, kept_step", [
    ("checkpoint_every", 2, 6, 4),  # mid-epoch save at step 6 (4 steps per epoch)
    ("epoch_end", 0, 8, 4),         # end-of-epoch save at step 8
    ("signal", 0, 6, 4),            # SIGTERM at step 6: the interrupt save
])
def test_no_save_path_writes_a_non_finite_state(tmp_path, monkeypatch, path, checkpoint_every, poison_step,
                                                kept_step):
    """The loss of the poisoned step is finite (computed before the update): only a check of the
    weights themselves can refuse the save."""
    saves = _record_saves(monkeypatch)
    original = BYOL.on_step_end

    def poison(self, step, total_steps):
        out = original(self, step, total_steps)
        if step == poison_step:
            with torch.no_grad():
                self.encoder.conv1.weight[0, 0, 0, 0] = float("nan")
            if path == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(BYOL, "on_step_end", poison)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=rf"encoder\.conv1\.weight.* at step {poison_step};") as info:
        train(out=str(run), epochs=3, checkpoint_every=checkpoint_every, log_every=1000, **SMALL)
    assert not isinstance(info.value, TrainingInterrupted)
    assert [s for s, _ in saves][-1] == kept_step
    assert (run / "checkpoints" / "last.pt").read_bytes() == saves[-1][1]
    state = safe_load(run / "checkpoints" / "last.pt")
    assert state["step"] == kept_step
    assert all(t.isfinite().all() for t in state["method"].values() if t.is_floating_point())


# ---------------------------------------------------------------------------------------------
# 4. Safe loading: a checkpoint that would run code when unpickled is refused, and runs nothing


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_malicious_checkpoint_is_refused_everywhere_and_runs_nothing(tmp_path, tiny_run, capsys):
    run = copy_run(tiny_run, tmp_path)
    marker = tmp_path / "MARKER"
    good = safe_load(run / "checkpoints" / "last.pt")
    evil = {**good, "method": {**good["method"], "extra": _Payload(marker)}}
    # the payload is live: an unsafe load really does run it
    torch.save(evil, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    torch.save(evil, run / "checkpoints" / "last.pt")
    with pytest.raises(UnsafeCheckpointError, match="is not a safe checkpoint"):
        safe_load(run / "checkpoints" / "last.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_run(run)
    assert main(["eval", str(run), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "not a safe checkpoint" in err and "posix.system" in err and "weights_only=False" not in err
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "not a safe checkpoint" in _one_line_error(capsys)
    assert not marker.exists()
    assert not (run / "eval").exists()


def test_truncated_or_missing_checkpoint_is_a_clear_error(tmp_path, tiny_run, capsys):
    run = copy_run(tiny_run, tmp_path)
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(ckpt)
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "truncated or corrupt" in _one_line_error(capsys)
    ckpt.unlink()
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "no checkpoint" in _one_line_error(capsys)


def test_resuming_a_copied_run_folder_writes_only_to_the_copy(tmp_path, tiny_run):
    """config.yaml stores the original --out; --resume must continue the folder it is given."""
    def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
        return {p.relative_to(folder): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}

    original = snapshot(tiny_run)
    copy = copy_run(tiny_run, tmp_path)
    (copy / "summary.json").unlink()
    assert main(["train", "--out", str(copy), "--resume", "--no-progress"]) == 0
    assert json.loads((copy / "summary.json").read_text())["steps"] == 4
    assert snapshot(tiny_run) == original


def test_atomic_save_leaves_old_or_new_and_cleans_stale_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    stale = tmp_path / ".last.pt.abc123.tmp"  # what a writer killed mid-save leaves
    stale.write_bytes(b"partial")

    def dies_while_writing(obj, f):
        f.write(b"partial data")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert safe_load(path) == {"step": 1}  # old, intact
    atomic_save({"step": 3}, path)
    assert safe_load(path) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------------------------------
# 5. Broken images, end to end


def _png(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _bad_files(root: Path) -> dict[str, str]:
    """A zero-byte file, a text file named .jpg and a truncated PNG: name -> expected reason."""
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "b").mkdir(parents=True, exist_ok=True)
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    _png(root / "a" / "whole.png", np.random.default_rng(9), size=48)
    data = (root / "a" / "whole.png").read_bytes()
    (root / "a" / "whole.png").unlink()
    (root / "a" / "truncated.png").write_bytes(data[: len(data) // 2])
    return {"empty.png": "empty file", "notes.jpg": "not a readable image", "truncated.png": "truncated"}


def test_folder_with_broken_images_trains_and_lists_skipped_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the decoded-image cache goes there
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(16):
            _png(images / cls / f"{i:02d}.png", rng)
    expected = _bad_files(images)
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{images}", "--image-size", "16", "--width", "0.125",
                 "--batch-size", "8", "--epochs", "1", "--no-progress", *HEADS, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 unreadable files (listed in skipped_files.txt)" in out
    listed = dict(line.split("\t", 1) for line in (run / "skipped_files.txt").read_text().splitlines())
    assert {Path(p).name for p in listed} == set(expected)
    for p, reason in listed.items():
        assert Path(p).parent.parent == images.absolute()
        assert expected[Path(p).name] in reason, (p, reason)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_files"] == 3 and summary["steps"] >= 1
    assert safe_load(run / "checkpoints" / "last.pt")["step"] == summary["steps"]


def test_folder_without_a_usable_image_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    images = tmp_path / "broken"
    _bad_files(images)
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{images}", "--image-size", "16", "--no-progress",
                 "--out", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "--data" in err and "no usable image" in err and "3 file(s) skipped" in err
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# 6. Bad options: exit 2, one line naming the option, nothing written


@pytest.mark.parametrize("argv, named", [
    (["--protocol", "nearest"], "--protocol"),
    (["--data", "imagenet"], "--data"),
])
def test_eval_bad_options_exit_2_and_write_nothing(tmp_path, tiny_run, capsys, argv, named):
    run = copy_run(tiny_run, tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["eval", str(run), "--no-progress", *argv]) == 2
    err = _one_line_error(capsys)
    assert named in err and argv[1] in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_eval_missing_run_folder_exits_2(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["eval", str(missing), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "RUN_DIR" in err and str(missing) in err
    assert not missing.exists()


@pytest.mark.parametrize("argv, named", [
    (["--subset", "0"], "--subset"),
    (["--width", "-1"], "--width"),
    (["--lr", "-1"], "--lr"),
    (["--method", "byol", "--queue-size", "5"], "--queue-size"),  # a MoCo option, not BYOL's
    (["--method", "simclr", "--tau-base", "0.9"], "--tau-base"),  # a BYOL option, not SimCLR's
    (["--target", "online"], "--target"),  # checked by the method's config before anything is written
    (["--bootstrap-weight", "0"], "--bootstrap-weight"),
    (["--method", "swav", "--num-local-crops", "-1"], "--num-local-crops"),
])
def test_train_bad_options_exit_2_and_write_nothing(tmp_path, capsys, argv, named):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--no-progress", "--out", str(out), *argv]) == 2
    assert named in _one_line_error(capsys)
    assert not out.exists()


def test_api_unknown_method_option_is_a_config_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--not-an-option: is not an option of method 'byol'"):
        train(method="byol", data="digits", out=str(out), progress=False, not_an_option=1)
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["train", "--no-such-flag"],
    ["train", "--epochs", "three"],
    ["train", "--width", "wide"],
    ["eval"],  # RUN_DIR missing
    ["nonsense"],
])
def test_argparse_errors_exit_2(tmp_path, capsys, argv):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(out)] if argv[0] == "train" else argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
