"""Faults from the machine around a run, concurrent runs, honest small evaluations, config files.

The file system's refusals (no space, read-only, permission denied) are simulated at each write site
by making the final rename of an atomic write, the folder creation or the metrics append fail with
that errno; a root user (CI) cannot be refused by permissions for real.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
from pathlib import Path

import pytest
import yaml

from helpers import copy_run, train_flags
from selfsup import io as selfsup_io
from selfsup.api import load_config
from selfsup.cli import main
from selfsup.cli.main import print_scores
from selfsup.config import ConfigError, TrainConfig, options_from_file, recipe_names
from selfsup.evaluation.intervals import small_split_warning, wilson_interval
from selfsup.methods import METHODS
from selfsup.methods.catalogue import CATALOGUE
from selfsup.runs import stored_config
from selfsup.runs.lock import run_folder_lock
from selfsup.train import loop as loop_module
from selfsup.train.checkpoint import safe_load

# 256 digits / 64 = 4 steps per epoch, a checkpoint each epoch
SMALL = dict(data="digits", subset=256, width=0.125, batch_size=64, epochs=2, eval_after=False, progress=False,
             projector_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32)
CODES = {errno.ENOSPC: "ENOSPC", errno.EROFS: "EROFS", errno.EACCES: "EACCES"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _refuse_replace(monkeypatch, name: str, code: int, after: int = 0) -> None:
    """The rename that completes an atomic write of a file called ``name`` fails with ``code`` (as a
    full / read-only / forbidden disk would fail the write), after ``after`` successful ones."""
    real, seen = os.replace, {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(code, os.strerror(code))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(selfsup_io.os, "replace", replace)


# ---------------------------------------------------------------------------------------------
# The file system says no


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_refused_checkpoint_write_is_one_line_exit_4_and_the_last_checkpoint_survives(tmp_path, monkeypatch,
                                                                                        capsys, code, one_thread):
    run = tmp_path / "run"
    _refuse_replace(monkeypatch, "last.pt", code, after=1)  # the first epoch's checkpoint is written
    assert main(["train", *train_flags(**SMALL), "--out", str(run)]) == 4
    err = _one_line_error(capsys)
    assert str(run / "checkpoints" / "last.pt") in err and f"[{CODES[code]}]" in err and "--resume" in err
    assert safe_load(run / "checkpoints" / "last.pt")["step"] == 4  # intact, loadable
    assert not list((run / "checkpoints").glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # once the cause is gone
    assert json.loads((run / "summary.json").read_text())["steps"] == 8


def test_a_full_disk_while_logging_names_the_metrics_file(tmp_path, monkeypatch, capsys, one_thread):
    real_log = loop_module._MetricsLogger.log

    def log(self, record):
        if record["step"] >= 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_log(self, record)

    monkeypatch.setattr(loop_module._MetricsLogger, "log", log)
    run = tmp_path / "run"
    assert main(["train", *train_flags(**SMALL), "--log-every", "1", "--out", str(run)]) == 4
    err = _one_line_error(capsys)
    assert "No space left on device [ENOSPC]" in err and str(run / "checkpoints" / "last.pt") in err
    assert safe_load(run / "checkpoints" / "last.pt")["step"] == 4


def test_a_read_only_destination_fails_before_training_with_the_folder_named(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["train", *train_flags(**SMALL), "--out", str(out)]) == 4
    err = _one_line_error(capsys)
    assert f"{out}: Read-only file system [EROFS]" in err and "run it again" in err
    assert not out.exists()


def test_a_file_where_the_run_folder_should_be(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert main(["train", *train_flags(**SMALL), "--out", str(blocker / "run")]) == 4
    assert str(blocker) in _one_line_error(capsys)


@pytest.mark.parametrize(("argv", "name"), [(["eval", "RUN", "--protocol", "knn", "--no-progress"],
                                             "knn-digits.json"),
                                            (["export", "RUN", "--format", "safetensors"], "encoder.safetensors")])
def test_refused_eval_and_export_writes_are_one_line_exit_4(tiny_run, tmp_path, monkeypatch, capsys, argv, name,
                                                            one_thread):
    run = copy_run(tiny_run, tmp_path)
    _refuse_replace(monkeypatch, name, errno.ENOSPC)
    assert main([str(run) if a == "RUN" else a for a in argv]) == 4
    err = _one_line_error(capsys)
    assert name in err and "[ENOSPC]" in err
    assert not [p for p in run.rglob("*.tmp")]


# ---------------------------------------------------------------------------------------------
# Two processes, one run folder


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(tiny_run, tmp_path, capsys, one_thread):
    run = copy_run(tiny_run, tmp_path)
    with run_folder_lock(run, "selfsup train"):  # another process training into it
        for argv in (["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"],
                     ["train", *train_flags(**SMALL), "--out", str(run), "--overwrite"],
                     ["eval", str(run), "--protocol", "knn", "--no-progress"]):
            assert main(argv) == 2
            err = _one_line_error(capsys)
            assert f"{run}: in use by process {os.getpid()}" in err and "selfsup train" in err
    assert (run / "summary.json").exists() and not (run / "eval").exists()  # nothing was touched
    # a lock file left by a process that is gone (killed: the kernel released its lock)
    (run / ".lock").write_text("process 999999 on elsewhere (selfsup train, since 2026-01-01 00:00:00)\n")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0


def test_sigterm_while_loading_data_exits_130_with_the_command_to_run_again(tmp_path, monkeypatch, capsys):
    from selfsup.runs import build

    def slow_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the data loading")

    monkeypatch.setattr(build, "load_data", slow_load)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["train", *train_flags(**SMALL), "--out", str(tmp_path / "run")]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "selfsup train: interrupted. Run it again with:" in err and "--out" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# The random baselines a skeptic would pick, and small evaluation splits


def test_both_random_encoders_are_in_the_summary_and_the_printed_table(tiny_run, capsys):
    summary = json.loads((tiny_run / "summary.json").read_text())
    for prefix in ("random_init_", "random_default_init_", "raw_pixels_"):
        assert isinstance(summary[f"{prefix}knn_top1"], float), prefix
    # zero-initialised blocks start as shortcuts: the default-init encoder is a different network
    assert summary["random_init_knn_top1"] != summary["random_default_init_knn_top1"]
    print_scores(summary, ["knn", "linear"])  # the table `selfsup train` and `selfsup demo` print
    out = capsys.readouterr().out
    assert "random init (same init)" in out and "random init (default init)" in out
    assert "(same init): this run's architecture and initialisation" in out
    low, high = summary["knn_top1_ci95"]
    assert low < summary["knn_top1"] < high


def test_wilson_interval_matches_its_formula():
    z = 1.959963984540054
    for correct, n in ((81, 100), (3, 3), (0, 10), (500, 1000)):
        p = correct / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson_interval(p, n) == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-12)
    assert wilson_interval(1.0, 3)[0] == pytest.approx(0.4385, abs=1e-4)  # "100%" of 3 images
    assert small_split_warning(3, "folder:x") is not None and "train/ and test/" in small_split_warning(3, "x")
    assert small_split_warning(10000, "fashion-mnist") is None


# ---------------------------------------------------------------------------------------------
# Config files, recipes, per-method help


def test_config_round_trips_a_runs_config_yaml(tiny_run):
    stored = stored_config(tiny_run)
    again = load_config(tiny_run / "config.yaml")
    defaults = TrainConfig()
    assert again == stored.__class__(**{**stored.__dict__, "out": defaults.out, "resume": defaults.resume,
                                        "overwrite": defaults.overwrite})
    assert load_config(tiny_run / "config.yaml", epochs=3).epochs == 3  # flags override the file


def test_config_file_unknown_key_names_its_nearest_match(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "byol", "tau_bse": 0.9}))
    with pytest.raises(ConfigError, match="unknown key 'tau_bse'; did you mean tau_base"):
        options_from_file(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "tau_base" in _one_line_error(capsys) and not (tmp_path / "r").exists()


def test_recipes_load_and_cite_their_source():
    assert {"byol-imagenet", "byol-cifar10", "simclr-cifar10"} <= set(recipe_names())
    for name in recipe_names():
        cfg = load_config(name)
        assert cfg.method in METHODS
    assert load_config("byol-imagenet").batch_size == 4096
    assert load_config("simclr-cifar10").method_options["temperature"] == 0.5


def test_method_help_shows_its_own_options_with_paper_and_small_values(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--method", "byol", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "byol hyperparameters (Grill et al., NeurIPS 2020)" in out and "paper: 4096; small: 1024" in out
    assert "--temperature" not in out  # SimCLR's, not BYOL's


def test_methods_command_lists_every_method(capsys):
    assert set(CATALOGUE) >= set(METHODS)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS) and "Grill et al., NeurIPS" in out
