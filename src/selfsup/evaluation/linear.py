"""Linear probe on frozen, precomputed features.

The linear evaluation protocol of self-supervised learning (Zhang et al. 2016; used by SimCLR,
Chen et al. 2020, and BYOL, Grill et al. 2020): a single linear layer is trained with
cross-entropy on top of the frozen representation, and its test accuracy measures how linearly
separable the representation is. Here the features are precomputed (see
:func:`selfsup.evaluation.features.extract_features`), standardised with the *training* mean and
std, and the layer is trained with Adam + small L2 weight decay and a cosine learning-rate
schedule for a fixed number of epochs. Softmax regression is convex, so the weights start at
zero and the only randomness is the minibatch order, drawn from a seeded generator: the result is
deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from selfsup.evaluation.knn import topk_accuracy
from selfsup.schedules import cosine

__all__ = ["LinearProbeResult", "linear_probe"]

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


@dataclass
class LinearProbeResult:
    """Accuracies (fractions in [0, 1]) of a linear probe.

    ``top5`` is ``None`` when there are 5 classes or fewer (it would be trivially 1).
    """

    top1: float
    top5: float | None
    train_top1: float


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
) -> LinearProbeResult:
    """Train one ``nn.Linear`` on standardised frozen features; report train/test accuracy.

    Minibatch Adam (L2 ``weight_decay`` on the weight, not the bias) with a cosine-decayed
    ``lr`` over ``epochs`` passes, from zero-initialised weights; ``batch_size >= N_train`` gives
    full-batch training. Runs on the device of ``train_features`` in float32.
    """
    _check_inputs(train_features, train_labels, test_features, test_labels, epochs, batch_size)
    device = train_features.device
    x_train, x_test = _standardise(train_features.detach().float(), test_features.detach().float().to(device))
    y_train, y_test = train_labels.long().to(device), test_labels.long().to(device)
    num_classes = int(max(y_train.max().item(), y_test.max().item() if len(y_test) else 0)) + 1
    weight, bias = _train_softmax_regression(x_train, y_train, num_classes, epochs, lr, weight_decay, batch_size,
                                             seed)
    with torch.no_grad():
        train_scores = torch.addmm(bias, x_train, weight.T)
        test_scores = torch.addmm(bias, x_test, weight.T)
    return LinearProbeResult(
        top1=topk_accuracy(test_scores, y_test, k=1),
        top5=topk_accuracy(test_scores, y_test, k=5) if num_classes > 5 else None,
        train_top1=topk_accuracy(train_scores, y_train, k=1),
    )


def _check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                  test_labels: torch.Tensor, epochs: int, batch_size: int) -> None:
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError("features must be 2-D [N, D]")
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels have different lengths")
    if train_features.shape[0] == 0:
        raise ValueError("empty training set")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets standardised with the training features' per-dimension mean and std (floor 1e-6)."""
    mean = x_train.mean(dim=0, keepdim=True)
    std = x_train.std(dim=0, keepdim=True) if x_train.shape[0] > 1 else torch.ones_like(mean)
    std = std.clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def _minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled minibatches (the whole set, unshuffled, when one batch holds it)."""
    n = x.shape[0]
    if batch_size >= n:
        yield x, y
        return
    order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def _cross_entropy_grads(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of mean cross-entropy (+ L2 on ``weight``): d/d(logits) = (softmax - onehot) / B."""
    grad_logits = torch.softmax(torch.addmm(bias, x, weight.T), dim=1)
    grad_logits[torch.arange(len(y), device=x.device), y] -= 1.0
    grad_logits /= len(y)
    return grad_logits.T @ x + weight_decay * weight, grad_logits.sum(dim=0)


@torch.no_grad()
def _train_softmax_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, lr: float,
                              weight_decay: float, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of softmax regression ``W x + b`` trained with Adam (Kingma & Ba 2015).

    Adam is written out on the analytic gradient: the same maths as ``nn.Linear`` +
    ``torch.optim.Adam``, without autograd overhead and without the optimiser's one-off import of
    ``torch._dynamo`` (seconds). The lr follows a cosine from ``lr`` at the first step to 0.
    """
    n, dim = x.shape
    params = (torch.zeros(num_classes, dim, device=x.device), torch.zeros(num_classes, device=x.device))
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    batch_size = min(batch_size, n)
    total_steps = epochs * math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for xb, yb in _minibatches(x, y, batch_size, generator):
            step += 1
            grads = _cross_entropy_grads(*params, xb, yb, weight_decay)
            _adam_step(params, grads, exp_avg, exp_avg_sq, step, cosine(step - 1, total_steps, lr))
    return params


def _adam_step(params: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...], exp_avg: list[torch.Tensor],
               exp_avg_sq: list[torch.Tensor], step: int, lr: float) -> None:
    """One Adam update in place (``step`` counts from 1, for the bias corrections)."""
    beta1, beta2 = ADAM_BETAS
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v / bc2).sqrt_().add_(ADAM_EPS)
        p.addcdiv_(m, denom, value=-lr / bc1)
