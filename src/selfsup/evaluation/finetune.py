"""Train a linear head (and optionally the encoder) with labels on augmented images.

One function, :func:`train_classifier`, serves three evaluation protocols of the papers:

* **linear-aug** (``freeze_encoder=True``): the paper-style linear probe. The encoder is frozen
  *and in eval mode* (BatchNorm running statistics), the training images are augmented with a
  random resized crop + horizontal flip only, and a linear classifier is trained with SGD +
  Nesterov momentum 0.9 and a cosine learning-rate schedule, without weight decay. BYOL (Grill et
  al. 2020, App. C.1) trains it for 80 epochs, SimCLR (Chen et al. 2020, App. B.6) for 90 and
  MoCo (He et al. 2020) for 100; the CPU defaults of :mod:`selfsup.evaluation.options` are a few
  epochs.
* **finetune** (``freeze_encoder=False``): the whole network (a *copy* of the encoder + the linear
  head) is trained with the same augmentation and optimiser -- the fine-tuning protocol of
  SimCLR (App. B.5: Nesterov momentum 0.9, lr 0.05 x batch/256, no weight decay, crop + flip
  only), also used for the semi-supervised tables (1% / 10% of the labels).
* **supervised**: ``finetune`` from a randomly initialised encoder with all labels.

The head is ``BatchNorm1d(affine=False)`` followed by ``Linear`` (the parameter-free BatchNorm of
MAE's linear probing, He et al. 2022): it only standardises the features, so the classifier is
still linear in them (at test time the running statistics fold into the linear layer), but SGD
then behaves the same whatever the scale of a backbone's features.

Test images are not augmented: the full image, resized to the training size (the small-image
analogue of the papers' centre crop). Every random draw (epoch order, crop and flip parameters)
comes from one CPU generator seeded with ``seed``, so a result is reproducible on one machine.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from selfsup.data.augment import augment, normalize, to_float
from selfsup.data.views import ViewSpec
from selfsup.evaluation.knn import topk_accuracy
from selfsup.models.modes import keep_modes
from selfsup.schedules import cosine

__all__ = ["ClassifierSettings", "ClassifierResult", "LinearHead", "crop_flip_spec", "train_classifier",
           "predict"]


@dataclass(frozen=True)
class ClassifierSettings:
    """Optimisation of a linear-aug / fine-tune / supervised run.

    ``lr`` is the peak learning rate for a batch of 256, scaled linearly with ``batch_size``
    (SimCLR's rule); the schedule is cosine from the peak to 0 over all steps, without warm-up.
    """

    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    seed: int = 0
    eval_batch_size: int = 512


@dataclass
class ClassifierResult:
    """Accuracies in [0, 1]; ``top5`` is None with 5 classes or fewer (as the linear probe)."""

    top1: float
    top5: float | None
    train_top1: float  # on the augmented training batches of the last epoch
    steps: int
    train_images: int
    seconds: float
    model: nn.Module | None = field(default=None, repr=False)  # encoder + head, eval mode, CPU


class LinearHead(nn.Module):
    """``BatchNorm1d(affine=False)`` + ``Linear``: a linear classifier on standardised features."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).flatten(1))


def crop_flip_spec(size: int, crop_scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5) -> ViewSpec:
    """The evaluation augmentation: random resized crop + horizontal flip, every colour op off."""
    return ViewSpec(size=size, crop_scale=tuple(crop_scale), flip_p=flip_p, jitter_p=0.0, grayscale_p=0.0,
                    blur_p=0.0, solarize_p=0.0)


def _feature_dim(encoder: nn.Module, channels: int, size: int, device: torch.device) -> int:
    """``encoder.feature_dim``, or the width of its output on a dummy batch (in eval mode)."""
    dim = getattr(encoder, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    with keep_modes(encoder), torch.no_grad():
        return int(encoder(torch.zeros(2, channels, size, size, device=device)).flatten(1).shape[1])


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
            batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits ``[N, classes]`` (CPU float32) of ``model`` in eval mode on un-augmented ``images``."""
    device = torch.device(device)
    with keep_modes(model):
        out = [model(normalize(to_float(images[i:i + batch_size].to(device), size), mean, std)).float().cpu()
               for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


@contextlib.contextmanager
def _keep_requires_grad(module: nn.Module) -> Iterator[None]:
    """Every parameter's ``requires_grad`` flag restored after the block, even after an exception."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_classifier(encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                     test_images: torch.Tensor, test_labels: torch.Tensor, *, size: int,
                     mean: Sequence[float], std: Sequence[float], settings: ClassifierSettings,
                     freeze_encoder: bool, num_classes: int | None = None,
                     device: torch.device | str = "cpu", keep_model: bool = False,
                     progress: bool = False, desc: str = "train",
                     test_features: torch.Tensor | None = None) -> ClassifierResult:
    """Train a linear head on ``encoder`` (frozen, or a fine-tuned copy) and test it.

    ``train_images``/``test_images`` are uint8 ``[N, C, H, W]``; training batches are augmented
    with :func:`crop_flip_spec` at ``size`` and normalised with ``mean``/``std`` (the run's).
    ``encoder`` itself is never modified: a frozen encoder keeps its weights and its train/eval
    flags are restored; fine-tuning trains a deep copy. The last batch of an epoch is dropped when
    incomplete (the batch is clamped to the training-set size, so there is at least one step).
    With a frozen encoder, ``test_features`` (its eval-mode features of ``test_images``, e.g. cached
    for kNN) replace the test forward pass.
    """
    _check_training_set(settings, train_images)
    device = torch.device(device)
    start_time = time.perf_counter()
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()) if len(test_labels) else 0)) + 1
    model = _build_classifier(encoder, freeze_encoder, train_images.shape[1], size, num_classes, device)
    with keep_modes(encoder, training=None), _keep_requires_grad(encoder):
        params = _trainable_parameters(model, freeze_encoder)
        steps, train_top1 = _train(model, params, train_images, train_labels.long(), size, mean, std, settings,
                                   freeze_encoder, device, progress, desc)
        if freeze_encoder and test_features is not None:
            scores = _head_scores(model.head, test_features, device)
        else:
            scores = predict(model, test_images, size, mean, std, settings.eval_batch_size, device)
    y_test = test_labels.long()
    result = ClassifierResult(
        top1=topk_accuracy(scores, y_test, 1),
        top5=topk_accuracy(scores, y_test, 5) if num_classes > 5 else None,
        train_top1=train_top1, steps=steps, train_images=train_images.shape[0],
        seconds=time.perf_counter() - start_time)
    if keep_model and not freeze_encoder:
        result.model = model.cpu().eval()
    return result


