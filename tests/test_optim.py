"""LARS, parameter groups and the learning-rate schedule against their formulas."""

import math

import pytest
import torch

from selfsup.schedules import warmup_cosine
from selfsup.train.optim import LARS, build_optimizer


def _one_step(eta, clip, lr=0.5, wd=0.1):
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])                 # ||g|| = 1
    LARS([{"params": [w]}], lr=lr, weight_decay=wd, eta=eta, clip=clip).step()
    return w.detach()


def test_lars_step_matches_formula():
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])  # g + wd w, norm 1.5
    trust = 1e-3 * 5 / 1.5
    torch.testing.assert_close(_one_step(1e-3, False), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)


def test_lars_clip_caps_the_layer_rate_at_the_global_rate():
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    # eta ||w|| / ||g|| = 0.2 * 5 / 1.5 = 0.667 > lr = 0.5 -> clipped ratio 1: a plain SGD step
    torch.testing.assert_close(_one_step(0.2, True), torch.tensor([3.0, 4.0]) - 0.5 * g)
    # below the cap, the layer's rate is the trust ratio itself (LARC): eta ||w|| / ||g||
    trust = 1e-3 * 5 / 1.5
    torch.testing.assert_close(_one_step(1e-3, True), torch.tensor([3.0, 4.0]) - trust * g)


def test_biases_and_norms_get_no_decay_nor_adaptation():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = build_optimizer("lars", [{"params": list(model.parameters())}], lr=1.0, weight_decay=0.5)
    for group in opt.param_groups:
        vectors = all(p.ndim <= 1 for p in group["params"])
        assert group["lars_adapt"] is (not vectors)
        assert group["weight_decay"] == (0.0 if vectors else 0.5)
    bias = model[0].bias
    before = bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    torch.testing.assert_close(bias.detach(), before - 1.0)  # plain momentum-SGD step of size lr


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10, 2.0) == pytest.approx(0.2)
    assert warmup_cosine(9, 100, 10, 2.0) == pytest.approx(2.0)
    assert warmup_cosine(10, 100, 10, 2.0) == pytest.approx(2.0)
    assert warmup_cosine(55, 100, 10, 2.0) == pytest.approx(1.0)
    k = 30
    assert warmup_cosine(k, 100, 10, 2.0) == pytest.approx(1.0 + math.cos(math.pi * 20 / 90))
