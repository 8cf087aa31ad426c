"""Tests for selfsup.evaluation: features, kNN (Wu et al. 2018), linear probe."""

import math

import pytest
import torch
from torch import nn

from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_predict, knn_top1, topk_accuracy
from selfsup.evaluation.linear import LinearProbeResult, linear_probe


def _blobs(n_per_class, num_classes, dim, spread, generator):
    centers = torch.randn(num_classes, dim, generator=generator) * 3.0
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return feats, labels


# ----------------------------------------------------------------------------- kNN

def test_knn_separable_set_is_perfect():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = _blobs(50, 5, 16, 0.1, g)
    g2 = torch.Generator().manual_seed(1)
    # same centres (regenerate with the first seed), fresh noise for the test set
    centers = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)) * 3.0
    test_y = torch.arange(5).repeat_interleave(20)
    test_x = centers[test_y] + 0.1 * torch.randn(len(test_y), 16, generator=g2)
    assert knn_top1(train_x, train_y, test_x, test_y, k=20) == 1.0


def test_knn_scores_match_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.2]])
    temperature = 0.5
    # cosine similarities of the query to each train point, by hand
    qn = math.sqrt(1.0 + 0.04)
    sims = [1.0 / qn, 0.2 / qn, 1.2 / (math.sqrt(2.0) * qn), -1.0 / qn]
    # k = 2: nearest are point 0 (class 0) and point 2 (class 1)
    expected = torch.tensor([[math.exp(sims[0] / temperature), math.exp(sims[2] / temperature)]])
    scores = knn_predict(train, labels, query, k=2, temperature=temperature)
    assert scores.shape == (1, 2)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    # k = 3 adds point 1 (class 1)
    scores3 = knn_predict(train, labels, query, k=3, temperature=temperature)
    expected3 = expected.clone()
    expected3[0, 1] += math.exp(sims[1] / temperature)
    torch.testing.assert_close(scores3, expected3, rtol=1e-5, atol=1e-6)
    # scaling features does not change anything (cosine similarity)
    torch.testing.assert_close(knn_predict(7 * train, labels, 0.3 * query, k=2, temperature=temperature),
                               expected, rtol=1e-5, atol=1e-6)


def test_knn_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    train_x = torch.randn(300, 8, generator=g)
    train_y = torch.randint(0, 4, (300,), generator=g)
    test_x = torch.randn(97, 8, generator=g)
    full = knn_predict(train_x, train_y, test_x, k=10, chunk_size=10_000)
    for chunk in (1, 7, 32, 96):
        torch.testing.assert_close(knn_predict(train_x, train_y, test_x, k=10, chunk_size=chunk), full,
                                   rtol=1e-5, atol=1e-5)  # float32 matmul per chunk


def test_knn_k_is_clamped_to_train_size():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    big = knn_predict(train, labels, query, k=200, temperature=0.1, num_classes=3)
    exact = knn_predict(train, labels, query, k=3, temperature=0.1, num_classes=3)
    torch.testing.assert_close(big, exact)
    assert big.shape == (2, 3)
    assert torch.all(big[:, 2] == 0)  # class 2 has no training points
    assert knn_top1(train, labels, query, torch.tensor([0, 1]), k=200) == 1.0


def test_topk_accuracy_hand_case():
    scores = torch.tensor([
        [0.1, 0.7, 0.2],   # top1 = 1
        [0.5, 0.1, 0.4],   # top1 = 0, top2 = {0, 2}
        [0.2, 0.3, 0.5],   # top1 = 2, top2 = {2, 1}
        [0.6, 0.3, 0.1],   # top1 = 0, top2 = {0, 1}
    ])
    labels = torch.tensor([1, 2, 0, 0])
    assert topk_accuracy(scores, labels, k=1) == pytest.approx(2 / 4)
    assert topk_accuracy(scores, labels, k=2) == pytest.approx(3 / 4)
    assert topk_accuracy(scores, labels, k=3) == 1.0
    assert topk_accuracy(scores, labels, k=10) == 1.0  # clamped


# ----------------------------------------------------------------------------- linear probe

def _blob_split(seed, num_classes=10, dim=32):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g)
    ytr = torch.randint(0, num_classes, (2000,), generator=g)
    yte = torch.randint(0, num_classes, (500,), generator=g)
    xtr = centers[ytr] + 0.3 * torch.randn(len(ytr), dim, generator=g)
    xte = centers[yte] + 0.3 * torch.randn(len(yte), dim, generator=g)
    return xtr, ytr, xte, yte


def test_linear_probe_separable_blobs():
    xtr, ytr, xte, yte = _blob_split(0)
    # shift/scale features far from standardised to exercise the standardisation
    res = linear_probe(100 + 50 * xtr, ytr, 100 + 50 * xte, yte, epochs=30, batch_size=256)
    assert isinstance(res, LinearProbeResult)
    assert res.top1 >= 0.95
    assert res.train_top1 >= 0.95
    assert res.top5 is not None and res.top5 >= res.top1


def test_linear_probe_random_labels_is_chance_on_test():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.randn(2000, 32, generator=g), torch.randn(500, 32, generator=g)
    ytr, yte = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (500,), generator=g)
    res = linear_probe(xtr, ytr, xte, yte, epochs=30, batch_size=256)
    assert res.top1 < 0.3
    assert res.train_top1 > res.top1  # it can only memorise, not generalise


def test_linear_probe_is_deterministic_and_top5_none_for_few_classes():
    xtr, ytr, xte, yte = _blob_split(2, num_classes=4, dim=8)
    xtr = xtr + torch.randn(xtr.shape, generator=torch.Generator().manual_seed(9))  # not separable
    a = linear_probe(xtr, ytr, xte, yte, epochs=5, batch_size=128, seed=3)
    b = linear_probe(xtr, ytr, xte, yte, epochs=5, batch_size=128, seed=3)
    assert a == b
    assert a.top5 is None
    # full batch path
    c = linear_probe(xtr, ytr, xte, yte, epochs=20, batch_size=10**6)
    assert 0.0 <= c.top1 <= 1.0 and 0.0 <= c.train_top1 <= 1.0


# ----------------------------------------------------------------------------- features

class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.drop(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _preprocess(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.25


def test_extract_features_matches_direct_call_and_restores_mode():
    torch.manual_seed(0)
    enc = _Encoder()
    with torch.no_grad():  # make BN running stats non-trivial
        enc.bn.running_mean.uniform_(-0.5, 0.5)
        enc.bn.running_var.uniform_(0.5, 2.0)
    enc.train()
    enc.pool.eval()  # a mixed-mode module tree must come back exactly as it was
    modes_before = [m.training for m in enc.modules()]
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    feats = extract_features(enc, images, _preprocess, batch_size=10)
    assert [m.training for m in enc.modules()] == modes_before
    assert feats.dtype == torch.float32 and feats.device.type == "cpu" and feats.shape == (37, 4)
    enc.eval()
    with torch.no_grad():
        expected = enc(_preprocess(images))
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    # eval mode stays eval
    extract_features(enc, images, _preprocess)
    assert not enc.training


def test_extract_features_restores_mode_on_error():
    enc = _Encoder().train()

    def bad(_x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        extract_features(enc, torch.zeros(2, 3, 4, 4, dtype=torch.uint8), bad)
    assert all(m.training for m in enc.modules())
