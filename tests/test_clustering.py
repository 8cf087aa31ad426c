"""SwAV, DINO, DeepCluster-v2, multi-crop and ViT backbones: losses, schedules, clustering, training."""

import dataclasses
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import on_gloo_processes, tiny_method
from selfsup.data.augment import augment_views, sample_params
from selfsup.data.views import local_crop_size, multi_crop_views
from selfsup.methods import DINO, METHODS, DeepClusterV2, SwAV
from selfsup.methods.deepcluster import spherical_kmeans
from selfsup.methods.losses import IGNORE, deepcluster_loss, dino_loss, swav_loss
from selfsup.methods.multicrop import encode_crops
from selfsup.methods.sinkhorn import sinkhorn_knopp
from selfsup.models import BACKBONES, build_backbone
from selfsup.models.vit import ViTBackbone, cls_attention_maps

CLUSTERING = ("swav", "dino", "deepcluster_v2")


def crops(n: int = 8, num_local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 16, 16, generator=g) for _ in range(2)] + \
        [torch.randn(n, 1, 8, 8, generator=g) for _ in range(num_local)]


# ---------------------------------------------------------------------------------------------
# Registry, paper defaults, small recipes


def test_registered_with_paper_defaults_and_valid_recipes():
    assert set(CLUSTERING) <= set(METHODS)
    for name in CLUSTERING:
        cls = METHODS[name]
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(cls.SMALL_IMAGE_RECIPE) <= fields, name
        for optim in (cls.OPTIMIZER, {**cls.OPTIMIZER, **cls.SMALL_IMAGE_OPTIMIZER}):
            assert set(optim) == {"optimizer", "lr", "weight_decay", "warmup_epochs"}, name
        assert "num_local_crops" in fields and cls.Config.__doc__
    s = SwAV.Config()
    assert (s.epsilon, s.sinkhorn_iterations, s.temperature, s.num_prototypes, s.projection_dim) == \
        (0.05, 3, 0.1, 3000, 128)
    assert (s.num_local_crops, s.global_crop_scale_min, s.local_crop_scale_min, s.freeze_prototypes_epochs) == \
        (6, 0.14, 0.05, 1.0)
    assert SwAV.OPTIMIZER == {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}  # 4.8 @ 4096
    d = DINO.Config()
    assert (d.out_dim, d.bottleneck_dim, d.head_hidden_dim, d.head_layers) == (65536, 256, 2048, 3)
    assert (d.student_temperature, d.warmup_teacher_temperature, d.teacher_temperature,
            d.warmup_teacher_temperature_epochs) == (0.1, 0.04, 0.07, 30)
    assert (d.center_momentum, d.teacher_momentum, d.freeze_last_layer_epochs, d.num_local_crops) == (0.9, 0.996, 1, 8)
    assert (d.global_crop_scale_min, d.local_crop_scale_min) == (0.4, 0.05)
    assert DINO.OPTIMIZER == {"optimizer": "adamw", "lr": 0.0005, "weight_decay": 0.04, "warmup_epochs": 10}
    c = DeepClusterV2.Config()
    assert (c.num_prototypes, c.num_clusterings, c.temperature, c.kmeans_iterations) == (3000, 3, 0.1, 10)
    assert DeepClusterV2.OPTIMIZER["optimizer"] == "lars" and DeepClusterV2.OPTIMIZER["lr"] == pytest.approx(4.8 / 16)


# ---------------------------------------------------------------------------------------------
# Multi-crop


