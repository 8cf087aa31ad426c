"""Frozen-feature evaluation of an encoder: weighted kNN and a linear probe, with baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from selfsup.data.augment import normalize, to_float
from selfsup.data.dataset import DataSplit
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_top1
from selfsup.evaluation.linear import linear_probe

PROTOCOLS_FROZEN = ("knn", "linear")


def eval_preprocess(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images -> resized, normalised float input, exactly as training views are normalised."""
    return lambda images: normalize(to_float(images, size), mean, std)


def frozen_scores(train_features: torch.Tensor, test_features: torch.Tensor, split: DataSplit,
                  protocols: Sequence[str] = PROTOCOLS_FROZEN, seed: int = 0) -> dict[str, float]:
    """``{protocol}_top1`` (and ``linear_top5``) for features of ``split.train`` / ``split.test``."""
    if split.train.labels is None or split.test.labels is None:
        raise ValueError(f"{split.train.name}: evaluation needs labels, and this data has none")
    scores: dict[str, float] = {}
    if "knn" in protocols:
        scores["knn_top1"] = knn_top1(train_features, split.train.labels, test_features, split.test.labels)
    if "linear" in protocols:
        result = linear_probe(train_features, split.train.labels, test_features, split.test.labels, seed=seed)
        scores["linear_top1"] = result.top1
        if result.top5 is not None:
            scores["linear_top5"] = result.top5
    return scores


def evaluate_encoder(encoder: nn.Module, split: DataSplit, size: int, mean: Sequence[float],
                     std: Sequence[float], protocols: Sequence[str] = PROTOCOLS_FROZEN,
                     device: str | torch.device = "cpu", seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Frozen features of ``encoder`` on train and test, scored by each protocol."""
    pre = eval_preprocess(size, mean, std)
    train = extract_features(encoder, split.train.images, pre, device=device, progress=progress)
    test = extract_features(encoder, split.test.images, pre, device=device, progress=progress)
    return frozen_scores(train, test, split, protocols, seed)


def evaluate_raw_pixels(split: DataSplit, size: int, mean: Sequence[float], std: Sequence[float],
                        protocols: Sequence[str] = PROTOCOLS_FROZEN, seed: int = 0) -> dict[str, float]:
    """The same protocols on flattened normalised pixels: the floor any representation must beat."""
    pre = eval_preprocess(size, mean, std)
    train = pre(split.train.images).flatten(1)
    test = pre(split.test.images).flatten(1)
    return frozen_scores(train, test, split, protocols, seed)
