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
from dataclasses import dataclass

import torch

from .knn import topk_accuracy

__all__ = ["LinearProbeResult", "linear_probe"]


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
    ``lr`` over ``epochs`` passes, from zero-initialised weights; ``batch_size >= N_train`` gives full-batch training. Runs on
    the device of ``train_features`` in float32.
    """
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError("features must be 2-D [N, D]")
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels have different lengths")
    if train_features.shape[0] == 0:
        raise ValueError("empty training set")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")

    device = train_features.device
    x_train = train_features.detach().float()
    x_test = test_features.detach().float().to(device)
    y_train = train_labels.long().to(device)
    y_test = test_labels.long().to(device)

    mean = x_train.mean(dim=0, keepdim=True)
    std = x_train.std(dim=0, keepdim=True) if x_train.shape[0] > 1 else torch.ones_like(mean)
    std = std.clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std

    num_classes = int(max(y_train.max().item(), y_test.max().item() if len(y_test) else 0)) + 1
    n, dim = x_train.shape
    # Softmax regression W x + b, trained with Adam (Kingma & Ba 2015) written out by hand on the
    # analytic cross-entropy gradient: same maths as nn.Linear + torch.optim.Adam, but without
    # autograd overhead and without the optimizer's one-off import of torch._dynamo (seconds).
    weight = torch.zeros(num_classes, dim, device=device)
    bias = torch.zeros(num_classes, device=device)
    params = (weight, bias)
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)

    step = 0
    with torch.no_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device) if batch_size < n else None
            for start in range(0, n, batch_size):
                if order is None:
                    xb, yb = x_train, y_train
                else:
                    idx = order[start:start + batch_size]
                    xb, yb = x_train[idx], y_train[idx]
                # d(mean CE)/d(logits) = (softmax - onehot) / B
                grad_logits = torch.softmax(torch.addmm(bias, xb, weight.T), dim=1)
                grad_logits[torch.arange(len(yb), device=device), yb] -= 1.0
                grad_logits /= len(yb)
                grads = (grad_logits.T @ xb + weight_decay * weight, grad_logits.sum(dim=0))

                step += 1
                step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps))
                bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
                for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
                    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                    denom = (v / bc2).sqrt_().add_(eps)
                    p.addcdiv_(m, denom, value=-step_lr / bc1)

        train_scores = torch.addmm(bias, x_train, weight.T)
        test_scores = torch.addmm(bias, x_test, weight.T)
    return LinearProbeResult(
        top1=topk_accuracy(test_scores, y_test, k=1),
        top5=topk_accuracy(test_scores, y_test, k=5) if num_classes > 5 else None,
        train_top1=topk_accuracy(train_scores, y_train, k=1),
    )