def test_multi_crop_gives_the_configured_views():
    views = multi_crop_views(224, 96, 6)  # SwAV's 2 x 224 + 6 x 96
    assert [v.size for v in views] == [224, 224] + [96] * 6
    assert all(v.crop_scale == (0.14, 1.0) for v in views[:2])
    assert all(v.crop_scale == (0.05, 0.14) for v in views[2:])
    assert (views[0].blur_p, views[1].blur_p, views[1].solarize_p, views[2].blur_p) == (1.0, 0.1, 0.2, 0.5)
    assert local_crop_size(224) == 96 and local_crop_size(28) == 12 and local_crop_size(8) == 4
    assert len(multi_crop_views(32, 14, 0)) == 2
    with pytest.raises(ValueError):
        multi_crop_views(32, 14, 2, local_scale=(0.5, 0.2))
    # through a method config: local crops end where global crops start
    model = tiny_method("dino", num_local_crops=3, global_crop_scale_min=0.3, local_crop_scale_min=0.1)
    v = model.views(28, (0.2, 1.0))
    assert [x.size for x in v] == [28, 28, 14, 14, 14]
    assert v[0].crop_scale == (0.3, 1.0) and v[4].crop_scale == (0.1, 0.3)


def test_multi_crop_views_have_their_sizes_and_per_image_parameters():
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    specs = multi_crop_views(28, 12, 4, (0.4, 1.0), (0.05, 0.4))
    out = augment_views(images, specs, torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in out] == [(16, 1, 28, 28)] * 2 + [(16, 1, 12, 12)] * 4
    params = sample_params(16, specs[2], torch.Generator().manual_seed(1), 28)
    boxes = params.crop.float()
    assert len({tuple(b.tolist()) for b in params.crop}) > 8  # crop boxes differ from image to image
    area = boxes[:, 2] * boxes[:, 3] / 28 ** 2
    assert area.min() >= 0.03 and area.max() <= 0.45  # (0.05, 0.4) up to integer rounding
    assert not torch.equal(out[2], out[3])  # every local view is drawn anew


def test_encode_crops_groups_views_of_one_size():
    calls = []

    def encoder(x):
        calls.append(tuple(x.shape))
        return x.flatten(1)[:, :3]

    views = crops(4, num_local=3)
    out = encode_crops(encoder, views)
    assert calls == [(8, 1, 16, 16), (12, 1, 8, 8)] and out.shape == (20, 3)
    torch.testing.assert_close(out[:4], views[0].flatten(1)[:, :3])
    torch.testing.assert_close(out[16:], views[4].flatten(1)[:, :3])


# ---------------------------------------------------------------------------------------------
# Sinkhorn-Knopp and SwAV


def paper_sinkhorn(scores, eps=0.05, niters=3):
    """SwAV's Algorithm 1 (Caron et al. 2020), transcribed."""
    Q = torch.exp(scores / eps).T
    Q /= torch.sum(Q)
    K, B = Q.shape
    r, c = torch.ones(K, dtype=Q.dtype) / K, torch.ones(B, dtype=Q.dtype) / B
    for _ in range(niters):
        u = torch.sum(Q, dim=1)
        Q *= (r / u).unsqueeze(1)
        Q *= (c / torch.sum(Q, dim=0)).unsqueeze(0)
    return (Q / torch.sum(Q, dim=0, keepdim=True)).T


def test_sinkhorn_marginals_on_a_random_case():
    g = torch.Generator().manual_seed(0)
    b, k = 48, 12
    scores = F.normalize(torch.randn(b, 16, generator=g), dim=1) @ F.normalize(torch.randn(k, 16, generator=g), dim=1).T
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert q.shape == (b, k) and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))  # one unit of mass per sample, exactly
    def imbalance(codes):  # L1 distance of the prototypes' mass from B / K each
        return (codes.sum(dim=0) - b / k).abs().sum()

    plain = F.softmax(scores / 0.05, dim=1)  # per-sample softmax, no equipartition
    assert imbalance(q) < imbalance(plain) and imbalance(sinkhorn_knopp(scores, 0.05, 10)) < imbalance(q)
    converged = sinkhorn_knopp(scores, epsilon=0.05, iterations=500)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((k,), b / k), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b))
    # the paper's pseudo-code gives the same codes (scores in [-1, 1]: no overflow without the max shift)
    torch.testing.assert_close(q, paper_sinkhorn(scores.double()).float(), rtol=1e-5, atol=1e-6)


