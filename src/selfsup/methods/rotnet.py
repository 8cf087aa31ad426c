"""RotNet: predicting image rotations (Gidaris, Singh & Komodakis, ICLR 2018).

    x_k = rot(x, 90k degrees), k = 0, 1, 2, 3                       (Sec. 2.2: 0, 90, 180, 270)
    loss = -1/4 sum_k log softmax(W f(x_k))[k], batch mean          (Eq. 1-2)

Every image of the batch enters in its four rotations, so the network sees all four copies of an image in
the same batch (Sec. 2.2 and Table 2 of the paper: better than one random rotation per image; the switch
``all_rotations=False`` is that ablation). A rotation by a multiple of 90 degrees is a transpose and a
flip: no interpolation, so no low-level artefact gives the answer away (Sec. 2.2). The classifier is a
linear layer on the pooled backbone features (the paper's NIN and AlexNet heads end the network; on
ResNets the usual choice, Kolesnikov et al. 2019, is a linear layer); ``head_hidden_dim`` > 0 inserts an
MLP. The paper's finding (Table 1) is that an intermediate block's features are better for other tasks
than the last block's, which is specialised to rotations: the evaluation reads any ResNet stage through
``selfsup.models.encoder_at_stage`` (BENCHMARKS.md has the per-stage table).

Defaults (official code, ``config/ImageNet_RotNet_AlexNet.py``): SGD with momentum 0.9 (Nesterov),
lr 0.1 at batch 192 (x4 rotations; 0.13 x batch/256 here), weight decay 5e-4, no warm-up, the
training images' random resized crop and flip and no colour augmentation; the paper steps the lr down
by 10x at epochs 15, 30, 45 of 50 (the loop here uses a cosine schedule).
Small-image recipe (Fashion-MNIST, 28 px, CPU-sized; BENCHMARKS.md): SGD lr 1.0 x batch/256, weight decay
5e-4, crop scale (0.2, 1) as every small-image run. One epoch of 5,000 images (batch 64, ResNet-18 width
0.125) reaches a linear probe of 73.5% at lr 0.4 and 77.7% at lr 1.0 (random init: 70.4%): runs of a few
hundred steps want the larger rate. Rotations of a 28-px image are exact, so nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import pretext_accuracy, pretext_classification_loss
from selfsup.methods.patches import StepRandom
from selfsup.models.heads import mlp

NUM_ROTATIONS = 4


def rotate(images: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """``images`` [B, C, H, W] rotated by ``k`` x 90 degrees counter-clockwise (``k`` an int, or [B] per image)."""
    if isinstance(k, int):
        return torch.rot90(images, k % 4, dims=(2, 3))
    out = images.clone()
    for quarter in range(1, 4):
        rows = (k % 4 == quarter).nonzero().flatten().to(images.device)
        if len(rows):
            out[rows] = torch.rot90(images[rows], quarter, dims=(2, 3))
    return out


def all_rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch in its four rotations, ``[4B, C, H, W]`` (all images at 0 degrees, then at 90, 180, 270),
    and the labels ``[4B]`` (k for k x 90 degrees)."""
    b = images.shape[0]
    rotated = torch.cat([rotate(images, k) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(b)
    return rotated, labels


@dataclass
class RotNetConfig:
    """Paper defaults (Gidaris et al. 2018, Sec. 2.2; official configs)."""

    all_rotations: bool = True  # the four rotations of every image in the batch; False: one random rotation each
    head_hidden_dim: int = 0  # 0: a linear classifier on the pooled features; > 0: an MLP with this hidden width
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.head_hidden_dim < 0:
            raise ValueError(f"--head-hidden-dim: must be >= 0, got {self.head_hidden_dim}")


class RotNet(Method):
    name = "rotnet"
    Config = RotNetConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.13, "weight_decay": 5e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE: dict = {}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 5e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: RotNetConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.classifier = (nn.Linear(self.feature_dim, NUM_ROTATIONS) if c.head_hidden_dim == 0 else
                           mlp(self.feature_dim, c.head_hidden_dim, NUM_ROTATIONS, norm=c.head_norm))
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: random resized crop and flip, no colour augmentation (the official data loader)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        b = x.shape[0]
        if self.config.all_rotations:
            rotated, labels = all_rotations(x)
        else:
            labels = self.randomness.draw(b).integers(0, NUM_ROTATIONS).to(x.device)
            rotated = rotate(x, labels)
        features = self.encoder(rotated)
        logits = self.classifier(features)
        loss = pretext_classification_loss(logits, labels)
        # the online probe reads the upright copies (one random rotation per image: the rotated batch)
        probe = features[:b] if self.config.all_rotations else features
        return StepOutput(loss=loss, features=probe.detach(),
                          metrics={"rotation_accuracy": pretext_accuracy(logits.detach(), labels)})

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation logits ``[4B, 4]`` of the batch in its four rotations, and the true labels."""
        rotated, labels = all_rotations(images)
        return self.classifier(self.encoder(rotated)), labels

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        return [(f"rotated {90 * k} (label {k})", rotate(views[0], k)) for k in range(1, NUM_ROTATIONS)]
