"""BYOL: loss formula, EMA and tau schedule, gradient flow, switches."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_method
from selfsup.methods import BYOLConfig
from selfsup.methods.losses import byol_loss, nt_xent_loss
from selfsup.methods.momentum import cosine_tau, ema_update
from selfsup.train.optim import build_optimizer


def test_byol_loss_matches_hand_computed_case():
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    z = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # row 0: cos = (12 + 12) / 25 = 0.96 -> 2 - 1.92 = 0.08 ; row 1: cos = 0 -> 2
    assert byol_loss(p, z).item() == pytest.approx((0.08 + 2.0) / 2, abs=1e-6)
    # equals the squared distance of the normalised vectors (Eq. 2)
    direct = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(direct.item(), abs=1e-6)


def test_nt_xent_matches_direct_transcription():
    torch.manual_seed(1)
    z1, z2, t = torch.randn(4, 3), torch.randn(4, 3), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = 4
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i]
        losses.append(-math.log(math.exp(float(z[i] @ z[j]) / t) / sum(sims)))
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(sum(losses) / (2 * n), rel=1e-5)


def test_cosine_tau_schedule_matches_formula():
    base, total = 0.996, 1000
    assert cosine_tau(0, total, base) == pytest.approx(base)
    assert cosine_tau(total, total, base) == pytest.approx(1.0)
    assert cosine_tau(500, total, base) == pytest.approx(1 - 0.004 * 0.5)
    k = 250
    assert cosine_tau(k, total, base) == pytest.approx(1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2)


def test_ema_update_matches_formula():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    for old, new, online in zip(before, a.parameters(), b.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_target_gets_no_gradient_and_tracks_online_by_ema():
    model = tiny_method("byol")
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    out = model.training_step(views)
    out.loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is None for p in model.target_projector.parameters())
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert model.encoder.conv1.weight.grad is not None and model.predictor[0].weight.grad is not None
    with torch.no_grad():
        model.encoder.conv1.weight.add_(1.0)
    target_before = model.target_encoder.conv1.weight.clone()
    online = model.encoder.conv1.weight.clone()
    logged = model.on_step_end(10, 100)
    tau = cosine_tau(10, 100, 0.996)
    assert logged["tau"] == pytest.approx(tau)
    torch.testing.assert_close(model.target_encoder.conv1.weight, tau * target_before + (1 - tau) * online)


def test_loss_is_symmetric_sum_of_both_directions():
    model = tiny_method("byol")
    model.eval()  # deterministic BN so the two passes agree
    v1, v2 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        loss = model.training_step([v1, v2]).loss
        p = lambda v: model.predictor(model.projector(model.encoder(v)))
        t = lambda v: model.target_projector(model.target_encoder(v))
        expected = byol_loss(p(v1), t(v2)) + byol_loss(p(v2), t(v1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_stop_gradient_off_sends_gradients_into_target():
    model = tiny_method("byol", stop_gradient=False)
    model.training_step([torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]).loss.backward()
    assert model.target_encoder.conv1.weight.grad is not None


def test_no_predictor_has_no_predictor_parameters():
    model = tiny_method("byol", predictor=False)
    assert model.predictor is None
    assert not any("predictor" in name for name, _ in model.named_parameters())


def test_predictor_lr_multiplier_sets_optimizer_groups():
    model = tiny_method("byol", predictor_lr_multiplier=10.0)
    opt = build_optimizer("lars", model.param_groups(), lr=0.5, weight_decay=1e-6)
    predictor = {id(p) for p in model.predictor.parameters()}
    for group in opt.param_groups:
        in_pred = {id(p) in predictor for p in group["params"]}
        assert len(in_pred) == 1  # a group is all-predictor or all-rest
        assert group["lr"] == pytest.approx(5.0 if in_pred.pop() else 0.5)


def test_negatives_beta_zero_is_plain_byol_and_beta_adds_nt_xent():
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    plain, zero, one = (tiny_method("byol"), tiny_method("byol", negatives_beta=0.0),
                        tiny_method("byol", negatives_beta=1.0))
    for m in (plain, zero, one):
        m.eval()
    with torch.no_grad():
        a, b, c = (m.training_step(views) for m in (plain, zero, one))
    assert a.loss.item() == b.loss.item()
    assert c.loss.item() == pytest.approx(a.loss.item() + c.metrics["contrastive_loss"].item(), rel=1e-6)


def test_contrastive_only_variant_is_nt_xent_of_the_online_projections():
    """bootstrap_weight 0, beta 1, no predictor, target = online with gradient: SimCLR's loss."""
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    model = tiny_method("byol", bootstrap_weight=0.0, negatives_beta=1.0, predictor=False, target="none",
                      stop_gradient=False, negatives_temperature=0.2)
    model.eval()
    out = model.training_step(views)
    with torch.no_grad():
        z1, z2 = (model.projector(model.encoder(v)) for v in views)
    expected = nt_xent_loss(z1, z2, 0.2) + nt_xent_loss(z2, z1, 0.2)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()  # gradients reach the encoder through both branches
    assert all(p.grad is not None for p in model.projector.parameters())
    with pytest.raises(ValueError, match="--bootstrap-weight"):
        BYOLConfig(bootstrap_weight=0.0)


def test_target_none_uses_online_weights():
    model = tiny_method("byol", target="none")
    assert not hasattr(model, "target_encoder")
    assert model.on_step_end(1, 10)["tau"] == 0.0
