"""The memory bank, NPID (+ NPID++), PIRL, W-MSE and MoCo v3: losses against hand-computed cases and the
papers' formulas, the bank's update and draws, whitening, the methods' steps, and short training runs."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_method
from selfsup.methods import METHODS, NPID, PIRL, WMSE, MoCoV3
from selfsup.methods.losses import (
    cholesky_whitening,
    moco_v3_loss,
    nce_logits,
    nce_loss,
    nonparametric_softmax_loss,
    wmse_loss,
)
from selfsup.methods.memory_bank import MemoryBank
from selfsup.methods.npid import NPID_PLUS_PLUS
from selfsup.methods.patches import BatchRandom
from selfsup.train.optim import build_optimizer

NEW = ("npid", "pirl", "wmse", "moco_v3")


def _views(method, n: int = 8, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, spec.size, spec.size, generator=g) for spec in method.views(size, (0.2, 1.0))]


# ---------------------------------------------------------------------------------------------
# Registry and recipes


def test_registered_with_valid_recipes():
    for name in NEW:
        cls = METHODS[name]
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(cls.SMALL_IMAGE_RECIPE) <= fields, name
        for optim in (cls.OPTIMIZER, {**cls.OPTIMIZER, **cls.SMALL_IMAGE_OPTIMIZER}):
            assert set(optim) == {"optimizer", "lr", "weight_decay", "warmup_epochs"}, name
        cls.Config(**cls.SMALL_IMAGE_RECIPE)  # the small recipe passes the config's checks
        assert cls.__module__ and cls.Config.__doc__
    assert set(MoCoV3.VIT_RECIPE) <= {f.name for f in dataclasses.fields(MoCoV3.Config)}
    assert set(MoCoV3.VIT_OPTIMIZER) == {"optimizer", "lr", "weight_decay", "warmup_epochs"}
    npid_options = {f.name for f in dataclasses.fields(NPID.Config)}
    from selfsup.config import TRAIN_FIELDS
    assert set(NPID_PLUS_PLUS) <= npid_options | set(TRAIN_FIELDS)


def test_paper_defaults():
    n = NPID.Config()
    assert (n.temperature, n.memory_momentum, n.loss, n.num_negatives, n.embedding_dim) == (0.07, 0.5, "nce", 4096, 128)
    assert NPID.OPTIMIZER["lr"] == 0.03 and NPID_PLUS_PLUS["num_negatives"] == 32000
    p = PIRL.Config()
    assert (p.jigsaw_weight, p.temperature, p.memory_momentum, p.num_negatives) == (0.5, 0.07, 0.5, 32000)
    w = WMSE.Config()
    assert (w.num_positives, w.w_size, w.w_iter, w.embedding_dim) == (2, 256, 1, 128)
    m = MoCoV3.Config()
    assert (m.temperature, m.momentum, m.projector_hidden_dim, m.projection_dim) == (1.0, 0.99, 4096, 256)
    assert (MoCoV3.OPTIMIZER["optimizer"], MoCoV3.OPTIMIZER["lr"]) == ("lars", 0.6)
    assert MoCoV3.VIT_RECIPE["temperature"] == 0.2 and MoCoV3.VIT_OPTIMIZER["lr"] == 1.5e-4


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="--loss"):
        NPID.Config(loss="infonce")
    with pytest.raises(ValueError, match="--w-size"):
        WMSE.Config(embedding_dim=64, w_size=64)
    with pytest.raises(ValueError, match="--jigsaw-weight"):
        PIRL.Config(jigsaw_weight=1.5)
    with pytest.raises(ValueError, match="span"):
        PIRL.Config(jigsaw_size=20)  # 64-px tiles


# ---------------------------------------------------------------------------------------------
# The memory bank


def _bank(rows: list[list[float]], momentum: float = 0.5) -> MemoryBank:
    bank = MemoryBank(len(rows[0]), momentum)
    bank.rows = torch.tensor(rows, dtype=torch.float64)
    return bank


@pytest.mark.parametrize("momentum", [0.5, 0.25])
def test_bank_momentum_update_hand_computed(momentum):
    bank = _bank([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]], momentum)
    bank.set_batch(torch.tensor([0, 2]))
    bank.update(torch.tensor([[0.0, 2.0], [3.0, 0.0]], dtype=torch.float64))  # normalised: (0, 1), (1, 0)
    mu = momentum
    expected0 = torch.tensor([mu, 1 - mu], dtype=torch.float64) / math.hypot(mu, 1 - mu)
    expected2 = torch.tensor([1 - mu, -mu], dtype=torch.float64) / math.hypot(mu, 1 - mu)
    torch.testing.assert_close(bank.rows[0], expected0)
    torch.testing.assert_close(bank.rows[2], expected2)
    torch.testing.assert_close(bank.rows[1], torch.tensor([0.6, 0.8], dtype=torch.float64))  # not in the batch


def test_bank_grows_to_the_same_rows_whatever_the_order():
    torch.manual_seed(3)
    a = MemoryBank(8)
    b = MemoryBank(8)
    b.load_state_dict(a.state_dict())  # the same seeds
    a.set_batch(torch.tensor([9000, 1]))
    for indices in ([2, 0], [4100, 7], [9000]):
        b.set_batch(torch.tensor(indices))
    assert a.size == b.size == 9001
    torch.testing.assert_close(a.rows, b.rows)
    torch.testing.assert_close(a.rows.norm(dim=1), torch.ones(9001))
    torch.testing.assert_close(a.initial_rows(4090, 4100), a.rows[4090:4100])  # across a block boundary
    restored = MemoryBank(8)
    restored.load_state_dict(a.state_dict())  # grows to the stored size
    torch.testing.assert_close(restored.rows, a.rows)


def test_bank_needs_the_batch_indices():
    bank = MemoryBank(4)
    with pytest.raises(RuntimeError, match="on_batch_start"):
        bank.positives(3)


def test_bank_negatives_are_uniform_draws_that_resume_exactly():
    torch.manual_seed(0)
    bank = MemoryBank(4)
    bank.set_batch(torch.arange(50))
    first = bank.negatives(50, 20)
    assert first.shape == (50, 20) and first.min() >= 0 and first.max() < 50
    assert len(first.unique()) == 50  # 1000 draws from 50 rows cover all of them
    saved = {k: v.clone() for k, v in bank.state_dict().items()}
    second = bank.negatives(50, 20)
    assert not torch.equal(first, second)
    resumed = MemoryBank(4)
    resumed.load_state_dict(saved)
    resumed.set_batch(torch.arange(50))
    torch.testing.assert_close(resumed.negatives(50, 20), second)


def test_nce_normaliser_is_estimated_once_on_the_first_batch():
    bank = _bank([[1.0, 0.0]] * 10)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]], dtype=torch.float64)
    log_z = bank.nce_log_z(logits)
    assert float(log_z) == pytest.approx(math.log(10 * (1 + 3 + 2 + 2) / 4))  # N x mean exp(scores)
    assert float(bank.nce_log_z(logits + 5)) == pytest.approx(float(log_z))  # kept afterwards


# ---------------------------------------------------------------------------------------------
# Losses against hand-computed cases


def test_nonparametric_softmax_hand_computed():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, -3.0]])  # normalised: (1, 0), (0, -1)
    loss = nonparametric_softmax_loss(v, bank, torch.tensor([0, 2]), temperature=0.5)
    # row 0: logits (2, 0, -2), target 0; row 1: logits (0, -2, 0), target 2
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    row1 = -math.log(1 / (1 + math.exp(-2) + 1))
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_nce_loss_hand_computed():
    # one row, K = 2 noise samples, N = 4 items, Z = 2: P = exp(logit) / 2, h = P / (P + K / N)
    logits = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    p = [math.exp(x) / 2 for x in (1.0, 0.0, -1.0)]
    h = [x / (x + 2 / 4) for x in p]
    expected = -(math.log(h[0]) + math.log(1 - h[1]) + math.log(1 - h[2]))
    assert float(nce_loss(logits, math.log(2.0), 4)) == pytest.approx(expected, rel=1e-12)


def test_nce_logits_are_positive_first_cosines_over_t():
    v = torch.tensor([[3.0, 4.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    torch.testing.assert_close(nce_logits(v, pos, neg, 0.1), torch.tensor([[6.0, 8.0, -6.0]]))


# ---------------------------------------------------------------------------------------------
# NPID


@pytest.mark.parametrize("loss", ["softmax", "nce"])
def test_npid_step_reads_the_bank_then_updates_it(loss, monkeypatch):
    model = tiny_method("npid", loss=loss).double()
    indices = torch.tensor([5, 1, 7, 3, 0, 2, 6, 4])
    model.on_batch_start(indices)
    before = model.bank.rows.clone()
    noise = torch.randint(8, (8, 8), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(model.bank, "negatives", lambda rows, k: noise)
    x = _views(model)[0].double()
    out = model.training_step([x])
    v = model.head(model.encoder(x))
    if loss == "softmax":
        expected = nonparametric_softmax_loss(v, before, indices, 0.07)
    else:
        logits = nce_logits(v, before[indices], before[noise], 0.07)
        expected = nce_loss(logits, model.bank.log_z, 8)
        z = 8 * logits.exp().mean()  # Z from the first batch's scores
        assert float(model.bank.log_z) == pytest.approx(math.log(float(z.detach())))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(model.bank.rows, before)  # read, not written, by the step
    model.on_step_end(1, 10)
    mixed = F.normalize(0.5 * before[indices] + 0.5 * F.normalize(v.detach(), dim=1), dim=1)
    torch.testing.assert_close(model.bank.rows[indices], mixed)


def test_npid_has_one_view_and_reports_the_stored_entry_as_second_embedding():
    model = tiny_method("npid")
    (view,) = model.views(16, (0.2, 1.0))
    assert (view.jitter_p, view.brightness, view.hue, view.grayscale_p) == (1.0, 0.4, 0.4, 0.2)
    model.on_batch_start(torch.arange(8))
    out = model.training_step(_views(model))
    torch.testing.assert_close(out.embeddings[1], model.bank.rows[:8])


# ---------------------------------------------------------------------------------------------
# PIRL


def test_pirl_tiles_are_a_shuffled_grid_of_the_jigsaw_view():
    model = tiny_method("pirl", jigsaw_size=12, tile_size=3, tile_gap=1, tile_jitter=0, normalize_tiles=False)
    source = torch.arange(2 * 144, dtype=torch.float32).view(2, 1, 12, 12)
    tiles = model.jigsaw_tiles(source, BatchRandom(0, 0, 2))
    assert tiles.shape == (2, 9, 1, 3, 3)
    grid = [source[:, :, 4 * r:4 * r + 3, 4 * c:4 * c + 3] for r in range(3) for c in range(3)]
    for b in range(2):
        order = [next(k for k in range(9) if torch.equal(tiles[b, i], grid[k][b])) for i in range(9)]
        assert sorted(order) == list(range(9))  # every tile once: a permutation
    normed = tiny_method("pirl").jigsaw_tiles(torch.rand(4, 1, 12, 12), BatchRandom(0, 0, 4))
    torch.testing.assert_close(normed.mean(dim=(-3, -2, -1)), torch.zeros(4, 9), atol=1e-5, rtol=0)


@pytest.mark.parametrize("weight", [0.5, 0.2])
def test_pirl_loss_is_the_weighted_sum_of_its_two_terms(weight):
    model = tiny_method("pirl", loss="softmax", jigsaw_weight=weight).double()
    indices = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    model.on_batch_start(indices)
    bank = model.bank.rows.clone()
    image, source = (v.double() for v in _views(model, size=16))
    rand = BatchRandom(int(model.random.seed), int(model.random.step), 8)  # the step's draws
    out = model.training_step([image, source])
    f = model.image_head(model.encoder(image))
    tiles = model.jigsaw_tiles(source, rand)
    g = model.jigsaw_head(model.encoder(tiles.flatten(0, 1)).view(8, 9, -1))
    jigsaw_term = nonparametric_softmax_loss(g, bank, indices, 0.07)  # L(m_I, g(v_It))
    image_term = nonparametric_softmax_loss(f, bank, indices, 0.07)  # L(m_I, f(v_I))
    torch.testing.assert_close(out.metrics["jigsaw_term"], jigsaw_term.detach())
    torch.testing.assert_close(out.metrics["image_term"], image_term.detach())
    torch.testing.assert_close(out.loss, weight * jigsaw_term + (1 - weight) * image_term)
    model.on_step_end(1, 10)  # the bank follows the image embedding, not the jigsaw one
    mixed = F.normalize(0.5 * bank[indices] + 0.5 * F.normalize(f.detach(), dim=1), dim=1)
    torch.testing.assert_close(model.bank.rows[indices], mixed)


def test_pirl_preview_shows_the_shuffled_tiles():
    model = tiny_method("pirl")
    views = [torch.rand(3, 1, spec.size, spec.size) for spec in model.views(16, (0.2, 1.0))]
    ((caption, panel),) = model.preview_panels(views)
    assert "tiles" in caption and panel.shape == (3, 1, 10, 10) and 0 <= panel.min() and panel.max() <= 1


# ---------------------------------------------------------------------------------------------
# W-MSE


def test_whitening_gives_identity_covariance_on_a_random_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    w = cholesky_whitening(x + 3.0)
    torch.testing.assert_close(w.mean(dim=0), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)


def _official_wmse(views, perms, w_size):
    """The official ``w_mse.py`` loop, transcribed: whitened rows written back in place, pairs' 2 - 2 cos."""
    bs, loss = views[0].shape[0], 0.0
    h = torch.cat(views)
    for perm in perms:
        z = torch.empty_like(h)
        for idx in perm.view(-1, w_size):
            for i in range(len(views)):
                x = h[idx + i * bs]
                xn = x - x.mean(0)
                cov = xn.T @ xn / (x.shape[0] - 1)
                z[idx + i * bs] = xn @ torch.linalg.inv(torch.linalg.cholesky(cov)).T
        for i in range(len(views) - 1):
            for j in range(i + 1, len(views)):
                a, b = F.normalize(z[i * bs:(i + 1) * bs]), F.normalize(z[j * bs:(j + 1) * bs])
                loss = loss + 2 - 2 * (a * b).sum(-1).mean()
    return loss / (len(perms) * len(views) * (len(views) - 1) / 2)