def test_sinkhorn_weights_leave_rows_out():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(20, 5, generator=g) * 2 - 1
    weights = torch.ones(20)
    weights[:6] = 0
    q = sinkhorn_knopp(scores, weights=weights)
    assert (q[:6] == 0).all()
    torch.testing.assert_close(q[6:], sinkhorn_knopp(scores[6:]))


def test_swav_loss_hand_computed_case():
    s0, s1 = torch.tensor([[0.5, -0.5]]), torch.tensor([[0.0, 1.0]])
    q0, q1 = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]])
    t = 0.5
    log_p1 = [0.0 / t - math.log(math.exp(0.0) + math.exp(2.0)), 2.0 - math.log(math.exp(0.0) + math.exp(2.0))]
    log_p0 = [1.0 - math.log(math.exp(1.0) + math.exp(-1.0)), -1.0 - math.log(math.exp(1.0) + math.exp(-1.0))]
    expected = 0.5 * (-(0.75 * log_p1[0] + 0.25 * log_p1[1]) - (0.5 * log_p0[0] + 0.5 * log_p0[1]))
    assert swav_loss([s0, s1], [q0, q1], t).item() == pytest.approx(expected, rel=1e-6)


def test_swav_step_matches_the_paper_pseudo_code():
    model = tiny_method("swav", num_local_crops=0)
    views = crops(8, num_local=0)
    out = model.training_step(views)
    # Caron et al. 2020, Algorithm 1: z = normalize(model(cat(x_t, x_s))); scores = z C;
    # q = sinkhorn(scores) (no grad); loss = -0.5 * mean(q_t log p_s + q_s log p_t) (summed over K).
    z = F.normalize(model.projector(model.encoder(torch.cat(views))), dim=1)
    scores = z @ model.prototypes.weight.T
    scores_t, scores_s = scores[:8], scores[8:]
    q_t, q_s = paper_sinkhorn(scores_t.detach()), paper_sinkhorn(scores_s.detach())
    p_t, p_s = F.softmax(scores_t / 0.1, dim=1), F.softmax(scores_s / 0.1, dim=1)
    expected = -0.5 * (q_t * torch.log(p_s) + q_s * torch.log(p_t)).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)


def test_swav_multi_crop_codes_come_from_global_crops_only():
    model = tiny_method("swav")
    views = crops(8, num_local=2)
    out = model.training_step(views)
    z = F.normalize(model.projector(encode_crops(model.encoder, views)), dim=1)
    scores = list((z @ model.prototypes.weight.T).split(8))
    codes = [sinkhorn_knopp(s.detach()) for s in scores[:2]]
    expected = sum(sum(-(codes[i] * F.log_softmax(scores[v] / 0.1, 1)).sum(1).mean() for v in range(4) if v != i) / 3
                   for i in range(2)) / 2
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)


def test_swav_prototypes_frozen_in_the_first_epoch_and_normalised_after_each_step():
    model = tiny_method("swav")
    model.on_epoch_start(0, steps_per_epoch=5)
    out = model.training_step(crops())
    out.loss.backward()
    assert model.prototypes.weight.grad is not None
    model.before_optimizer_step(step=4, total_steps=20)
    assert model.prototypes.weight.grad is None and model.encoder.conv1.weight.grad is not None
    model.zero_grad()
    model.on_epoch_start(1, steps_per_epoch=5)
    model.training_step(crops()).loss.backward()
    model.before_optimizer_step(step=5, total_steps=20)
    assert model.prototypes.weight.grad is not None
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.on_step_end(6, 20)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(10))


