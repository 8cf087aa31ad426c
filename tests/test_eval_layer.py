"""Reading a ResNet at a chosen stage (RotNet's finding: an intermediate block can beat the last)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import copy_run
from selfsup.api import embed, evaluate
from selfsup.cli import main
from selfsup.models import StageEncoder, build_backbone, encoder_at_stage


def test_stage_encoder_pools_the_stage_feature_map():
    backbone = build_backbone("resnet18", width=0.125, in_channels=1, small_stem=True).eval()
    x = torch.rand(3, 1, 16, 16)
    maps = backbone.stage_outputs(x)
    assert [m.shape[1] for m in maps] == backbone.stage_dims
    assert torch.allclose(backbone(x), maps[-1].mean(dim=(2, 3)), atol=1e-6)
    second = encoder_at_stage(backbone, 2)
    assert isinstance(second, StageEncoder) and second.feature_dim == backbone.stage_dims[1]
    assert torch.equal(second(x), maps[1].mean(dim=(2, 3)))
    assert encoder_at_stage(backbone, None) is backbone and encoder_at_stage(backbone, 4) is backbone
    with pytest.raises(ValueError, match="stage"):
        encoder_at_stage(backbone, 5)


def test_eval_and_embed_read_the_chosen_stage(tiny_run, tmp_path, one_thread):
    run = copy_run(tiny_run, tmp_path)
    result = evaluate(run, protocol="knn", device="cpu", progress=False, layer=2)
    assert (run / "eval" / "layer2" / "knn-digits.json").exists() and not (run / "eval" / "knn-digits.json").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert result["knn_top1"] != summary["knn_top1"]  # another representation
    out = embed(run, out=tmp_path / "e.npz", split="test", device="cpu", progress=False, layer=2)
    assert out["dim"] == build_backbone("resnet18", width=0.125).stage_dims[1]
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (out["rows"], out["dim"])


def test_eval_layer_is_checked(capsys, tmp_path):
    assert main(["train", "--eval-layer", "7", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert "--eval-layer" in capsys.readouterr().err
