"""Tests for selfsup.train.diagnostics (collapse / representation monitors)."""

import math

import pytest
import torch

from selfsup.train.diagnostics import (
    CollapseWatch,
    alignment,
    normalized_std,
    normalized_std_scaled,
    pair_cosine,
    rankme,
    representation_metrics,
    uniformity,
)

D = 32


def _collapsed(n=256, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    row = torch.randn(d, generator=g)
    return row.expand(n, d) + 1e-6 * torch.randn(n, d, generator=g)


def _gaussian(n=8192, d=D, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_collapsed_batch():
    z = _collapsed()
    assert normalized_std(z) < 1e-4
    assert normalized_std_scaled(z) < 1e-3
    assert rankme(z) == pytest.approx(1.0, abs=0.01)


def test_spread_batch():
    z = _gaussian()
    assert normalized_std(z) == pytest.approx(1 / math.sqrt(D), rel=0.03)
    assert normalized_std_scaled(z) == pytest.approx(1.0, rel=0.03)
    assert rankme(z) > 0.97 * D
    # exactly orthogonal columns: all singular values equal -> RankMe = D
    q, _ = torch.linalg.qr(_gaussian(n=512, d=D, seed=1))
    assert rankme(q) == pytest.approx(D, rel=1e-4)
    # rank-r data -> RankMe <= r
    low = _gaussian(n=512, d=4, seed=2) @ torch.randn(4, D, generator=torch.Generator().manual_seed(3))
    assert rankme(low) <= 4.0 + 1e-3


def test_alignment():
    z = _gaussian(n=64, seed=4)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-10)
    assert alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-10)  # scale-invariant (normalised)
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-5)  # antipodal: ||2u||^2
    assert alignment(z, -z, alpha=1) == pytest.approx(2.0, rel=1e-5)
    assert pair_cosine(z, z) == pytest.approx(1.0, rel=1e-5)
    assert pair_cosine(z, -z) == pytest.approx(-1.0, rel=1e-5)


def test_uniformity_matches_double_loop():
    z = _gaussian(n=12, d=5, seed=5).double()
    u = torch.nn.functional.normalize(z, dim=1)
    for t in (2.0, 0.5):
        terms = [math.exp(-t * float((u[i] - u[j]).pow(2).sum()))
                 for i in range(len(u)) for j in range(len(u)) if i != j]
        expected = math.log(sum(terms) / len(terms))
        assert uniformity(z, t=t) == pytest.approx(expected, rel=1e-5)
    assert uniformity(_collapsed()) == pytest.approx(0.0, abs=1e-6)


def test_representation_metrics_keys_and_no_grad():
    z1 = _gaussian(n=128, seed=6).requires_grad_(True)
    z2 = (z1.detach() + 0.1 * _gaussian(n=128, seed=7)).double()
    m = representation_metrics(z1, z2)
    assert set(m) == {"std", "std_scaled", "rankme", "alignment", "uniformity", "cosine"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert m["std_scaled"] == pytest.approx(m["std"] * math.sqrt(D), rel=1e-6)
    assert 0.9 < m["cosine"] <= 1.0
    assert z1.grad is None


def test_collapse_watch_patience_and_once_per_episode():
    w = CollapseWatch(threshold=0.1, patience=3)
    assert [w.update(v) for v in (1.0, 0.05, 0.05)] == [False, False, False]
    assert w.update(0.01) is True          # third consecutive low value
    assert [w.update(v) for v in (0.0, 0.0, 0.0)] == [False] * 3  # same episode: silent
    assert w.collapsed
    assert w.update(0.5) is False           # recovery ends the episode
    assert not w.collapsed
    assert [w.update(v) for v in (0.0, 0.0)] == [False, False]
    assert w.update(0.0) is True            # new episode warns again
    assert w.episodes == 2


def test_collapse_watch_interrupted_streak_and_nan():
    w = CollapseWatch(patience=2)
    assert w.update(0.0) is False
    assert w.update(0.9) is False           # streak broken
    assert w.update(0.0) is False
    assert w.update(float("nan")) is True   # NaN counts as collapsed/diverged
