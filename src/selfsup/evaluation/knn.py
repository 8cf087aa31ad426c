"""Weighted k-nearest-neighbour classifier on frozen features.

This is the non-parametric evaluation of Wu et al. 2018 ("Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", InstDisc), in the form used by DINO (Caron et al. 2021)
and solo-learn: features are L2-normalised, each test point takes its ``k`` most cosine-similar
training points, and each neighbour votes for its class with weight ``exp(sim / T)``.
Defaults ``k = 200``, ``T = 0.1`` follow InstDisc / DINO. The test set is processed in chunks so
the similarity matrix never exceeds ``chunk_size x N_train``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_predict", "knn_top1", "topk_accuracy"]


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores ``[N_test, num_classes]``: sums of ``exp(cos_sim / temperature)`` over the
    top-``k`` training neighbours of each test point, per neighbour class.

    ``k`` is clamped to the training-set size. ``num_classes`` defaults to
    ``train_labels.max() + 1``. Computation is in float32 on the device of ``train_features``.
    """
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError("features must be 2-D [N, D]")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}")
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels have different lengths")
    if train_features.shape[0] == 0:
        raise ValueError("empty training set")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float().to(device), dim=1)
    labels = train_labels.long().to(device)
    if num_classes is None:
        num_classes = int(labels.max().item()) + 1
    k = min(k, train.shape[0])

    scores = torch.zeros(test.shape[0], num_classes, dtype=torch.float32, device=device)
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T                  # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)                           # [c, k]
        weights = (top_sim / temperature).exp()
        scores[start:start + chunk_size].scatter_add_(1, labels[top_idx], weights)
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores (k clamped to #classes)."""
    if scores.shape[0] == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hits = (top == labels.to(scores.device).long().view(-1, 1)).any(dim=1)
    return int(hits.sum().item()) / hits.numel()


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted kNN classifier of :func:`knn_predict`."""
    num_classes = int(max(train_labels.max().item(), test_labels.max().item())) + 1
    scores = knn_predict(train_features, train_labels, test_features, k=k,
                         temperature=temperature, num_classes=num_classes)
    return topk_accuracy(scores, test_labels, k=1)