def test_swav_queue_starts_at_its_epoch_and_joins_sinkhorn_when_full():
    model = tiny_method("swav", queue_size=16, queue_start_epoch=1, num_local_crops=0)
    model.on_epoch_start(0, 10)
    model.training_step(crops(num_local=0))
    assert int(model.queues[0].filled) == 0  # not started yet
    model.on_epoch_start(1, 10)
    scores = torch.rand(8, 10) * 2 - 1
    torch.testing.assert_close(model.codes(scores, 0), sinkhorn_knopp(scores))  # empty queue: left out
    for seed in range(2):
        out = model.training_step(crops(num_local=0, seed=seed))
    assert int(model.queues[0].filled) == 16 and int(model.queues[1].filled) == 16
    torch.testing.assert_close(model.queues[0].ordered()[8:], out.embeddings[0])  # newest: this step's crop 1
    queued = model.queues[0].items @ model.prototypes.weight.T
    expected = sinkhorn_knopp(torch.cat([queued, scores]))[-8:]
    torch.testing.assert_close(model.codes(scores, 0), expected)
    assert not torch.allclose(expected, sinkhorn_knopp(scores), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# DINO


def test_dino_loss_matches_algorithm_1():
    g = torch.Generator().manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(6, 10, generator=g) for _ in range(4))
    center = torch.randn(1, 10, generator=g)
    tps, tpt = 0.1, 0.04

    def H(t, s):  # Caron et al. 2021, Algorithm 1
        t = t.detach()
        s = F.softmax(s / tps, dim=1)
        t = F.softmax((t - center) / tpt, dim=1)
        return -(t * torch.log(s)).sum(dim=1).mean()

    expected = H(t1, s2) / 2 + H(t2, s1) / 2
    torch.testing.assert_close(dino_loss([s1, s2], [t1, t2], center, tps, tpt), expected, rtol=1e-5, atol=1e-6)
    # with local crops: the mean over the 2 x 3 pairs (teacher global i, student crop v != i)
    s3 = torch.randn(6, 10, generator=g)
    expected = (H(t1, s2) + H(t1, s3) + H(t2, s1) + H(t2, s3)) / 4
    torch.testing.assert_close(dino_loss([s1, s2, s3], [t1, t2], center, tps, tpt), expected, rtol=1e-5, atol=1e-6)


def test_dino_centre_follows_its_ema_and_the_teacher_gets_no_gradient():
    model = tiny_method("dino")
    with torch.no_grad():
        model.center.normal_()
    before = model.center.clone()
    views = crops()
    with torch.no_grad():
        _, t = model.teacher_head(model.teacher_encoder(torch.cat(views[:2])))
    out = model.training_step(views)
    torch.testing.assert_close(model.center, 0.9 * before + 0.1 * t.mean(dim=0, keepdim=True), rtol=1e-5, atol=1e-6)
    out.loss.backward()
    teacher = [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert model.encoder.conv1.weight.grad is not None and model.head.mlp[0].weight.grad is not None
    assert not model.head.last_layer.g.requires_grad  # norm_last_layer: magnitudes fixed at 1
    # the teacher follows the student by EMA with the cosine momentum
    student = [p.detach().clone() for p in model.encoder.parameters()]
    old = [p.clone() for p in model.teacher_encoder.parameters()]
    m = model.teacher_momentum(3, 10)
    assert m == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * 3 / 10) + 1) / 2)
    model.on_step_end(3, 10)
    for p, o, s in zip(model.teacher_encoder.parameters(), old, student):
        torch.testing.assert_close(p, m * o + (1 - m) * s)


def test_dino_teacher_temperature_warm_up_and_last_layer_freeze():
    model = tiny_method("dino")
    assert [round(model.teacher_temperature(e), 6) for e in (0, 29, 50)] == [0.04, 0.07, 0.07]
    assert model.teacher_temperature(10) == pytest.approx(0.04 + 0.03 * 10 / 29)
    model.on_epoch_start(0, 4)
    model.training_step(crops()).loss.backward()
    model.before_optimizer_step(0, 8)
    assert model.head.last_layer.v.grad is None and model.head.mlp[0].weight.grad is not None
    model.zero_grad()
    model.on_epoch_start(1, 4)
    model.training_step(crops()).loss.backward()
    model.before_optimizer_step(4, 8)
    assert model.head.last_layer.v.grad is not None
    assert max(p.grad.norm() for p in model.parameters() if p.grad is not None) <= 3.0 + 1e-4  # clip_grad


