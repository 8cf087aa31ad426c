"""Backbones: shapes, width, stem, channels, torchvision compatibility."""

import pytest
import torch
import torchvision

from selfsup.models import build_backbone
from selfsup.models.norm import WSConv2d


def test_resnet18_full_width_loads_strictly_into_torchvision():
    ours = build_backbone("resnet18")
    ref = torchvision.models.resnet18()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))


def test_width_stem_and_channels():
    model = build_backbone("resnet18", width=0.25, in_channels=1, small_stem=True)
    assert model.feature_dim == 128
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 128)
    r50 = build_backbone("resnet50", width=0.25, small_stem=True)
    assert r50.feature_dim == 512 and r50(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_groupnorm_ws_has_no_batchnorm_and_standardised_convs():
    model = build_backbone("resnet18", width=0.25, small_stem=True, norm="groupnorm_ws")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.conv1, WSConv2d)
    # batch independence: a sample's features do not depend on the rest of the batch
    model.train()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(x)[:1], model(x[:1]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, last", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_each_blocks_last_norm_scale_only(name, last):
    torch.manual_seed(0)
    model = build_backbone(name, width=0.125, in_channels=1, small_stem=True, zero_init_residual=True)
    blocks = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    assert all(getattr(b, last).weight.abs().sum() == 0 for b in blocks)
    assert all(b.bn1.weight.eq(1).all() for b in blocks) and model.bn1.weight.eq(1).all()
    default = build_backbone(name, width=0.125, in_channels=1, small_stem=True)
    assert all(getattr(b, last).weight.eq(1).all() for layer in (default.layer1, default.layer4) for b in layer)


def test_zero_init_residual_follows_the_official_code_the_recipe_and_the_flag():
    from selfsup.config import TrainConfig, resolve

    def zero_init(method: str, size: int = 28, **options) -> bool:
        return resolve(TrainConfig(method=method, **options), size).zero_init_residual

    # the official code of BYOL, SimCLR, SimSiam, Barlow Twins and VICReg; not MoCo v2's or DINO's
    assert [zero_init(m, 224) for m in ("byol", "simclr", "simsiam", "barlow_twins", "vicreg", "moco", "dino")] == \
        [True, True, True, True, True, False, False]
    assert zero_init("byol") and zero_init("simclr") and not zero_init("moco")
    assert not zero_init("simsiam") and zero_init("simsiam", recipe="paper")  # the small recipe's measured choice
    assert not zero_init("byol", zero_init_residual=False)
    assert zero_init("moco", zero_init_residual=True) and zero_init("simsiam", zero_init_residual=True)
