"""Hand-off of a trained encoder: torchvision / safetensors / ONNX exports, load_encoder, embed."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import selfsup
from helpers import train_tiny_run
from selfsup import api
from selfsup.cli import main
from selfsup.data.sources import load_data
from selfsup.evaluation.frozen import eval_preprocess
from selfsup.handoff import EncoderInfo, ExportError
from selfsup.handoff.formats import check_torchvision_compatible, write_safetensors, write_torchvision
from selfsup.models import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """The tiny run at width 1 (torchvision-compatible; the shared ``tiny_run`` is not), small stem, one
    input channel; a single training step, no evaluation."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "wide", width=1.0, subset=64, eval_after=False)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", progress=False)


def _inputs(run_dir, images):
    run = api.load_run(run_dir)
    return run.encoder, eval_preprocess(run.resolved.image_size, run.mean, run.std)(images)


def _all_eval(model):
    return not any(m.training for m in model.modules())


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_export_loads_strictly_with_the_documented_code(wide_run, digits, tmp_path):
    result = api.export(wide_run, format="torchvision", out=tmp_path / "encoder.pt")
    weights, sidecar = tmp_path / "encoder.pt", tmp_path / "encoder.json"
    assert result["files"] == [str(weights), str(sidecar)]
    meta = json.loads(sidecar.read_text())
    run = api.load_run(wide_run)
    assert meta["mean"] == pytest.approx(run.mean) and meta["std"] == pytest.approx(run.std)
    assert meta["image_size"] == 8 and meta["in_channels"] == 1 and meta["small_stem"] is True

    # the README's recipe, verbatim: small stem -> replace conv1 and maxpool, then strict load
    m = torchvision.models.resnet18()
    m.fc = nn.Identity()
    m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    m.eval()

    encoder, x = _inputs(wide_run, digits.test.images[:16])
    with torch.no_grad():
        expected = encoder(x)
        assert torch.allclose(m(x), expected, atol=1e-5, rtol=1e-5)

    # the loading code written into the sidecar runs as is
    scope = {}
    exec("\n".join(meta["load"]).replace("'encoder.pt'", repr(str(weights))), scope)
    with torch.no_grad():
        assert torch.allclose(scope["m"](x), expected, atol=1e-5, rtol=1e-5)

    # and load_encoder rebuilds a torchvision ResNet from .pt + sidecar
    loaded = api.load_encoder(weights)
    assert isinstance(loaded, torchvision.models.ResNet) and _all_eval(loaded)
    assert loaded.selfsup_info.mean == pytest.approx(run.mean)
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_torchvision_standard_stem_needs_no_changes(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=1.0, in_channels=3, small_stem=False).eval()
    info = EncoderInfo(backbone="resnet18", width=1.0, in_channels=3, small_stem=False, norm="batchnorm",
                       image_size=32, mean=[0.5] * 3, std=[0.25] * 3, feature_dim=512)
    write_torchvision(backbone, info, tmp_path / "rn18.pt")
    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load(tmp_path / "rn18.pt", weights_only=True), strict=True)
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), backbone(x), atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "rn18.json").read_text())["load"][3:5] == [
        "m.fc = nn.Identity()", "m.load_state_dict(torch.load('rn18.pt', weights_only=True), strict=True)"]


def test_torchvision_export_refuses_other_widths_clearly(tiny_run, tmp_path, capsys):
    with pytest.raises(ExportError, match=r"width 0\.125.*torchvision\.models\.resnet18\(\).*safetensors"):
        api.export(tiny_run, format="torchvision", out=tmp_path / "x.pt")
    assert main(["export", str(tiny_run), "--format", "torchvision", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--format torchvision" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_torchvision_export_refuses_groupnorm_ws():
    info = EncoderInfo(backbone="resnet18", width=1.0, in_channels=3, small_stem=False, norm="groupnorm_ws",
                       image_size=32, mean=[0.5] * 3, std=[0.25] * 3, feature_dim=512)
    with pytest.raises(ExportError, match="weight-standardised.*safetensors"):
        check_torchvision_compatible(info)


# ----------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_gives_identical_features(tiny_run, digits, tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(tiny_run), "--format", "safetensors", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    assert header["backbone"] == "resnet18" and json.loads(header["width"]) == 0.125
    assert header["norm"] == "batchnorm" and json.loads(header["small_stem"]) is True
    assert json.loads(header["image_size"]) == 8 and len(json.loads(header["mean"])) == 1
    assert header["selfsup_version"] == selfsup.__version__

    loaded = selfsup.load_encoder(out)
    assert _all_eval(loaded)
    encoder, x = _inputs(tiny_run, digits.train.images[:32])
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
    assert loaded.selfsup_info.preprocess()(digits.train.images[:32]).equal(x)


def test_safetensors_rebuilds_groupnorm_ws(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=0.125, in_channels=3, small_stem=True, norm="groupnorm_ws").eval()
    info = EncoderInfo(backbone="resnet18", width=0.125, in_channels=3, small_stem=True, norm="groupnorm_ws",
                       image_size=16, mean=[0.5] * 3, std=[0.25] * 3, feature_dim=backbone.feature_dim)
    write_safetensors(backbone, info, tmp_path / "ws.safetensors")
    loaded = api.load_encoder(tmp_path / "ws.safetensors")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))


