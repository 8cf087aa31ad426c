"""Training from an on-disk store: `selfsup convert`, `--data store:`, the data mode, exact resume.

The store is built from the bundled digits (as PNG, so it reads back exactly) in shards of 120
images; the run streams it with one DataLoader worker, crops drawn on the stored images.
"""

from __future__ import annotations

import json
import signal

import pytest
from PIL import Image

from helpers import assert_identical, file_stamp, spawn_selfsup, train_flags, wait_exit, wait_for
from selfsup.cli import main
from selfsup.config import TrainConfig
from selfsup.data.sources import load_data
from selfsup.data.store import build_store
from selfsup.runs.build import data_mode, load_split
from selfsup.train.checkpoint import safe_load

BYOL_HEADS = dict(projector_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32)
STREAM_RUN = dict(method="byol", image_size=16, width=0.125, batch_size=64, data_mode="stream", data_workers=1,
                  checkpoint_every=2, eval_after=False, progress=False, seed=5, **BYOL_HEADS)


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "digits.store"
    build_store(load_data("digits"), store, shard_size=120, progress=False)
    return store


def test_convert_command_builds_a_store_that_train_reads(tmp_path, capsys):
    folder, split = tmp_path / "images", load_data("digits")
    for label, name in ((0, "zero"), (1, "one")):
        (folder / name).mkdir(parents=True)
        picked = (split.train.labels == label).nonzero().flatten()[:12]
        for i in picked.tolist():
            Image.fromarray(split.train.images[i, 0].numpy()).save(folder / name / f"{i}.png")
    (folder / "one" / "broken.png").write_bytes(b"not a png")
    assert main(["convert", f"folder:{folder}", "--out", str(tmp_path / "s"), "--shard-size", "8",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable files" in out and "train with: selfsup train --data store:" in out
    split = load_data(f"store:{tmp_path / 's'}", image_size=8, progress=False)
    assert len(split.train) + len(split.test) == 24 and split.train.classes == ["one", "zero"]
    assert [path for path, _ in split.skipped] == [str(folder / "one" / "broken.png")]


def test_data_mode_auto_keeps_a_small_store_in_memory(digits_store):
    cfg = TrainConfig(data=f"store:{digits_store}", image_size=16)
    assert data_mode(cfg) == "memory"
    assert len(load_split(cfg).train) == len(load_data("digits").train)
    streamed = TrainConfig(data=f"store:{digits_store}", image_size=16, data_mode="stream")
    assert data_mode(streamed) == "stream"


def test_stream_mode_needs_a_store(capsys, tmp_path):
    assert main(["train", "--data", "digits", "--data-mode", "stream", "--out", str(tmp_path / "r")]) == 2
    assert "--data-mode stream: digits is not a store" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_store_backed_run_killed_and_resumed_ends_bit_identical(digits_store, tmp_path):
    """SIGKILL twice after checkpoints mid-epoch, resume each time: the same weights, optimiser and log
    as an uninterrupted run (2 epochs of 22 steps, a checkpoint every 2 steps)."""
    args = ["train", *train_flags(data=f"store:{digits_store}", epochs=2, **STREAM_RUN)]
    reference, run = tmp_path / "reference", tmp_path / "run"
    ref_proc = spawn_selfsup(*args, "--out", reference, log=tmp_path / "reference.log")
    ckpt = run / "checkpoints" / "last.pt"
    proc = spawn_selfsup(*args, "--out", run, log=tmp_path / "run.log")
    for target in (6, 26):  # mid-epoch 1, mid-epoch 2
        seen = {"stamp": None, "step": 0}

        def reached(seen: dict = seen, target: int = target) -> bool:
            stamp = file_stamp(ckpt)
            if stamp is not None and stamp != seen["stamp"]:
                seen["stamp"], seen["step"] = stamp, safe_load(ckpt)["step"]
            return seen["step"] >= target

        assert wait_for(reached, proc), (tmp_path / "run.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        assert wait_exit(proc) == -signal.SIGKILL
        proc = spawn_selfsup("train", "--out", run, "--resume", "--no-progress", log=tmp_path / "run.log")
    assert wait_exit(proc) == 0, (tmp_path / "run.log").read_text()[-2000:]
    assert wait_exit(ref_proc) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    a, b = safe_load(reference / "checkpoints" / "last.pt"), safe_load(ckpt)
    assert a["step"] == b["step"] == 44
    assert_identical(a["method"], b["method"], "method")
    assert_identical(a["optimizer"], b["optimizer"], "optimizer")
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (reference, run)]
    assert losses[0][-1] == losses[1][-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data_mode"] == "stream" and summary["train_images"] == len(load_data("digits").train)
