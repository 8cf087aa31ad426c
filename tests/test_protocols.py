"""Evaluation protocols (issue 5): linear-aug, fine-tune, semi-supervised, few-shot, transfer, all.

Every protocol is checked on a constructed case with a known answer: images whose class is the
channel that is bright (so any crop or flip keeps the class), tiny encoders, hand-computable
few-shot episodes. Deterministic, no network, a few seconds on 2 CPU cores.
"""

import json
import math

import pytest
import torch
from torch import nn

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.sources import load_data, parse_class_list
from selfsup.evaluation.fewshot import (
    Episode,
    episode_accuracy,
    fewshot_eval,
    mean_ci95,
    prototype_logits,
    prototypes,
    sample_episode,
)
from selfsup.evaluation.finetune import ClassifierSettings, crop_flip_spec, train_classifier
from selfsup.evaluation.intervals import wilson_interval
from selfsup.evaluation.protocols import (
    EvalOptions,
    EvalSetup,
    Evaluator,
    ProtocolError,
    adapt_images,
    check_protocol,
    evaluate_and_save,
    format_result,
    protocol_slug,
    summary_rows,
)
from selfsup.evaluation.semi import balanced_subset, parse_semi, semi_slug

MEAN, STD = [0.3, 0.3, 0.3], [0.3, 0.3, 0.3]


pytestmark = pytest.mark.usefixtures("one_thread")


PATTERNS = [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]  # class -> its bright channels


