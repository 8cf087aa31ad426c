"""Run folders written before the run-folder module (commit 8b8f4db, 2026-12-01) still load, evaluate,
export and report: ``tests/data/byol-digits-2026-12-01`` was trained by that commit (BYOL, 128 digits,
width 0.0625, one epoch) and is kept as it was written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from selfsup.api import evaluate, export, load_encoder, load_run, report

OLD_RUN = Path(__file__).parent / "data" / "byol-digits-2026-12-01"


def test_an_old_run_folder_loads_and_scores_what_it_scored_then(tmp_path, one_thread):
    run = Path(shutil.copytree(OLD_RUN, tmp_path / OLD_RUN.name))
    loaded = load_run(run)
    assert loaded.config.method == "byol" and loaded.resolved.image_size == 8
    then = json.loads((run / "summary.json").read_text())
    now = evaluate(run, protocol="knn", device="cpu", progress=False)
    assert now["knn_top1"] == then["knn_top1"] and now["random_init_knn_top1"] == then["random_init_knn_top1"]
    exported = export(run, format="safetensors")
    encoder = load_encoder(exported["path"])
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(encoder(x), loaded.encoder(x))
    result = report(run, html=False, progress=False)
    assert "loss" in result.plots