# ---------------------------------------------------------------------------------------------
# DeepCluster-v2


def clustered_set(n_per: int = 40, k: int = 5, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=1)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = F.normalize(centres[labels] + 0.03 * torch.randn(k * n_per, d, generator=g), dim=1)
    perm = torch.randperm(k * n_per, generator=g)
    return x[perm], labels[perm]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.unsqueeze(0) == a.unsqueeze(1), b.unsqueeze(0) == b.unsqueeze(1))


def test_kmeans_recovers_constructed_clusters():
    x, labels = clustered_set()
    for seed in range(3):
        centroids, assigned = spherical_kmeans(x, 5, 10, torch.Generator().manual_seed(seed), init="kmeans++")
        assert same_partition(assigned, labels), seed
    # the centroids are the normalised means of their clusters (a fixed point of the iterations)
    for j in range(5):
        torch.testing.assert_close(centroids[j], F.normalize(x[assigned == j].mean(0), dim=0), rtol=1e-5, atol=1e-6)
    # the official random-row initialisation: the iterations improve the mean cosine to the centroids
    objective = []
    for iterations in (0, 10):
        centroids, assigned = spherical_kmeans(x, 5, iterations, torch.Generator().manual_seed(1))
        objective.append((x * centroids[assigned]).sum(1).mean())
    assert objective[1] > objective[0]


def test_deepcluster_loss_hand_computed_case():
    scores = [torch.tensor([[0.2, 0.6], [0.5, -0.5], [0.0, 0.1], [0.3, 0.3]])]  # 2 crops x 2 rows
    targets = torch.tensor([[1, IGNORE]])
    t = 0.1
    ce = lambda row, y: -(row[y] / t - math.log(sum(math.exp(v / t) for v in row)))  # noqa: E731
    expected = (ce([0.2, 0.6], 1) + ce([0.0, 0.1], 1)) / 2  # the ignored row counts in neither crop
    assert deepcluster_loss(scores, targets, t).item() == pytest.approx(expected, rel=1e-5)


def test_deepcluster_fills_the_bank_in_epoch_0_then_clusters_and_resumes():
    model = tiny_method("deepcluster_v2")
    params = [p.clone() for p in model.parameters()]
    model.on_epoch_start(0, 2)
    for step, rows in enumerate((torch.arange(8), torch.arange(8, 16))):
        model.on_batch_start(rows)
        out = model.training_step(crops(seed=step))
        assert out.loss.item() == 0.0
        out.loss.backward()
        model.before_optimizer_step(step, 6)
        assert all(p.grad is None for p in model.parameters())  # nothing for the optimiser to do
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert model.bank.shape == (2, 16, 16) and bool(model.bank_filled.all())
    torch.testing.assert_close(model.bank.norm(dim=2), torch.ones(2, 16))
    model.on_batch_start(torch.tensor([20, 21, 22, 23, 24, 25, 26, 27]))  # the bank grows to new rows
    assert model.bank.shape[1] == 28 and not bool(model.bank_filled[16:].any())
    model.on_epoch_start(1, 2)
    assert int(model.clustered_epoch) == 1
    assert (model.assignments[:, :16] >= 0).all() and (model.assignments[:, 16:] == IGNORE).all()
    for h in range(2):  # prototypes are the k-means centroids of that head's global crop
        centroids, assigned = spherical_kmeans(model.bank[h % 2, :16], 4, 10, torch.Generator().manual_seed(1000 + h))
        torch.testing.assert_close(model.prototypes[h], centroids)
        assert torch.equal(model.assignments[h, :16], assigned)
    model.on_batch_start(torch.arange(8))
    views = crops(seed=5)
    out = model.training_step(views)
    z = F.normalize(model.projector(encode_crops(model.encoder, views)), dim=1).detach()
    expected = sum(F.cross_entropy(z @ model.prototypes[h].T / 0.1, model.assignments[h, :8].repeat(4))
                   for h in range(2)) / 2
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    # a checkpoint loads into a fresh model (bank at the stored size) and is not re-clustered mid-epoch
    fresh = tiny_method("deepcluster_v2")
    fresh.load_state_dict(model.state_dict())
    assignments = fresh.assignments.clone()
    fresh.on_epoch_start(1, 2)
    assert torch.equal(fresh.assignments, assignments) and torch.equal(fresh.bank, model.bank)


