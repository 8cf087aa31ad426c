"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021).

    z = f(x) (encoder + projector),  p = h(z) (predictor)
    D(p, z) = -(p/|p|) . (z/|z|)                                                  (Eq. 1)
    loss = D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2                  (Eq. 3, Algorithm 1)

No momentum encoder and no negatives: the stop-gradient alone prevents collapse (Sec. 4.1).

Defaults (Sec. 3, "Baseline settings"): projector 3 layers of 2048 with BN on every layer
(the output BN without affine, as in the official code), predictor 2048 -> 512 -> 2048 (BN only
in the hidden layer), SGD lr 0.05 x batch/256 (batch 512), momentum 0.9, weight decay 1e-4,
cosine, no warm-up, 100 epochs; MoCo v2's symmetric views. Deviations: the paper keeps the
predictor's lr fixed (no decay, Sec. 4.3 / Table 1 "fix lr"); the training loop scales every
group's lr by the schedule, so only a constant ``predictor_lr_multiplier`` is available here. The
generic optimiser exempts biases and norm parameters from weight decay (the paper decays all).

Small-image recipe: the paper's CIFAR setting (Appendix D: a 2-layer projector, weight decay 5e-4)
with narrower heads, SGD lr 0.3 x batch/256 and the predictor's lr ten times the rest: the stand-in
for the paper's fixed predictor lr that BYOL's no-target-network ablation uses (Grill et al. 2020,
Table 21: 66.6 top-1 at 10x against 5.5 at 1x). In short runs on Fashion-MNIST the predictor's lr
at 1x stayed below the random-init encoder's kNN, as did every other setting tried (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput, predictor_lr_groups
from selfsup.methods.losses import negative_cosine_loss
from selfsup.methods.simclr import contrastive_views
from selfsup.models.heads import mlp


@dataclass
class SimSiamConfig:
    """Paper defaults (Chen & He 2021, Sec. 3 and Appendix D)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 2048
    projector_layers: int = 3
    predictor_hidden_dim: int = 512
    predictor_lr_multiplier: float = 1.0
    jitter_strength: float = 0.5  # MoCo v2's colour jitter (0.4, 0.4, 0.4, 0.1)
    head_norm: str = "batchnorm"


class SimSiam(Method):
    name = "simsiam"
    Config = SimSiamConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 512, "projector_layers": 2,
                          "predictor_hidden_dim": 512, "predictor_lr_multiplier": 10.0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 5e-4, "warmup_epochs": 0}
    # The official code: torchvision's ResNet with zero_init_residual=True. Under the small-image
    # recipe torchvision's default init scored higher (CPU protocol, kNN and linear; BENCHMARKS.md).
    ZERO_INIT_RESIDUAL = True
    SMALL_IMAGE_ZERO_INIT_RESIDUAL = False

    def __init__(self, encoder: nn.Module, config: SimSiamConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, num_layers=c.projector_layers,
                             norm=c.head_norm, last_norm=c.head_norm == "batchnorm", last_bias=False)
        self.predictor = mlp(c.projection_dim, c.predictor_hidden_dim, c.projection_dim, norm=c.head_norm)

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        return contrastive_views(size, crop_scale, self.config.jitter_strength, blur_p=0.5)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        y1, y2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(y1), self.projector(y2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine_loss(p1, z2.detach()) / 2 + negative_cosine_loss(p2, z1.detach()) / 2
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics={"neg_cosine": loss.detach()})

    def param_groups(self) -> list[dict[str, Any]]:
        return predictor_lr_groups(self, self.predictor, self.config.predictor_lr_multiplier)
