"""The generic loop and the run folder: exact resume, signals, summary, clear option errors."""

import json
import os
import signal

import pytest
import torch

from selfsup.api import load_run, train
from selfsup.cli import main
from selfsup.methods.byol import BYOL
from selfsup.train.checkpoint import safe_load

TINY = dict(method="byol", data="digits", backbone="resnet18", width=0.125, batch_size=64, seed=3,
            progress=False, projector_hidden_dim=64, projection_dim=32, predictor_hidden_dim=64)


def _weights(run_dir):
    return safe_load(run_dir / "checkpoints" / "last.pt")


def test_run_folder_has_summary_config_metrics_and_checkpoint(tmp_path):
    summary = train(out=str(tmp_path / "run"), epochs=2, **TINY)
    run = tmp_path / "run"
    for key in ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1",
                "raw_pixels_knn_top1", "images_per_second", "seconds", "method", "backbone", "epochs",
                "device", "versions"):
        assert key in summary
    assert json.loads((run / "summary.json").read_text()) == summary
    for key in ("knn_top1", "linear_top1", "random_init_knn_top1", "raw_pixels_knn_top1"):
        assert 0.0 <= summary[key] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 1437 // 64
    assert records[-1]["step"] == 2 * steps_per_epoch
    assert {"loss", "lr", "tau", "std_scaled", "rankme"} <= set(records[-1])
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.pt").exists()
    loaded = load_run(run)
    assert isinstance(loaded.method, BYOL)
    torch.testing.assert_close(loaded.method.state_dict()["encoder.conv1.weight"],
                               _weights(run)["method"]["encoder.conv1.weight"])


def test_eval_protocols_knn_scores_knn_only_for_the_run_and_its_baselines(tmp_path):
    summary = train(out=str(tmp_path / "run"), epochs=1, eval_protocols="knn", **TINY)
    assert {"knn_top1", "random_init_knn_top1", "raw_pixels_knn_top1"} <= set(summary)
    assert not [key for key in summary if "linear" in key]


def test_lars_clip_option_overrides_the_recipe():
    from selfsup.config import TrainConfig, resolve

    assert resolve(TrainConfig(method="byol"), 28).lars_clip  # the small recipe clips
    assert not resolve(TrainConfig(method="byol", lars_clip=False), 28).lars_clip
    assert resolve(TrainConfig(method="simclr", lars_clip=True), 28).lars_clip


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(out=str(full), epochs=2, eval_after=False, **TINY)

    stopped_at = 29  # mid-epoch (22 steps per epoch)
    original = BYOL.on_step_end

    def kill_at(self, step, total_steps):
        out = original(self, step, total_steps)
        if step == stopped_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(BYOL, "on_step_end", kill_at)
    part = tmp_path / "part"
    from selfsup.train.loop import TrainingInterrupted
    with pytest.raises(TrainingInterrupted) as info:
        train(out=str(part), epochs=2, eval_after=False, **TINY)
    assert info.value.step == stopped_at
    assert _weights(part)["step"] == stopped_at
    monkeypatch.setattr(BYOL, "on_step_end", original)

    train(out=str(part), resume=True, progress=False)
    a, b = _weights(full), _weights(part)
    assert a["step"] == b["step"] == 44
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [json.loads(x)["step"]
                                                      for x in (full / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("argv, option", [
    (["--method", "nope"], "--method"),
    (["--backbone", "vgg"], "--backbone"),
    (["--data", "imagenet"], "imagenet"),
    (["--epochs", "-1"], "--epochs"),
    (["--data", "digits", "--batch-size", "5000"], "--batch-size"),
    (["--data", "digits", "--subset", "100000"], "--subset"),
    (["--tau-base", "0.9", "--method", "byol", "--augment-off", "colour"], "--augment-off"),
    (["--data", "digits", "--eval-protocols", "knn,finetune"], "--eval-protocols"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, option):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err
    assert not out.exists()


def test_existing_run_folder_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["train", "--data", "digits", "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
