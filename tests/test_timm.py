"""timm models as encoders (``--backbone timm:NAME``): small-image stems, options, export and load_encoder."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import selfsup
from helpers import tiny_method, train_tiny_run
from selfsup import api
from selfsup.cli import main
from selfsup.config import ConfigError, TrainConfig, validate
from selfsup.handoff import EncoderInfo, ExportError
from selfsup.handoff.formats import check_torchvision_compatible, write_safetensors
from selfsup.models import build_backbone, encoder_at_stage
from selfsup.models.timm_backbones import TimmError
from selfsup.runs import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _build(name, **kwargs):
    torch.manual_seed(0)
    return build_backbone(name, in_channels=kwargs.pop("in_channels", 1), **kwargs)


def _grid(model, size):
    """Spatial size of the last feature map of a timm CNN at ``size`` px."""
    return model.forward_features(torch.randn(2, 1, size, size)).shape[-1]


# ----------------------------------------------------------------------------- building


def test_resnet_family_gets_the_small_image_stem():
    small = _build("timm:test_resnet", small_stem=True)
    assert isinstance(small, nn.Module) and small.timm_name == "timm:test_resnet"
    conv = small.conv1  # timm's deep 3-conv stem (stride 2) + max-pool -> one 3x3 stride-1 conv, no pool
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.kernel_size, conv.stride) == (1, (3, 3), (1, 1))
    assert conv.out_channels == small.bn1.num_features and isinstance(small.maxpool, nn.Identity)
    large = _build("timm:test_resnet", small_stem=False)
    assert isinstance(large.conv1, nn.Sequential) and isinstance(large.maxpool, nn.MaxPool2d)
    assert (_grid(small, 28), _grid(large, 28)) == (4, 1)  # 8x less downsampling: 28 -> 4 instead of 1
    x = torch.randn(3, 1, 28, 28)
    assert small(x).shape == large(x).shape == (3, small.feature_dim) == (3, 96)  # pooled, no classifier


def test_vit_family_gets_patch_4_and_takes_any_input_size():
    vit = _build("timm:test_vit", small_stem=True)
    assert vit.patch_embed.patch_size == (4, 4) and vit.feature_dim == vit.embed_dim == 64
    for size in (28, 32, 12):  # global and local crops through one network (position embeddings resized)
        assert vit(torch.randn(2, 1, size, size)).shape == (2, 64)
    assert _build("timm:test_vit", small_stem=False).patch_embed.patch_size == (16, 16)


def test_subclasses_of_vit_get_the_small_patch_too():
    deit = _build("timm:deit_tiny_distilled_patch16_224", small_stem=True, image_size=28)  # __init__(*args, **kw)
    assert deit.patch_embed.patch_size == (4, 4) and deit.patch_embed.img_size == (28, 28)
    assert deit(torch.randn(2, 1, 28, 28)).shape == (2, deit.feature_dim)


def test_models_are_built_for_and_checked_at_the_run_image_size():
    fixed = _build("timm:test_vit_relpos", small_stem=True, image_size=28)  # no dynamic_img_size: built for 28 px
    assert fixed(torch.randn(2, 1, 28, 28)).shape == (2, fixed.feature_dim)
    with pytest.raises(AssertionError, match="doesn't match model"):
        _build("timm:test_vit_relpos", small_stem=True)(torch.randn(2, 1, 28, 28))  # 32 px without image_size
    # too deep for 28 px (the meta-device run says so before any weight is made) or not buildable for it
    with pytest.raises(TimmError, match=r"^--image-size: timm:densenet121 does not run on 28 x 28 images \(.*\); "):
        _build("timm:densenet121", small_stem=True, image_size=28)
    with pytest.raises(TimmError, match=r"^--backbone: timm:nest_tiny cannot be built for 28 x 28 images with "
                                        r"img_size=28 \(AssertionError: .*\); try another --image-size$"):
        _build("timm:nest_tiny", small_stem=True, image_size=28)


def test_convnext_small_stem_is_stride_1():
    small, large = _build("timm:test_convnext", small_stem=True), _build("timm:test_convnext", small_stem=False)
    assert small.stem[0].stride == (1, 1) and large.stem[0].stride == (4, 4)
    assert (_grid(small, 32), _grid(large, 32)) == (4, 1)


def test_in_chans_and_feature_dim_follow_the_model():
    # MobileNetV3's pooled features go through its conv_head: 1024-d, not num_features (576)
    m = _build("timm:mobilenetv3_small_100", in_channels=3, small_stem=True).eval()
    assert m.num_features != m.feature_dim
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, m.feature_dim)
    assert m.conv_stem.in_channels == 3 and not hasattr(m, "maxpool")  # a family that keeps its stem


def test_zero_init_residual_is_timm_zero_init_last():
    def last_norm_scales(model):
        return torch.cat([(m.bn3 if hasattr(m, "bn3") else m.bn2).weight for m in model.modules()
                          if hasattr(m, "zero_init_last")])

    zero, default = (last_norm_scales(_build("timm:test_resnet", zero_init_residual=z)) for z in (True, False))
    assert len(zero) == len(default) > 0 and (zero == 0).all() and (default == 1).all()


def test_grad_checkpointing_uses_timm_and_gives_the_same_gradients():
    x = torch.randn(4, 1, 16, 16)
    grads = []
    for checkpointing in (False, True):
        model = _build("timm:test_resnet", small_stem=True, grad_checkpointing=checkpointing)
        assert model.grad_checkpointing is checkpointing
        model(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(TimmError, match=r"^--grad-checkpointing: .*timm:inception_v3"):
        build_backbone("timm:inception_v3", grad_checkpointing=True)


def test_stage_outputs_are_for_selfsups_resnets_only():
    with pytest.raises(ValueError, match="--eval-layer: .*not timm:test_resnet"):
        encoder_at_stage(_build("timm:test_resnet"), 2)


def test_multi_crop_method_trains_a_timm_vit():
    model = tiny_method("dino", backbone="timm:test_vit", width=1.0)
    views = [torch.randn(4, 1, 16, 16)] * 2 + [torch.randn(4, 1, 8, 8)] * 2
    out = model.training_step(views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- options and messages


@pytest.mark.parametrize("options, message", [
    (dict(backbone="timm:resnet10tt"), r"^--backbone: unknown timm model 'resnet10tt'; close matches: .*resnet10t"),
    (dict(backbone="timm:test_resnet", width=0.25), r"^--width: timm models are sized by their name"),
    (dict(backbone="timm:test_resnet", norm="groupnorm"), r"^--norm: timm:test_resnet keeps timm's own"),
    (dict(backbone="timm:inception_v3", grad_checkpointing=True), r"^--grad-checkpointing: the timm model"),
])
def test_validate_names_the_flag_and_the_fix(options, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig(**options))


def test_valid_timm_backbones_pass_validation():
    validate(TrainConfig(backbone="timm:test_resnet", grad_checkpointing=True))
    validate(TrainConfig(backbone="timm:resnet50.a1_in1k"))  # a pretrained tag names the same architecture


def test_cli_exits_2_with_one_line(capsys, monkeypatch, tmp_path):
    assert main(["train", "--backbone", "timm:resnt18", "--data", "digits", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "timm:resnet18" in err and "close matches" in err
    out = tmp_path / "run"  # 8-px digits through a 32x-downsampling DenseNet: refused before training
    assert main(["train", "--backbone", "timm:densenet121", "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--image-size: timm:densenet121 does not run on 8 x 8 images" in err
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    assert main(["train", "--backbone", "timm:test_resnet", "--data", "digits", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("selfsup train: error: --backbone: timm:test_resnet needs the optional package timm: "
                   "pip install 'selfsup[timm]'")


# ----------------------------------------------------------------------------- export and load


def _info(**kwargs):
    base = dict(backbone="timm:test_resnet", width=1.0, in_channels=1, small_stem=True, norm="batchnorm",
                image_size=28, mean=[0.5], std=[0.25], feature_dim=96, timm_version="x")
    return EncoderInfo(**{**base, **kwargs})


def test_safetensors_round_trip_keeps_timm_keys(tmp_path, monkeypatch):
    encoder = _build("timm:test_vit", small_stem=True, image_size=28).eval()  # as a 28-px run builds it
    info = _info(backbone="timm:test_vit", feature_dim=64)
    write_safetensors(encoder, info, tmp_path / "vit.safetensors")
    loaded = selfsup.load_encoder(tmp_path / "vit.safetensors")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
    assert set(loaded.state_dict()) == set(encoder.state_dict()) and "patch_embed.proj.weight" in encoder.state_dict()
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ExportError, match=r"needs the optional package timm: pip install 'selfsup\[timm\]'$"):
        selfsup.load_encoder(tmp_path / "vit.safetensors")


def test_weights_from_another_architecture_name_the_timm_versions(tmp_path):
    path = tmp_path / "a.safetensors"
    write_safetensors(_build("timm:test_resnet", small_stem=False), _info(timm_version="0.0.1"), path)
    with pytest.raises(ExportError, match=r"exported with timm 0\.0\.1\); install that timm version$"):
        selfsup.load_encoder(path)  # small_stem=True in its metadata: a different stem


def test_torchvision_format_is_refused_in_one_line():
    with pytest.raises(ExportError, match=r"^--format torchvision: timm:test_resnet is a timm model.*--format onnx$"):
        check_torchvision_compatible(_info())


@pytest.mark.slow
def test_timm_backbone_trains_one_step_exports_and_loads_back(tmp_path, capsys):
    run = train_tiny_run(tmp_path, "timm", backbone="timm:test_resnet", width=1.0, image_size=28, subset=64,
                         eval_after=False)
    loaded_run = api.load_run(run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1] and np.isfinite([s["loss"] for s in steps if "loss" in s])
    initial = build_method(loaded_run.config, loaded_run.resolved, 1).encoder  # the run's encoder before its step
    trained = loaded_run.encoder
    assert trained.timm_name == "timm:test_resnet" and isinstance(trained.maxpool, nn.Identity)
    assert any(not torch.equal(a, b) for a, b in zip(initial.state_dict().values(), trained.state_dict().values()))

    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.eval()(x)
    result = api.export(run, format="safetensors", out=tmp_path / "enc.safetensors")
    assert result["backbone"] == "timm:test_resnet" and result["timm_version"] == __import__("timm").__version__
    loaded = selfsup.load_encoder(tmp_path / "enc.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    api.export(run, format="onnx", out=tmp_path / "enc.onnx")  # checked against PyTorch with onnxruntime too
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0]), expected,
                               atol=1e-4, rtol=1e-4)

    assert main(["export", str(run), "--format", "torchvision", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "timm:test_resnet is a timm model" in err and not (tmp_path / "x.pt").exists()