def _check_training_set(settings: ClassifierSettings, train_images: torch.Tensor) -> None:
    if settings.epochs < 1 or settings.batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2")
    if train_images.shape[0] < 2:
        raise ValueError("need at least 2 training images")


def _build_classifier(encoder: nn.Module, freeze_encoder: bool, channels: int, size: int, num_classes: int,
                      device: torch.device) -> _Classifier:
    """``encoder`` (frozen: itself; fine-tuned: a deep copy) on ``device`` + a new :class:`LinearHead`."""
    net = encoder if freeze_encoder else copy.deepcopy(encoder)
    net.to(device)
    head = LinearHead(_feature_dim(net, channels, size, device), num_classes).to(device)
    return _Classifier(net, head)


def _trainable_parameters(model: _Classifier, freeze_encoder: bool) -> list[nn.Parameter]:
    """Set the encoder's ``requires_grad`` (off when frozen) and return what the optimiser trains."""
    for p in model.encoder.parameters():
        p.requires_grad_(not freeze_encoder)
    return list(model.head.parameters()) if freeze_encoder else list(model.parameters())


def _train(model: _Classifier, params: list[nn.Parameter], images: torch.Tensor, labels: torch.Tensor, size: int,
           mean: Sequence[float], std: Sequence[float], s: ClassifierSettings, freeze_encoder: bool,
           device: torch.device, progress: bool, desc: str) -> tuple[int, float]:
    """SGD with a cosine lr from ``s.lr * batch / 256`` to 0 over every step; returns ``(steps,
    train top-1 of the last epoch)``. Epoch order and augmentation draw from one generator seeded
    with ``s.seed``."""
    n = images.shape[0]
    batch = min(s.batch_size, n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * s.epochs
    peak_lr = s.lr * batch / 256
    optimizer = torch.optim.SGD(params, lr=peak_lr, momentum=s.momentum, nesterov=s.nesterov,
                                weight_decay=s.weight_decay)
    spec = crop_flip_spec(size, s.crop_scale, s.flip_p)
    gen = torch.Generator().manual_seed(s.seed)
    step, correct, seen = 0, 0, 0
    with tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=not progress) as bar:
        for epoch in range(s.epochs):
            order = torch.randperm(n, generator=gen)
            correct, seen = 0, 0
            for i in range(steps_per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                x = normalize(augment(images[idx].to(device), spec, gen), mean, std)
                y = labels[idx].to(device)
                for group in optimizer.param_groups:
                    group["lr"] = cosine(step, total, peak_lr)
                logits, loss = _step(model, optimizer, x, y, freeze_encoder)
                step += 1
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                if progress:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    return step, correct / max(seen, 1)


def _step(model: _Classifier, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          freeze_encoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on cross-entropy; a frozen encoder runs in eval mode without gradients.
    Returns the (detached) logits and the loss."""
    if freeze_encoder:
        model.encoder.eval()
        model.head.train()
        with torch.no_grad():
            feats = model.encoder(x).flatten(1)
        logits = model.head(feats)
    else:
        model.train()
        logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss


@torch.no_grad()
def _head_scores(head: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (CPU float32) of the trained ``head`` in eval mode on precomputed encoder features."""
    head.eval()
    return head(features.to(device).float()).float().cpu()