@pytest.mark.parametrize("positives", [2, 4])
def test_wmse_loss_matches_the_official_loop(positives):
    g = torch.Generator().manual_seed(positives)
    views = [torch.randn(24, 3, generator=g, dtype=torch.float64) for _ in range(positives)]
    perms = [torch.randperm(24, generator=g) for _ in range(2)]
    torch.testing.assert_close(wmse_loss(views, perms, w_size=8), _official_wmse(views, perms, 8))


def test_wmse_step_has_one_view_per_positive_and_needs_whole_sub_batches():
    model = tiny_method("wmse", num_positives=4)
    assert len(model.views(16, (0.2, 1.0))) == 4
    out = model.training_step(_views(model))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    with pytest.raises(ValueError, match="w_size"):
        model.training_step([v[:6] for v in _views(model)])


# ---------------------------------------------------------------------------------------------
# MoCo v3


def _algorithm_1_ctr(q, k, t):
    """MoCo v3's Algorithm 1: logits = mm(q, k.t()); labels = range(N); 2 t CrossEntropyLoss(logits / t, labels)."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.mm(q, k.t())
    labels = torch.arange(q.shape[0])
    return 2 * t * torch.nn.CrossEntropyLoss()(logits / t, labels)


def test_moco_v3_loss_matches_algorithm_1_and_splits_over_processes():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    for t in (1.0, 0.2):
        torch.testing.assert_close(moco_v3_loss(q, k, t), _algorithm_1_ctr(q, k, t))
        halves = [moco_v3_loss(q[4 * r:4 * r + 4], k, t, offset=4 * r) for r in range(2)]
        torch.testing.assert_close(sum(halves) / 2, moco_v3_loss(q, k, t))


def test_moco_v3_step_is_the_symmetric_loss_and_the_momentum_branch_follows_by_ema():
    model = tiny_method("moco_v3").double()
    x1, x2 = (v.double() for v in _views(model))
    out = model.training_step([x1, x2])
    q1, q2 = (model.predictor(model.projector(model.encoder(x))) for x in (x1, x2))
    with torch.no_grad():
        k1, k2 = (model.momentum_projector(model.momentum_encoder(x)) for x in (x1, x2))
    torch.testing.assert_close(out.loss, _algorithm_1_ctr(q1, k2, 1.0) + _algorithm_1_ctr(q2, k1, 1.0))
    out.loss.backward()
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    online, target = model.encoder.conv1.weight, model.momentum_encoder.conv1.weight
    with torch.no_grad():
        online.add_(1.0)
    before = target.clone()
    m = model.on_step_end(5, 10)["momentum"]
    assert m == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi * 5 / 10)) * (1 - 0.99))  # cosine 0.99 -> 1
    torch.testing.assert_close(target, m * before + (1 - m) * online)


def test_moco_v3_vit_keeps_a_random_fixed_patch_projection():
    model = tiny_method("moco_v3", backbone="vit_tiny", width=0.125)
    proj = model.encoder.conv_proj
    fan = proj.in_channels * proj.kernel_size[0] ** 2 + proj.out_channels
    assert not proj.weight.requires_grad and proj.weight.abs().max() <= math.sqrt(6 / fan)
    trained = {id(p) for group in model.param_groups() for p in group["params"]}
    assert id(proj.weight) not in trained and id(proj.bias) not in trained
    assert sum(isinstance(m, torch.nn.Linear) for m in model.projector) == 3  # the ViT projector
    assert isinstance(model.predictor[-1], torch.nn.BatchNorm1d)  # ends in BN for ViTs
    opt = build_optimizer("adamw", model.param_groups(), lr=0.1, weight_decay=0.1)
    before = proj.weight.clone()
    out = model.training_step(_views(model))
    out.loss.backward()
    opt.step()
    torch.testing.assert_close(proj.weight, before)
    trainable = tiny_method("moco_v3", backbone="vit_tiny", width=0.125, freeze_patch_projection=False)
    assert trainable.encoder.conv_proj.weight.requires_grad
    resnet = tiny_method("moco_v3")
    assert sum(isinstance(m, torch.nn.Linear) for m in resnet.projector) == 2
    assert not isinstance(resnet.predictor[-1], torch.nn.BatchNorm1d)


# ---------------------------------------------------------------------------------------------
# Every method trains


@pytest.mark.parametrize("name", NEW)
def test_training_step_and_backward_on_tiny_backbone(name):
    model = tiny_method(name)
    opt = build_optimizer(METHODS[name].OPTIMIZER["optimizer"], model.param_groups(), lr=0.1, weight_decay=1e-4)
    before = model.encoder.conv1.weight.clone()
    for step in range(2):
        model.on_batch_start(torch.randperm(20, generator=torch.Generator().manual_seed(step))[:8])
        out = model.training_step(_views(model, seed=step))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        logged = model.on_step_end(step + 1, 2)
        assert all(isinstance(v, float) for v in logged.values())
    assert not torch.equal(before, model.encoder.conv1.weight)
    z1, z2 = out.embeddings
    assert z1.shape == z2.shape and z1.shape[0] == 8 and not z1.requires_grad
    assert out.features.shape == (8, model.feature_dim) and not out.features.requires_grad


# ---------------------------------------------------------------------------------------------
# End to end: a short run beats the random-init encoder of the same architecture and initialisation
# on the linear probe over held-out Fashion-MNIST test images (digits when it is absent)

# Fashion-MNIST, ResNet-18 width 0.25, the small-image recipe (every residual block zero-initialised),
# batch 64 (W-MSE 128: one whitened sub-batch of w_size 128), one thread, seed 0; linear probe on the
# 10,000 test images against that init's random encoder. Runs sized to ~20-30 s on one idle thread
# (the memory-bank methods see few images often: their bank rows are random until each image's first
# visit). Margins: at most half the smallest gain measured on seeds 0 / 1 / 2 (2026-12-02, AMD EPYC,
# busy; .scratch/membank-benchmarks.md): npid 10.8 / 10.0 / 8.6, pirl 6.0 / 6.0 / 4.9, wmse 6.0 / 3.2 / 4.5,
# moco_v3 6.3 / 2.4 / 4.0 linear points.
FASHION_MNIST_E2E = {"npid": (dict(subset=1000, epochs=8, batch_size=64), 0.04),
                     "pirl": (dict(subset=1000, epochs=6, batch_size=64), 0.024),
                     "wmse": (dict(subset=2000, epochs=3, batch_size=128), 0.015),
                     "moco_v3": (dict(subset=2000, epochs=2, batch_size=64), 0.012)}
DIGITS_E2E = {}

_LINEAR_FLOOR: dict[tuple, float] = {}


def _random_init_linear_top1(settings: dict) -> float:
    """The run's ``random_init_linear_top1`` (its random-init encoder under the same linear probe), once per
    data, seed and initialisation in a test process."""
    from selfsup.config import TrainConfig, resolve
    from selfsup.evaluation.frozen import evaluate_encoder
    from selfsup.runs import channel_stats, load_split, merge_options, random_init_encoder

    cfg = merge_options(TrainConfig(), settings)
    split = load_split(cfg)
    resolved = resolve(cfg, split.train.image_size)
    key = (cfg.data, cfg.subset, cfg.seed, cfg.width, resolved.zero_init_residual)
    if key not in _LINEAR_FLOOR:
        encoder = random_init_encoder(cfg, resolved, split.train.channels)
        _LINEAR_FLOOR[key] = evaluate_encoder(encoder, split, resolved.image_size, *channel_stats(split), ["linear"],
                                              "cpu", cfg.seed)["linear_top1"]
    return _LINEAR_FLOOR[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_short_training_beats_the_random_init_linear_probe(name, tmp_path, one_thread):
    from selfsup.api import train
    from selfsup.data.sources import fashion_mnist_available

    if fashion_mnist_available():
        options, margin = FASHION_MNIST_E2E[name]
        settings = dict(options, data="fashion-mnist", width=0.25)
    else:
        options, margin = DIGITS_E2E[name]
        settings = dict(options, data="digits", width=0.125)
    settings.update(method=name, backbone="resnet18", seed=0, eval_protocols="linear")
    summary = train(**settings, baselines=False, out=str(tmp_path / name), progress=False)
    assert summary["recipe"] == "small"
    floor = _random_init_linear_top1(settings)
    assert summary["linear_top1"] > floor + margin, (summary["linear_top1"], floor)