def test_deepcluster_needs_batch_indices():
    with pytest.raises(RuntimeError, match="on_batch_start"):
        tiny_method("deepcluster_v2").training_step(crops())


@pytest.mark.parametrize("name, loss", [("swav", swav_loss), ("dino", dino_loss), ("deepcluster_v2", deepcluster_loss)])
def test_each_method_computes_its_loss_with_the_tested_function(name, loss, monkeypatch):
    module = sys.modules[METHODS[name].__module__]
    returned = []

    def recording(*args, **kwargs):
        returned.append(loss(*args, **kwargs))
        return returned[-1]

    assert getattr(module, loss.__name__) is loss
    monkeypatch.setattr(module, loss.__name__, recording)
    model = tiny_method(name)
    model.on_batch_start(torch.arange(8))
    if name == "deepcluster_v2":  # fill the bank, then cluster
        model.on_epoch_start(0, 4)
        model.training_step(crops(seed=1))
    model.on_epoch_start(1, 4)
    out = model.training_step(crops())
    assert len(returned) == 1 and out.loss is returned[0]


# ---------------------------------------------------------------------------------------------
# ViT backbones and attention maps


def test_vit_backbones_registered_any_channels_any_size():
    assert {"vit_tiny", "vit_small"} <= set(BACKBONES)
    vit = build_backbone("vit_tiny", width=0.25, in_channels=1, small_stem=True)
    assert isinstance(vit, ViTBackbone) and isinstance(vit, __import__("torchvision").models.VisionTransformer)
    assert (vit.patch_size, vit.feature_dim, len(vit.encoder.layers)) == (4, 48, 12)
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 48) and vit(torch.randn(2, 1, 12, 12)).shape == (2, 48)
    rgb = build_backbone("vit_small", width=0.25, in_channels=3)
    assert (rgb.patch_size, rgb.feature_dim, rgb.num_heads) == (16, 96, 6)
    assert rgb(torch.randn(1, 3, 64, 64)).shape == (1, 96)
    # at the stored grid the position embeddings are used as they are
    assert vit.position_embedding(8, 8) is vit.encoder.pos_embedding
    assert vit.position_embedding(3, 3).shape == (1, 10, 48)


def test_cls_attention_maps_match_the_last_block():
    vit = build_backbone("vit_tiny", width=0.25, in_channels=1, small_stem=True).eval()
    images = torch.randn(2, 1, 16, 16)
    maps = cls_attention_maps(vit, images)
    assert maps.shape == (2, 3, 4, 4) and (maps >= 0).all() and (maps.sum(dim=(2, 3)) <= 1 + 1e-5).all()
    # recompute the [CLS] row of the last block's attention from its weights
    with torch.no_grad():
        x = vit.tokens(images)
        for block in list(vit.encoder.layers)[:-1]:
            x = block(x)
        last = vit.encoder.layers[-1]
        y = last.ln_1(x)
        q, k, _ = F.linear(y, last.self_attention.in_proj_weight, last.self_attention.in_proj_bias).chunk(3, dim=-1)
        heads, dh = 3, 16
        q = q.view(2, -1, heads, dh).transpose(1, 2)
        k = k.view(2, -1, heads, dh).transpose(1, 2)
        attn = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    torch.testing.assert_close(maps, attn[:, :, 0, 1:].reshape(2, 3, 4, 4), rtol=1e-4, atol=1e-6)