# ----------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_with_a_dynamic_batch(tiny_run, digits, tmp_path):
    import onnx
    import onnxruntime

    result = api.export(tiny_run, format="onnx", out=tmp_path / "enc.onnx")
    assert result["files"] == [str(tmp_path / "enc.onnx")]  # one self-contained file
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "enc.onnx")).metadata_props}
    assert json.loads(props["image_size"]) == 8 and props["backbone"] == "resnet18"
    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    encoder, x = _inputs(tiny_run, digits.test.images[:37])
    with torch.no_grad():
        expected = encoder(x).numpy()
    for rows in (slice(0, 1), slice(0, 37)):
        got = session.run(["features"], {"images": x[rows].numpy()})[0]
        np.testing.assert_allclose(got, expected[rows], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- embed, load_encoder


def test_embed_rows_follow_dataset_order_and_labels(tiny_run, digits, tmp_path):
    result = api.embed(tiny_run, out=tmp_path / "emb.npy", progress=False)
    n_train, n_test = len(digits.train), len(digits.test)
    assert result["rows"] == n_train + n_test and result["splits"] == {"train": n_train, "test": n_test}
    a = np.load(tmp_path / "emb.npy")  # a structured array, no pickle
    assert a["embedding"].shape == (n_train + n_test, result["dim"]) and a["embedding"].dtype == np.float32
    assert list(a["split"][:n_train]) == ["train"] * n_train and list(a["split"][n_train:]) == ["test"] * n_test
    assert np.array_equal(a["index"], np.r_[np.arange(n_train), np.arange(n_test)])
    assert np.array_equal(a["label"], np.r_[digits.train.labels.numpy(), digits.test.labels.numpy()])
    assert a["class"][0] == str(int(digits.train.labels[0]))

    encoder, x_train = _inputs(tiny_run, digits.train.images[[0, 5, n_train - 1]])
    _, x_test = _inputs(tiny_run, digits.test.images[[0, n_test - 1]])
    with torch.no_grad():
        np.testing.assert_allclose(a["embedding"][[0, 5, n_train - 1]], encoder(x_train).numpy(), atol=1e-5)
        np.testing.assert_allclose(a["embedding"][[n_train, n_train + n_test - 1]], encoder(x_test).numpy(),
                                   atol=1e-5)


def test_embed_cli_parquet_and_npz_match(tiny_run, digits, tmp_path):
    import pyarrow.parquet as pq

    assert main(["embed", str(tiny_run), "--data", "digits", "--split", "test", "--out",
                 str(tmp_path / "emb.parquet"), "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.num_rows == len(digits.test)
    assert table.column("label").to_pylist() == digits.test.labels.tolist()
    assert json.loads(table.schema.metadata[b"selfsup"])["encoder"]["width"] == 0.125
    api.embed(tiny_run, data="digits", split="test", out=tmp_path / "emb.npz", progress=False)
    z = np.load(tmp_path / "emb.npz")
    parquet_emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(parquet_emb, z["embeddings"])
    assert np.array_equal(z["indices"], np.arange(len(digits.test))) and set(z["splits"]) == {"test"}


def test_load_encoder_from_run_folder_is_ready(tiny_run):
    encoder = selfsup.load_encoder(tiny_run)
    assert _all_eval(encoder) and encoder.selfsup_info.image_size == 8
    with torch.no_grad():
        assert encoder(torch.zeros(2, 1, 8, 8)).shape == (2, encoder.selfsup_info.feature_dim)
    assert callable(selfsup.export) and callable(selfsup.embed)
