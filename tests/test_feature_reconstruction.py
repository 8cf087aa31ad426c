"""CPC v2, BoWNet, OBoW: losses against the papers' formulas, CPC's masked context, the BoW vocabularies,
the teachers, and short training runs that beat the random-init encoder's linear probe."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_method
from selfsup.config import ConfigError
from selfsup.methods import CPC, METHODS, BoWNet, OBoW
from selfsup.methods.bownet import kmeans
from selfsup.methods.cpc import check_no_overlap, extract_patches, patch_geometry
from selfsup.methods.losses import (
    bag_of_words,
    bow_cross_entropy,
    bow_kl_loss,
    cpc_infonce_loss,
    hard_assignment,
    soft_assignment,
    squared_distances,
)
from selfsup.methods.obow import VocabularyBatchNorm, queue_candidates
from selfsup.models import build_backbone
from selfsup.models.norm import make_norm

NAMES = ("cpc_v2", "bownet", "obow")


def _views(method, size: int = 16, n: int = 8, seed: int = 0, channels: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, s.size, s.size, generator=g) for s in method.views(size, (0.2, 1.0))]


# ---------------------------------------------------------------------------------------------
# Registry, recipes, paper defaults


def test_registered_with_valid_recipes_and_paper_defaults():
    for name in NAMES:
        cls = METHODS[name]
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(cls.SMALL_IMAGE_RECIPE) <= fields, name
        for optim in (cls.OPTIMIZER, {**cls.OPTIMIZER, **cls.SMALL_IMAGE_OPTIMIZER}):
            assert set(optim) == {"optimizer", "lr", "weight_decay", "warmup_epochs"}, name
        cls.Config(**cls.SMALL_IMAGE_RECIPE)  # the small recipe is a valid config
    c = CPC.Config()
    assert (c.grid, c.patch_fraction, c.target_dim, c.steps_to_ignore, c.steps_to_predict, c.prediction_scale,
            c.context_layers, c.context_dim, c.encoder_norm) == (7, 0.25, 64, 2, 3, 0.1, 5, 256, "layernorm")
    o = OBoW.Config()
    assert (o.num_words, o.inv_delta, o.kappa, o.teacher_momentum, o.bow_levels, o.num_crops, o.num_patches,
            o.bow_pool, OBoW.OPTIMIZER["lr"]) == (8192, 15.0, 8.0, 0.99, 2, 2, 5, "max", 0.03)
    b = BoWNet.Config()
    assert (b.num_words, b.teacher_stage, b.teacher_run) == (2048, 3, "random")


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError, match="steps"):
        CPC.Config(steps_to_ignore=3, steps_to_predict=3)
    with pytest.raises(ValueError, match="directions"):
        CPC.Config(directions=3)
    with pytest.raises(ValueError, match="bow-pool"):
        BoWNet.Config(bow_pool="sum")
    with pytest.raises(ValueError, match="teacher-momentum"):
        OBoW.Config(teacher_momentum=1.5)


# ---------------------------------------------------------------------------------------------
# CPC v2


def test_layernorm_is_a_per_sample_norm_over_channels_and_positions():
    norm = make_norm("layernorm", 4, dims=2)
    x = torch.randn(3, 4, 5, 5)
    expected = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(1, 2, 3), unbiased=False,
                                                                             keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm(x[:1]), norm(x)[:1])  # no batch statistics
    assert isinstance(make_norm("layernorm", 4, dims=1), nn.LayerNorm)


def test_cpc_swaps_the_encoders_batchnorms_for_layer_norm_keeping_their_init():
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1, small_stem=True, zero_init_residual=True)
    method = CPC(encoder, CPC.Config())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.modules())
    assert method.backbone_norm == "layernorm"
    assert float(method.encoder.layer1[0].bn2.weight.detach().abs().sum()) == 0  # zero-initialised residual kept
    kept = CPC(build_backbone("resnet18", width=0.125, in_channels=1, small_stem=True),
               CPC.Config(encoder_norm="batchnorm"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.modules()) and not hasattr(kept, "backbone_norm")


def test_cpc_loss_hand_computed_case():
    # one image, a 2 x 2 grid, 1-d embeddings; row 0 predicts row 1 (offset 1)
    predictions = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    targets = torch.tensor([[0.0, 0.0], [1.0, -1.0]]).view(1, 1, 2, 2)
    # query (0, 0): logits p . t = [0, 0, 1, -1], positive t(1, 0) -> -log(e / (2 + e + 1/e))
    # query (0, 1): logits [0, 0, 2, -2], positive t(1, 1) -> -log(e^-2 / (2 + e^2 + e^-2))
    expected = 0.5 * (-math.log(math.e / (2 + math.e + 1 / math.e))
                      - math.log(math.exp(-2) / (2 + math.exp(2) + math.exp(-2))))
    assert cpc_infonce_loss(predictions, targets, offset=1).item() == pytest.approx(expected, rel=1e-6)


def test_cpc_loss_matches_the_papers_pseudo_code():
    """The CPC v2 pseudo-code's loop, transcribed: latents [B, H, W, D] (``col_dim`` = H rows of patches,
    ``rows`` = W), predictions of step i cut to ``[:, :-(i + 1)]``, labels b * col_dim * rows + (i + 1) * rows
    + col, one cross-entropy over every target of the batch."""
    torch.manual_seed(1)
    batch, grid, dim = 3, 5, 6
    context_preds = torch.randn(batch, grid, grid, dim)  # NHWC
    targets = torch.randn(batch, grid, grid, dim)
    for i in range(0, 3):
        col_dim, rows = grid, grid
        col_dim_i = col_dim - i - 1
        total_elements = batch * col_dim_i * rows
        preds_i = context_preds[:, :-(i + 1), :, :].reshape(-1, dim)
        logits = preds_i @ targets.reshape(-1, dim).T
        b = torch.arange(total_elements) // (col_dim_i * rows)
        col = torch.arange(total_elements) % (col_dim_i * rows)
        labels = b * col_dim * rows + (i + 1) * rows + col
        expected = F.cross_entropy(logits, labels)
        ours = cpc_infonce_loss(context_preds.permute(0, 3, 1, 2), targets.permute(0, 3, 1, 2), offset=i + 1)
        torch.testing.assert_close(ours, expected)


def test_cpc_loss_over_processes_is_the_global_loss():
    torch.manual_seed(2)
    p, t = torch.randn(6, 4, 4, 4), torch.randn(6, 4, 4, 4)
    whole = cpc_infonce_loss(p, t, 2)
    halves = [cpc_infonce_loss(p[r * 3:(r + 1) * 3], t, 2, image_offset=r * 3) for r in range(2)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_patches_are_the_grid_of_overlapping_crops_and_overlap_is_refused():
    patch, positions = patch_geometry(28, 6, 8 / 28)
    assert patch == 8 and positions.tolist() == [0, 4, 8, 12, 16, 20]  # the small recipe's grid at 28 px
    x = torch.randn(2, 3, 28, 28)
    tiles = extract_patches(x, patch, positions)
    assert tiles.shape == (2, 6, 6, 3, 8, 8)
    torch.testing.assert_close(tiles[1, 2, 4], x[1, :, 8:16, 16:24])
    _, paper = patch_geometry(256, 7, 0.25)
    assert paper.tolist() == [0, 32, 64, 96, 128, 160, 192]  # 64-px patches, stride 32
    check_no_overlap(8, positions, 2, 28)  # rows 2 apart: 8 px apart, no shared pixel
    with pytest.raises(ValueError, match="rows it predicts"):
        check_no_overlap(8, positions, 1, 28)  # rows 1 apart share 4 px


RF_SIZE = 20  # 4 x 4 grid of 8-px patches at offsets 0, 4, 8, 12: neighbouring rows overlap by half
RF_CONFIG = dict(grid=4, patch_fraction=0.4, steps_to_ignore=1, steps_to_predict=2, target_dim=4, context_dim=8,
                 context_layers=3, directions=4)


def _prediction_gradient(method: CPC, direction: int, row: int) -> torch.Tensor:
    """d(sum of the predictions made from context row ``row`` of ``direction``) / d(input pixels), in the
    direction's frame (rotated as its grid is)."""
    x = torch.randn(4, 1, RF_SIZE, RF_SIZE, generator=torch.Generator().manual_seed(3), requires_grad=True)
    z = method.latents(method.patches(x, torch.Generator().manual_seed(0)))
    _, predictions = method.direction_outputs(z, direction)
    predictions[0][:, :, row].sum().backward()
    k = (0, 2, 1, 3)[direction]
    return torch.rot90(x.grad, k, dims=(2, 3)).abs().sum(dim=(0, 1, 3))  # per pixel row of the rotated frame