def test_attention_grid_png(tmp_path):
    from selfsup.reporting.attention import save_attention_grid

    vit = build_backbone("vit_tiny", width=0.25, in_channels=1, small_stem=True)
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    path = save_attention_grid(vit, images, tmp_path / "attn.png", mean=[0.5], std=[0.25])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert vit.training  # the mode is restored


@pytest.mark.parametrize("name", CLUSTERING)
def test_every_clustering_method_trains_a_vit(name):
    model = tiny_method(name, backbone="vit_tiny", width=0.25)
    vit = model.encoder
    model.on_batch_start(torch.arange(8))
    if name == "deepcluster_v2":  # fill the bank, then cluster
        model.on_epoch_start(0, 4)
        model.training_step(crops(seed=1))
    model.on_epoch_start(1, 4)
    out = model.training_step(crops())
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0 and vit.conv_proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Each method learns: a short CPU run on digits beats the random-init encoder's kNN on held-out images

TRAIN_EPOCHS = {"swav": 10, "dino": 10, "deepcluster_v2": 10}  # DeepCluster-v2's epoch 0 fills its bank
SEEDS = (0, 1, 2)
# Single runs on 1.4k digits swing by several kNN points with the seed and with the machine's
# floating-point order, so the claim is on the mean over three seeds. Measured 2026-12-02 (AMD EPYC,
# one thread), kNN gain over each seed's random-init encoder, seeds 0 / 1 / 2: swav +10.6 / +12.0 /
# +2.2 (mean +8.3), dino +4.2 / +14.8 / +6.4 (mean +8.5), deepcluster_v2 +14.8 / +13.4 / +1.7
# (mean +10.0); the margin is about half the smallest mean.
KNN_MARGIN = 0.04


@pytest.mark.slow
@pytest.mark.parametrize("name", CLUSTERING)
def test_short_cpu_run_beats_the_random_init_encoder(name, tmp_path, one_thread):
    from selfsup import api

    gains = []
    for seed in SEEDS:
        summary = api.train(method=name, data="digits", backbone="resnet18", width=0.125, epochs=TRAIN_EPOCHS[name],
                            batch_size=128, eval_protocols="knn", out=str(tmp_path / f"{name}-{seed}"),
                            progress=False, seed=seed)
        gains.append(summary["knn_top1"] - summary["random_init_knn_top1"])
    assert sum(gains) / len(gains) >= KNN_MARGIN, gains


# ---------------------------------------------------------------------------------------------
# Two processes (gloo): Sinkhorn sums and DINO's centre are reduced over the global batch


def _dist_worker(rank: int, world: int) -> dict[str, torch.Tensor]:
    import torch.distributed as dist

    scores = torch.rand(12, 5, generator=torch.Generator().manual_seed(3)) * 2 - 1
    codes = sinkhorn_knopp(scores[rank * 6:(rank + 1) * 6])
    model = tiny_method("dino")
    logits = torch.randn(12, 40, generator=torch.Generator().manual_seed(4))
    model.update_center(logits[rank * 6:(rank + 1) * 6])
    parts = [torch.empty_like(codes) for _ in range(world)]
    dist.all_gather(parts, codes)
    return {"codes": torch.cat(parts), "center": model.center.clone()}


def test_two_processes_reduce_sinkhorn_and_centre_over_the_global_batch(tmp_path):
    result = on_gloo_processes(_dist_worker, tmp_path)
    scores = torch.rand(12, 5, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.testing.assert_close(result["codes"], sinkhorn_knopp(scores))
    model = tiny_method("dino")
    model.update_center(torch.randn(12, 40, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(result["center"], model.center)
