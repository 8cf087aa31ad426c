"""Exemplar-CNN: every training image its own class (Dosovitskiy, Springenberg, Riedmiller & Brox, NIPS 2014;
TPAMI 2016).

    x_i^v = T_v(x_i), T_v a random composition of strong transformations                  (Sec. 2.1)
    loss = -1/(B V) sum_i sum_v log softmax(W g(f(x_i^v)))[i]       (Eq. 2: N-way softmax, class i = image i)

Each image of the training set is a "surrogate class" and the network learns to name it under
translation, scaling, rotation and colour changes: features invariant to those transformations and
still discriminative between images. The paper's transformations (Sec. 2.1): translation within 0.2 of
the patch, scaling by 0.7-1.4, rotation up to 20 degrees, contrast and saturation/value powers and
factors, a hue shift within 0.1. Here: the random resized crop (translation and scale), the colour
jitter (contrast, saturation, brightness, hue 0.1) and a rotation by an angle uniform in
[-rotation_degrees, rotation_degrees] that the method applies to each view (bilinear, reflected
border). Each image enters the step in ``num_views`` transformed copies.

**The classifier has one output per training image**, so the method must know N before its first
step: the optimiser, DDP and a resumed checkpoint all need the parameters at construction. The option
``num_instances`` holds N; its default 0 means "the run's number of training images", which ``selfsup
train`` writes in (``selfsup.runs.build.with_train_size``) before the method is built, so ``config.yaml``
records the real N and a run folder rebuilds the same classifier for evaluation and export. A lazily
sized head, created at the first ``on_batch_start``, would miss the optimiser and a checkpoint's state.
The class of a row is its dataset index, which the loop hands to ``on_batch_start(indices)``. With
num_instances 0 (e.g. ``selfsup preview``) there is no classifier and no training step. For large N the
softmax over every image is the memory-bank route's (InstDisc) problem; this is the paper's parametric
classifier.

Defaults (paper Sec. 3): N = 8000 surrogate classes of 32-px patches in the NIPS paper (16000 and 32000
in the TPAMI paper); a fully connected layer of 512 units before the N-way softmax; SGD with momentum
0.9, lr 0.01; the transformations above.
Small-image recipe (Fashion-MNIST 28 px, CPU-sized; BENCHMARKS.md): the same head and transformations,
two views per image, SGD lr 1.0 x batch/256, weight decay 5e-4 (one epoch of 5,000 images, batch 64,
ResNet-18 width 0.25: linear probe 72.0% at lr 0.4, 76.2% at lr 1.0; random init 70.5%). Each image is
one class among N and is seen once per epoch, so a short run barely learns the instance task itself; the
encoder still gains from the transformations it must see through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import pretext_accuracy, pretext_classification_loss
from selfsup.methods.patches import StepRandom
from selfsup.models.heads import mlp


@dataclass
class ExemplarConfig:
    """Paper defaults (Dosovitskiy et al. 2014, Sec. 2-3)."""

    num_instances: int = 0  # N, the classifier's outputs; 0: the run's number of training images
    num_views: int = 2
    rotation_degrees: float = 20.0
    hidden_dim: int = 512  # the fully connected layer before the softmax; 0: a linear classifier
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.num_instances < 0:
            raise ValueError(f"--num-instances: must be >= 0 (0: the training-set size), got {self.num_instances}")
        if self.num_views < 1:
            raise ValueError(f"--num-views: must be at least 1, got {self.num_views}")
        if self.hidden_dim < 0:
            raise ValueError(f"--hidden-dim: must be >= 0, got {self.hidden_dim}")


def rotate_by(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """``images`` [B, C, H, W] rotated about their centre by ``degrees`` [B] (bilinear, the border reflected)."""
    theta = degrees.to(images) * (math.pi / 180)
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    # grid_sample maps output coordinates to input ones: the inverse rotation
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Exemplar(Method):
    name = "exemplar"
    Config = ExemplarConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE: dict = {}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 5e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: ExemplarConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.classifier: nn.Module | None = None
        if c.num_instances:
            self.classifier = (nn.Linear(self.feature_dim, c.num_instances) if c.hidden_dim == 0 else
                               mlp(self.feature_dim, c.hidden_dim, c.num_instances, norm=c.head_norm))
        self.randomness = StepRandom()
        self._indices: torch.Tensor | None = None

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """``num_views`` strong views: crop (translation, scale) and colour jitter always applied."""
        view = ViewSpec(size=size, crop_scale=crop_scale, flip_p=0.0, jitter_p=1.0, brightness=0.4, contrast=0.4,
                        saturation=0.4, hue=0.1, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return [view] * self.config.num_views

    def on_batch_start(self, indices: torch.Tensor) -> None:
        self._indices = indices

    def transform(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each view rotated by its own random angle per image (the rest of the transformations is the views')."""
        limit = self.config.rotation_degrees
        if limit == 0:
            return views
        angles = (self.randomness.draw(views[0].shape[0]).uniform(len(views)) * 2 - 1) * limit
        return [rotate_by(v, angles[:, i]) for i, v in enumerate(views)]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        if self.classifier is None:
            raise RuntimeError("exemplar: num_instances is 0, so there is no classifier; `selfsup train` sets it to "
                               "the number of training images, or pass --num-instances N")
        if self._indices is None or len(self._indices) != views[0].shape[0]:
            raise RuntimeError("exemplar: each image's class is its dataset index; call on_batch_start(indices) "
                               "with the batch's indices before the step")
        targets = self._indices.to(views[0].device)
        if int(targets.max()) >= self.config.num_instances:
            raise ValueError(f"exemplar: dataset index {int(targets.max())} but only {self.config.num_instances} "
                             "classes (--num-instances)")
        views = self.transform(views)
        features = self.encoder(torch.cat(views))
        logits = self.classifier(features)
        labels = targets.repeat(len(views))
        loss = pretext_classification_loss(logits, labels)
        b = views[0].shape[0]
        embeddings = (features[:b].detach(), features[b:2 * b].detach()) if len(views) > 1 else None
        return StepOutput(loss=loss, embeddings=embeddings, features=features[:b].detach(),
                          metrics={"instance_accuracy": pretext_accuracy(logits.detach(), labels)})

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The views after the method's rotation: the samples of each image's surrogate class."""
        limit = self.config.rotation_degrees
        angles = torch.linspace(-limit, limit, len(views) + 2)[1:-1] if len(views) > 1 else torch.tensor([limit])
        return [(f"view {i + 1} rotated {a:.0f} deg", rotate_by(v, torch.full((v.shape[0],), float(a))).clamp(0, 1))
                for i, (v, a) in enumerate(zip(views, angles.tolist()))]