def test_cpc_context_cannot_see_the_rows_it_predicts():
    """Gradient receptive field: a prediction from context row r depends on no pixel at or below the bottom
    of patch row r (the predicted row r + 2 starts there), in each of the 4 directions; with layer norm."""
    method = tiny_method("cpc_v2", **RF_CONFIG)
    method.train()
    _, positions = patch_geometry(RF_SIZE, 4, 0.4)
    for direction in range(4):
        for row in (0, 1):
            grad = _prediction_gradient(method, direction, row)
            bottom = int(positions[row]) + 8  # first pixel row the context must not see
            assert grad[bottom:].abs().max() == 0, (direction, row)
            assert grad[:bottom].abs().min() > 0, (direction, row)  # and it sees every row above


def test_with_batch_norm_the_context_sees_the_rows_it_predicts():
    """CPC v2's reason for layer norm: batch statistics mix every patch into every embedding."""
    method = tiny_method("cpc_v2", **RF_CONFIG, encoder_norm="batchnorm")
    method.train()
    grad = _prediction_gradient(method, 0, 0)
    assert grad[8:].abs().max() > 0


def test_cpc_step_trains_and_reports_monitors():
    method = tiny_method("cpc_v2")
    views = _views(method)
    assert len(views) == 1
    out = method.training_step(views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.encoder.conv1.weight.grad is not None
    p, t = out.embeddings
    assert p.shape == t.shape and p.shape[1] == 8 and not p.requires_grad
    assert out.features.shape == (8, method.feature_dim)
    assert int(method.patch_random.draws) == 1  # one draw of patch augmentation per step
    panels = method.preview_panels([v.sigmoid() for v in views])
    assert len(panels) == 1 and panels[0][1].shape == (8, 1, 4 * 9 - 1, 4 * 9 - 1)


def test_cpc_patch_augmentation_is_per_patch_and_colour_drop_keeps_one_channel():
    method = tiny_method("cpc_v2", in_channels=3, patch_jitter_p=0.0, patch_flip_p=0.0)
    x = torch.randn(2, 3, 16, 16)
    tiles = method.patches(x, torch.Generator().manual_seed(0))  # colour drop (p 1): two channels at 0
    zero_channels = (tiles.abs().amax(dim=(4, 5)) == 0).sum(dim=3)
    assert (zero_channels == 2).all()
    kept = tiles.abs().amax(dim=(4, 5)).argmax(dim=3).flatten()
    assert len(set(kept.tolist())) == 3  # every channel survives somewhere


# ---------------------------------------------------------------------------------------------
# Bags of words: the formulas of the papers, transcribed position by position


def _transcribed_distances(features: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    b, _, h, w = features.shape
    out = torch.empty(b, vocabulary.shape[0], h, w, dtype=torch.float64)
    for i in range(b):
        for u in range(h):
            for v in range(w):
                for k in range(vocabulary.shape[0]):
                    out[i, k, u, v] = ((features[i, :, u, v] - vocabulary[k]) ** 2).sum()
    return out


def test_obow_soft_assignment_and_bag_match_the_papers_formulas():
    g = torch.Generator().manual_seed(4)
    features, vocabulary = torch.rand(2, 3, 3, 4, generator=g).double(), torch.rand(5, 3, generator=g).double()
    inv_delta, mu = 15.0, 0.3
    d = _transcribed_distances(features, vocabulary)
    torch.testing.assert_close(squared_distances(features, vocabulary), d)
    # q_k(u) = exp(-d_k(u) / delta) / sum_j exp(-d_j(u) / delta),  delta = mu / inv_delta
    delta = mu / inv_delta
    q = torch.exp(-d / delta) / torch.exp(-d / delta).sum(dim=1, keepdim=True)
    codes = soft_assignment(d, inv_delta, mu)
    torch.testing.assert_close(codes, q)
    # y_k = max_u q_k(u), then divided by sum_k y_k
    y = torch.stack([torch.stack([q[i, k].max() for k in range(5)]) for i in range(2)])
    torch.testing.assert_close(bag_of_words(codes, "max"), y / y.sum(dim=1, keepdim=True))


def test_bownet_hard_codes_and_histogram_match_the_papers_formulas():
    g = torch.Generator().manual_seed(5)
    features, vocabulary = torch.rand(2, 3, 4, 3, generator=g).double(), torch.rand(6, 3, generator=g).double()
    d = _transcribed_distances(features, vocabulary)
    histogram = torch.zeros(2, 6, dtype=torch.float64)
    for i in range(2):
        for u in range(4):
            for v in range(3):
                histogram[i, int(d[i, :, u, v].argmin())] += 1
    codes = hard_assignment(squared_distances(features, vocabulary))
    torch.testing.assert_close(bag_of_words(codes, "avg"), histogram / 12)
    present = (histogram > 0).double()
    torch.testing.assert_close(bag_of_words(codes, "max"), present / present.sum(dim=1, keepdim=True))


def test_bow_losses_hand_computed():
    logits, target = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.5, 0.5]])
    # softmax = [1/4, 3/4]: CE = -(0.5 log 1/4 + 0.5 log 3/4); KL = CE - H(target) = CE - log 2
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert bow_cross_entropy(logits, target).item() == pytest.approx(ce, rel=1e-6)
    assert bow_kl_loss(logits, target).item() == pytest.approx(ce - math.log(2), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# BoWNet


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(6)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, 10, torch.Generator().manual_seed(0))
    assert torch.cdist(found, centres).amin(dim=0).max() < 0.1  # one centroid on each cluster