def _channel_images(labels: torch.Tensor, size: int = 8, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """uint8 [N, 3, size, size]: the channels ``PATTERNS[label]`` bright (~180), the others dark
    (~20), plus noise: any crop or flip keeps the class, and the per-channel mean separates them.
    ``offset`` shifts the intensities so two datasets never share an image.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (len(labels), 3, size, size), generator=g)
    for i, y in enumerate(labels.tolist()):
        x[i, list(PATTERNS[y])] += 160
    return (x + offset).clamp(0, 255).to(torch.uint8)


def _split(n_train: int = 60, n_test: int = 30, classes: int = 3, size: int = 8, seed: int = 0,
           name: str = "toy") -> DataSplit:
    ytr = torch.arange(classes).repeat(n_train // classes)
    yte = torch.arange(classes).repeat(n_test // classes)
    train = ImageDataset(name, _channel_images(ytr, size, seed), ytr, [f"c{i}" for i in range(classes)])
    test = ImageDataset(name, _channel_images(yte, size, seed + 1, offset=1), yte, [f"c{i}" for i in range(classes)])
    return DataSplit(train=train, test=test, source=f"synthetic {name}")


class MeanPool(nn.Module):
    """The identity-like encoder: per-channel mean intensity (no parameters)."""

    feature_dim = 3

    def forward(self, x):
        return x.mean(dim=(2, 3))


def _conv_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    net.feature_dim = 8
    return net


# ----------------------------------------------------------------------------- linear-aug / fine-tune

def test_linear_aug_on_frozen_identity_encoder_is_perfect_and_leaves_encoder_alone():
    split = _split()
    enc = _conv_encoder()
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    s = ClassifierSettings(epochs=10, batch_size=20, lr=0.5, crop_scale=(0.5, 1.0), seed=0)
    r = train_classifier(MeanPool(), split.train.images, split.train.labels, split.test.images, split.test.labels,
                         size=8, mean=MEAN, std=STD, settings=s, freeze_encoder=True)
    assert r.top1 == 1.0 and r.top5 is None and r.steps == 30
    # cached eval-mode test features give the same answer as the forward pass
    from selfsup.data.augment import normalize, to_float

    cached = MeanPool()(normalize(to_float(split.test.images, 8), MEAN, STD))
    r_cached = train_classifier(MeanPool(), split.train.images, split.train.labels, split.test.images,
                                split.test.labels, size=8, mean=MEAN, std=STD, settings=s, freeze_encoder=True,
                                test_features=cached)
    assert (r_cached.top1, r_cached.train_top1) == (r.top1, r.train_top1)
    r2 = train_classifier(enc, split.train.images, split.train.labels, split.test.images, split.test.labels,
                          size=8, mean=MEAN, std=STD, settings=s, freeze_encoder=True)
    assert r2.steps == 30
    for k, v in enc.state_dict().items():  # frozen: weights and BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k
    assert enc.training and all(p.requires_grad for p in enc.parameters())


def test_finetune_reaches_one_and_trains_a_copy():
    split = _split()
    enc = _conv_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    s = ClassifierSettings(epochs=8, batch_size=20, lr=0.5, crop_scale=(0.5, 1.0), seed=0)
    r = train_classifier(enc, split.train.images, split.train.labels, split.test.images, split.test.labels,
                         size=8, mean=MEAN, std=STD, settings=s, freeze_encoder=False, keep_model=True)
    assert r.top1 == 1.0
    assert r.model is not None and not torch.equal(r.model.encoder[0].weight, before["0.weight"])
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    again = train_classifier(enc, split.train.images, split.train.labels, split.test.images, split.test.labels,
                             size=8, mean=MEAN, std=STD, settings=s, freeze_encoder=False)
    assert again.top1 == r.top1 and again.train_top1 == r.train_top1  # seeded: reproducible


def test_eval_augmentation_is_crop_and_flip_only():
    spec = crop_flip_spec(28, (0.2, 1.0))
    assert spec.size == 28 and spec.crop_scale == (0.2, 1.0) and spec.flip_p == 0.5
    assert spec.jitter_p == spec.grayscale_p == spec.blur_p == spec.solarize_p == 0.0


# ----------------------------------------------------------------------------- semi-supervised subsets

def test_balanced_subset_is_balanced_reproducible_and_seeded():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    one = balanced_subset(labels, 0.01, seed=3)
    assert torch.bincount(labels[one], minlength=10).tolist() == [1] * 10
    ten = balanced_subset(labels, 0.10, seed=3)
    assert torch.bincount(labels[ten], minlength=10).tolist() == [10] * 10
    assert len(set(ten.tolist())) == 100 and torch.equal(ten, ten.sort().values)
    assert torch.equal(ten, balanced_subset(labels, 0.10, seed=3))
    assert not torch.equal(ten, balanced_subset(labels, 0.10, seed=4))
    # imbalanced data: the same count per class, capped by what a class has
    skew = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)
    idx = balanced_subset(skew, 0.3, seed=0)  # round(0.3 * 100 / 3) = 10 per class
    assert torch.bincount(skew[idx]).tolist() == [10, 5, 10]
    assert parse_semi("semi:1%") == 0.01 and parse_semi("semi:10%") == 0.1 and parse_semi("semi:0%") is None
    assert semi_slug(0.01) == "semi_1pct" and protocol_slug("semi:10%") == "semi_10pct"


# ----------------------------------------------------------------------------- few-shot

def test_prototypes_and_distances_by_hand():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = prototypes(support, labels, 2)
    torch.testing.assert_close(protos, torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
    query = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    # squared distances: q0 -> (0 + 4, 1 + 9) = (4, 10); q1 -> (4 + 9, 9 + 4) = (13, 13)
    torch.testing.assert_close(prototype_logits(query, protos, "euclidean"),
                               -torch.tensor([[4.0, 10.0], [13.0, 13.0]], dtype=torch.float64))
    cos = prototype_logits(query, protos, "cosine")
    torch.testing.assert_close(cos[0], torch.tensor([1 / math.sqrt(5), 2 / math.sqrt(5)], dtype=torch.float64))


def test_episode_accuracy_euclidean_vs_cosine_by_hand():
    # Class 0 prototype (1, 0), class 1 prototype (10, 10). Query (9, 1): Euclidean -> class 0?
    # d0 = 64 + 1 = 65, d1 = 1 + 81 = 82 -> class 0; cosine: (9,1).(1,0)/|q| = 0.994 vs 0.781 -> class 0.
    # Query (2, 2): d0 = 1 + 4 = 5 (class 0), cosine: 0.707 vs 1.0 -> class 1.
    feats = torch.tensor([[1.0, 0.0], [10.0, 10.0], [9.0, 1.0], [2.0, 2.0]])
    ep = Episode(classes=[7, 8], support=torch.tensor([0, 1]), support_labels=torch.tensor([0, 1]),
                 query=torch.tensor([2, 3]), query_labels=torch.tensor([0, 1]))
    assert episode_accuracy(feats, ep, "euclidean") == 0.5
    assert episode_accuracy(feats, ep, "cosine") == 1.0


def test_mean_ci95_by_hand():
    mean, ci = mean_ci95([0.5, 1.0, 0.75, 0.75])
    std = math.sqrt((0.0625 + 0.0625) / 4)  # population std
    assert mean == pytest.approx(0.75) and ci == pytest.approx(1.96 * std / 2)
    assert mean_ci95([0.6] * 9) == (pytest.approx(0.6), 0.0)


def test_episode_sampling_is_reproducible_disjoint_and_restricted():
    labels = torch.arange(8).repeat_interleave(25)
    a = sample_episode(labels, 5, 2, 3, torch.Generator().manual_seed(1), classes=[3, 4, 5, 6, 7])
    b = sample_episode(labels, 5, 2, 3, torch.Generator().manual_seed(1), classes=[3, 4, 5, 6, 7])
    assert a.classes == b.classes and torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert sorted(a.classes) == [3, 4, 5, 6, 7]
    assert not set(a.support.tolist()) & set(a.query.tolist())
    assert len(a.support) == 10 and len(a.query) == 15
    for i, c in enumerate(a.classes):  # episode label i is class classes[i]
        assert (labels[a.support[a.support_labels == i]] == c).all()
        assert (labels[a.query[a.query_labels == i]] == c).all()
    c = sample_episode(labels, 5, 2, 3, torch.Generator().manual_seed(2), classes=[3, 4, 5, 6, 7])
    assert not torch.equal(a.query, c.query)
    with pytest.raises(ValueError, match="5-way"):
        sample_episode(labels, 5, 1, 1, torch.Generator(), classes=[0, 1, 2])


def test_fewshot_eval_separable_is_perfect_and_seeded():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(20)
    feats = torch.eye(6)[labels] * 10 + 0.1 * torch.randn(len(labels), 6, generator=g)
    r = fewshot_eval(feats, labels, n_way=5, k_shot=1, n_query=5, episodes=30, seed=0)
    assert r.mean == 1.0 and r.ci95 == 0.0 and r.episodes == 30
    noisy = torch.randn(len(labels), 6, generator=g)
    r1 = fewshot_eval(noisy, labels, 5, 1, 5, 40, seed=5)
    r2 = fewshot_eval(noisy, labels, 5, 1, 5, 40, seed=5)
    assert r1 == r2 and 0 < r1.ci95 < 1


# ----------------------------------------------------------------------------- held-out classes

def test_holdout_classes_never_reach_pretraining():
    assert parse_class_list("7,8,9") == [7, 8, 9] and parse_class_list("0,5-7") == [0, 5, 6, 7]
    with pytest.raises(ValueError):
        parse_class_list("a-b")
    full = load_data("digits", progress=False)
    held = load_data("digits", holdout_classes="5-9", subset=300, seed=1, progress=False)
    assert len(held.train) == 300
    assert not torch.isin(held.train.labels, torch.tensor([5, 6, 7, 8, 9])).any()
    assert torch.equal(held.test.images, full.test.images)  # the test split keeps every class
    # no image of a held-out class is among the pretraining images (compared by content)
    pretrain = {bytes(x.numpy().tobytes()) for x in held.train.images}
    heldout = [bytes(x.numpy().tobytes()) for x, y in zip(full.train.images, full.train.labels) if y >= 5]
    assert not pretrain.intersection(heldout)


def test_train_passes_only_non_heldout_images_to_the_loop(tmp_path, monkeypatch):
    import selfsup.api as api
    import selfsup.runs.train as run_training

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(method, images, *args, **kwargs):
        seen["images"] = images
        raise Stop

    monkeypatch.setattr(run_training, "fit", fake_fit)  # the loop api.train runs
    with pytest.raises(Stop):
        api.train(method="byol", data="digits", holdout_classes="7,8,9", width=0.125, epochs=1, batch_size=64,
                  out=str(tmp_path / "run"), progress=False, eval_after=False)
    full = load_data("digits", progress=False)
    heldout = {bytes(x.numpy().tobytes()) for x, y in zip(full.train.images, full.train.labels) if y >= 7}
    passed = [bytes(x.numpy().tobytes()) for x in seen["images"]]
    assert len(passed) == int((full.train.labels < 7).sum()) and not heldout.intersection(passed)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "holdout_classes: 7,8,9" in config


# ----------------------------------------------------------------------------- adaptation

def test_adapt_images_repeats_averages_and_resizes():
    gray = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    rgb = adapt_images(gray, 3, 8)
    assert rgb.shape == (4, 3, 8, 8) and all(torch.equal(rgb[:, i], gray[:, 0]) for i in range(3))
    colour = torch.stack([torch.full((8, 8), v, dtype=torch.uint8) for v in (30, 60, 90)])[None]
    assert torch.equal(adapt_images(colour, 1, 8), torch.full((1, 1, 8, 8), 60, dtype=torch.uint8))
    assert adapt_images(gray, 1, 16).shape == (4, 1, 16, 16)
    assert adapt_images(gray, 1, 8) is gray
    with pytest.raises(ProtocolError):
        adapt_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3, 4)


# ----------------------------------------------------------------------------- the evaluator, end to end

def _setup(holdout=(), log=None) -> EvalSetup:
    data = {"toy": _split(n_train=90, n_test=60, classes=6, size=8),
            "other": _split(n_train=30, n_test=12, classes=3, size=6, seed=7, name="other")}  # 6 px -> 8 px
    return EvalSetup(encoder=MeanPool(), random_init=lambda: _conv_encoder(1), load=lambda spec: data[spec],
                     run_data="toy", data="toy", channels=3, size=8, mean=MEAN, std=STD, crop_scale=(0.5, 1.0),
                     holdout_classes=holdout, seed=0, log=log or (lambda m: None))


FAST = dict(epochs=6, batch_size=16, lr=10.0, episodes=20, ways=3, shots=(1, 2), queries=3, transfer_data="other")


def test_every_protocol_known_answers_and_files(tmp_path):
    ev = Evaluator(_setup(holdout=(3, 4, 5)), EvalOptions(**FAST))
    out = evaluate_and_save(ev, "all", tmp_path, run="toy-run", method="byol")
    # the identity-like "learned" encoder separates the classes perfectly under every protocol
    for key in ("knn_top1", "linear_top1", "linear_aug_top1", "finetune_top1", "semi_10pct_top1",
                "transfer_linear_top1", "transfer_knn_top1"):
        assert out[key] == 1.0, key
    assert out["fewshot_3way_1shot"] == 1.0 and out["fewshot_3way_2shot"] == 1.0
    assert out["fewshot_3way_1shot_ci95"] == 0.0
    assert "random_init_linear_aug_top1" in out and "raw_pixels_knn_top1" in out and "supervised_top1" in out
    # fine-tuning from random init is the supervised run: computed once, same numbers
    assert out["random_init_finetune_top1"] == out["supervised_top1"]
    info = out["protocols"]["fewshot"]["info"]
    assert info["classes"] == [3, 4, 5] and info["fewshot_kind"] == "classes held out from pretraining"
    # semi-supervised: indices beside the result, class-balanced, inside the training split
    idx = json.loads((tmp_path / "semi_10pct-toy-indices.json").read_text())
    assert len(idx["indices"]) == 12 and idx["per_class"] == [2] * 6 and max(idx["indices"]) < 90
    split = _setup().load("toy")
    test_images = {bytes(x.numpy().tobytes()) for x in split.test.images}
    assert not test_images.intersection(bytes(split.train.images[i].numpy().tobytes()) for i in idx["indices"])
    assert idx["indices"] == balanced_subset(split.train.labels, 0.1, 0).tolist()  # reproducible from the seed
    for name in ("knn-toy", "linear-toy", "linear-aug-toy", "finetune-toy", "semi_1pct-toy", "semi_10pct-toy",
                 "supervised-toy", "fewshot-toy", "transfer-other", "summary-toy"):
        assert (tmp_path / f"{name}.json").exists(), name
    md = (tmp_path / "summary-toy.md").read_text()
    for row in ("supervised (from scratch)", "random init (same init)", "raw pixels", "byol"):
        assert f"| {row} |" in md
    assert "| 100.00 ± 0.00 |" in md  # few-shot cells carry the confidence interval
    rows = dict(summary_rows(out, "byol", ways=3, shots=(1, 2)))
    low, high = wilson_interval(1.0, out["test_images"])  # every accuracy with its 95% interval
    assert rows["byol"]["fine-tune"] == f"100.00 ({100 * low:.2f}-{100 * high:.2f})"
    assert rows["supervised (from scratch)"]["linear-aug"] == "-"
    transfer = json.loads((tmp_path / "transfer-other.json").read_text())
    assert transfer["info"]["adapted"] == "resized 6 -> 8 px"


def test_fewshot_needs_heldout_classes_or_other_data(tmp_path):
    ev = Evaluator(_setup(), EvalOptions(**FAST))
    with pytest.raises(ProtocolError, match="holdout-classes"):
        ev.run("fewshot")
    cross = Evaluator(_setup(), EvalOptions(**FAST))
    cross.setup.data = "other"
    r = cross.run("fewshot")
    assert r.info["fewshot_kind"] == "cross-domain" and r.info["classes"] == [0, 1, 2]
    single = evaluate_and_save(Evaluator(_setup(), EvalOptions(**FAST)), "knn", tmp_path, run="toy-run")
    assert single["knn_top1"] == 1.0 and "knn_top1" in format_result(single)
    assert json.loads((tmp_path / "knn-toy.json").read_text())["knn_top1"] == 1.0


def test_protocol_names_and_options_are_checked():
    assert check_protocol("semi:5%") == "semi:5%" and check_protocol("ALL") == "all"
    with pytest.raises(ProtocolError, match="--protocol"):
        check_protocol("linear_aug")
    with pytest.raises(ProtocolError, match="--metric"):
        EvalOptions(metric="manhattan").check()
    with pytest.raises(ProtocolError, match="--ways"):
        Evaluator(_setup(holdout=(3, 4, 5)), EvalOptions(**{**FAST, "ways": 5})).run("fewshot")


def test_cli_rejects_unknown_protocol_with_exit_code_2(capsys):
    from selfsup.cli import main

    assert main(["eval", "no-such-run", "--protocol", "bogus"]) == 2
    assert "--protocol" in capsys.readouterr().err