def test_bownet_builds_its_vocabulary_at_the_first_step_and_keeps_its_teacher_frozen():
    method = tiny_method("bownet")
    method.train()
    views = _views(method)
    assert not bool(method.vocabulary_built)
    before = {k: v.clone() for k, v in method.random_teacher.state_dict().items()}
    out = method.training_step(views)
    out.loss.backward()
    assert bool(method.vocabulary_built)
    features = method.teacher_features(views[0])
    expected = kmeans(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), 8, 3,
                      torch.Generator().manual_seed(int(method.kmeans_seed)))
    torch.testing.assert_close(method.vocabulary, expected)
    vocabulary = method.vocabulary.clone()
    method.training_step(_views(method, seed=1))
    torch.testing.assert_close(method.vocabulary, vocabulary)  # built once
    assert all(p.grad is None and not p.requires_grad for p in method.random_teacher.parameters())
    assert not method.random_teacher.training  # the teacher stays in eval mode under method.train()
    for k, v in method.random_teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    bags = bag_of_words(hard_assignment(squared_distances(features, vocabulary)), "avg")
    torch.testing.assert_close(out.loss, bow_cross_entropy(method.head(method.encoder(views[1])), bags))


def test_bownet_teacher_from_a_run_folder(tiny_run):
    from selfsup.runs import load_run

    method = tiny_method("bownet", teacher_run=str(tiny_run))
    method.on_epoch_start(0, 1)
    assert not any(k.startswith("random_teacher") or "loaded" in k for k in method.state_dict())
    reference = load_run(tiny_run).encoder
    for (k, v), w in zip(reference.state_dict().items(), method.teacher().state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    method.train()
    out = method.training_step(_views(method, size=8))
    assert torch.isfinite(out.loss) and bool(method.vocabulary_built)
    assert method.vocabulary.shape == (8, reference.stage_dims[2])
    with pytest.raises(ConfigError, match="teacher-run"):
        tiny_method("bownet", teacher_run=str(tiny_run), in_channels=3).on_epoch_start(0, 1)
    with pytest.raises(ConfigError, match="teacher-run"):
        tiny_method("bownet", teacher_run=str(tiny_run / "missing")).on_epoch_start(0, 1)


# ---------------------------------------------------------------------------------------------
# OBoW


def test_obow_queue_takes_one_averaged_local_feature_per_image_in_batch_order():
    method = tiny_method("obow", num_words=6, bow_levels=1, teacher_border=0)
    method.train()
    maps = [torch.arange(4.0).view(4, 1, 1, 1) * torch.ones(4, method.level_dims[0], 5, 5)]  # image i: all i
    method.teacher_maps = lambda x: maps  # type: ignore[method-assign]
    queue = method.vocabularies[0]
    old = queue.items.clone()
    method.targets(torch.zeros(4, 1, 8, 8))
    torch.testing.assert_close(queue.items[:4], maps[0][:, :, 0, 0])  # rows 0-3, in batch order
    torch.testing.assert_close(queue.items[4:], old[4:])
    maps[0] = maps[0] + 10
    method.targets(torch.zeros(4, 1, 8, 8))  # 4 more into 6 places: rows 4, 5, then 0, 1 (the oldest)
    torch.testing.assert_close(queue.ordered()[-4:], maps[0][:, :, 0, 0])
    torch.testing.assert_close(queue.ordered()[:2], torch.tensor([[2.0], [3.0]]).expand(2, method.level_dims[0]))


def test_obow_queued_feature_is_the_3x3_average_at_a_drawn_position():
    method = tiny_method("obow", num_words=8, bow_levels=1, teacher_border=0)
    method.train()
    g = torch.Generator().manual_seed(7)
    feature_map = torch.rand(2, method.level_dims[0], 5, 5, generator=g)
    method.teacher_maps = lambda x: [feature_map]  # type: ignore[method-assign]
    seed, draws = int(method.queue_random.seed), int(method.queue_random.draws)
    method.targets(torch.zeros(2, 1, 8, 8))
    positions = torch.randint(9, (2,), generator=torch.Generator().manual_seed(seed * 1_000_003 + draws))
    for i in range(2):
        r, c = divmod(int(positions[i]), 3)
        torch.testing.assert_close(method.vocabularies[0].items[i], feature_map[i, :, r:r + 3, c:c + 3].mean((1, 2)))
    assert queue_candidates(feature_map, 3).shape == (2, 9, method.level_dims[0])


def test_obow_targets_use_the_old_vocabulary_and_the_updated_mean_distance():
    method = tiny_method("obow", bow_levels=1, teacher_border=0)
    method.train()
    feature_map = torch.rand(2, method.level_dims[0], 3, 3, generator=torch.Generator().manual_seed(8))
    method.teacher_maps = lambda x: [feature_map]  # type: ignore[method-assign]
    vocabulary = method.vocabularies[0].items.clone()
    bags = method.targets(torch.zeros(2, 1, 8, 8))[0]
    d = squared_distances(feature_map, vocabulary)
    mu = 0.99 * 0.5 + 0.01 * d.amin(dim=1).mean()
    torch.testing.assert_close(method.mean_min_distance[0], mu)
    torch.testing.assert_close(bags, bag_of_words(soft_assignment(d, 15.0, mu), "max"))


def test_obow_no_gradient_into_the_teacher_or_the_vocabulary_and_teacher_follows_by_ema():
    method = tiny_method("obow", teacher_momentum_schedule=False, teacher_momentum=0.9)
    method.train()
    out = method.training_step(_views(method))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(not q.items.requires_grad for q in method.vocabularies)
    assert all(p.grad is not None for p in method.generators.parameters())
    assert method.encoder.conv1.weight.grad is not None and out.embeddings[0].shape == (8, method.feature_dim)
    teacher = method.teacher.conv1.weight.clone()
    with torch.no_grad():
        method.encoder.conv1.weight.add_(1.0)
    assert method.on_step_end(1, 10)["teacher_momentum"] == 0.9
    torch.testing.assert_close(method.teacher.conv1.weight, 0.9 * teacher + 0.1 * method.encoder.conv1.weight)


def test_obow_loss_is_the_kl_of_each_crop_group_averaged_over_levels():
    method = tiny_method("obow")
    method.train()
    views = _views(method)
    words = [q.items.clone() for q in method.vocabularies]
    state = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.training_step(views)
    method.load_state_dict(state)  # the same step again, by hand
    targets = method.targets(views[0])
    total = 0.0
    for group in (views[1:3], views[3:]):
        f = method.encoder(torch.cat(group))
        logits = [method.kappa * f @ gen(w).T for gen, w in zip(method.generators, words)]
        total = total + sum(bow_kl_loss(lg, t.repeat(len(group), 1)) for lg, t in zip(logits, targets)) / 2
    torch.testing.assert_close(out.loss, total)


def test_vocabulary_batchnorm_is_not_synchronised():
    head = nn.Sequential(nn.Linear(3, 4), VocabularyBatchNorm(4), nn.BatchNorm1d(4))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    assert isinstance(converted[1], VocabularyBatchNorm) and isinstance(converted[2], nn.SyncBatchNorm)
    x = torch.randn(6, 4)
    torch.testing.assert_close(VocabularyBatchNorm(4).train()(x), F.batch_norm(x, None, None, training=True))


# ---------------------------------------------------------------------------------------------
# Every method: a training step, the monitors, export of a layer-norm encoder


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_update_the_encoder(name):
    method = tiny_method(name)
    method.train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    before = method.encoder.conv1.weight.clone()
    for step in range(2):
        method.on_epoch_start(0, 2)
        out = method.training_step(_views(method, seed=step))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        method.before_optimizer_step(step, 2)
        optimizer.step()
        assert all(isinstance(v, float) for v in method.on_step_end(step + 1, 2).values())
    assert not torch.equal(before, method.encoder.conv1.weight)
    assert out.features.shape == (8, method.feature_dim) and not out.features.requires_grad
    z1, z2 = out.embeddings
    assert z1.shape == z2.shape and not z1.requires_grad
    assert all(v.ndim == 0 for v in out.metrics.values())


def test_export_rebuilds_the_layer_norm_encoder_of_a_cpc_run(tmp_path):
    from selfsup.config import TrainConfig, resolve
    from selfsup.handoff.formats import _build, info_from_run
    from selfsup.runs import Run, build_method

    cfg = TrainConfig(method="cpc_v2", data="digits", width=0.125)
    resolved = resolve(cfg, 8)
    method = build_method(cfg, resolved, 1)
    info = info_from_run(Run(tmp_path, cfg, resolved, [0.5], [0.2], method))
    assert info.norm == "layernorm"
    rebuilt = _build(info)
    rebuilt.load_state_dict(method.encoder.state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------
# End to end: a short run beats the random-init encoder (same architecture, same init) on the linear
# probe of the held-out images

# Fashion-MNIST: 5,000 training images, one epoch of batch 64 (78 steps), ResNet-18 width 0.25 with
# zero-initialised residual blocks (the same-init floor of the family's test), the small-image recipe,
# seed 0, one thread; linear probe on the 10,000 test images. Margins: at most half the smallest gain
# measured with seeds 0 / 1 / 2 (BENCHMARKS.md, "CPC v2, BoWNet, OBoW").
FASHION_MNIST_E2E = dict(data="fashion-mnist", subset=5000, width=0.25, batch_size=64, epochs=1,
                         zero_init_residual=True)
FASHION_MNIST_MARGIN = {"cpc_v2": 0.0, "bownet": 0.0, "obow": 0.0}
# Digits (8-px images), width 0.125, batch 128, torchvision's default init; (epochs, margin).
DIGITS_E2E = {"cpc_v2": (10, 0.0), "bownet": (10, 0.0), "obow": (10, 0.0)}
_LINEAR_FLOOR: dict[tuple, float] = {}


def random_init_linear_top1(**options) -> float:
    """``random_init_linear_top1`` of the run ``train(**options)`` would make (computed once per process)."""
    from selfsup.config import TrainConfig, resolve
    from selfsup.evaluation.baselines import baseline_scores
    from selfsup.runs import channel_stats, load_split, merge_options, random_init_encoder

    key = tuple(sorted(options.items()))
    if key not in _LINEAR_FLOOR:
        cfg = merge_options(TrainConfig(), options)
        split = load_split(cfg)
        resolved = resolve(cfg, split.train.image_size)
        encoder = random_init_encoder(cfg, resolved, split.train.channels)
        scores = baseline_scores(encoder, split, resolved.image_size, *channel_stats(split), "cpu", cfg.seed,
                                 ["linear"])
        _LINEAR_FLOOR[key] = scores["random_init_linear_top1"]
    return _LINEAR_FLOOR[key]


def _e2e_settings(name: str) -> tuple[dict, float]:
    from selfsup.data.sources import fashion_mnist_available

    if fashion_mnist_available():
        settings, margin = dict(FASHION_MNIST_E2E), FASHION_MNIST_MARGIN[name]
    else:
        epochs, margin = DIGITS_E2E[name]
        settings = dict(data="digits", width=0.125, batch_size=128, epochs=epochs, zero_init_residual=False)
    return dict(settings, method=name, backbone="resnet18", seed=0, eval_protocols="linear"), margin


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_short_training_beats_the_random_init_linear_probe(name, tmp_path, one_thread):
    from selfsup.api import train

    settings, margin = _e2e_settings(name)
    summary = train(**settings, baselines=False, out=str(tmp_path / name), progress=False)
    floor = random_init_linear_top1(**settings)
    assert summary["recipe"] == "small"
    assert summary["linear_top1"] > floor + margin, (summary["linear_top1"], floor)
