"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021).

    z = g(f(x)) for both views; standardise each dimension along the batch
    C_ij = sum_b z1n_bi z2n_bj / N                         (cross-correlation, Eq. 2)
    loss = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2                  (Eq. 1, Algorithm 1)

When the batch is split across processes, the embeddings are gathered (``gather_with_grad``)
and C is computed from the global batch of N rows: the standardisation uses the global mean and
variance and C is divided by the global N (the official code: SyncBatchNorm, then C / N summed
over processes) -- never by the local batch, nor averaged over processes.

Defaults (Sec. 2 and the official repo): projector of 3 linear layers of 8192 (BN + ReLU after the
first two), lambda 0.0051 (the paper's 5e-3; 0.0051 in the code), LARS lr 0.2 x batch/256 for
weights and 0.0048 x batch/256 for biases and BN parameters (``bias_lr_multiplier`` 0.024; these get
neither weight decay nor LARS adaptation), weight decay 1.5e-6, 10 warm-up epochs, cosine over 1000
epochs at batch 2048; BYOL's asymmetric views. Small-image recipe: a projector of 1024 and ten times
the paper's lr (LARS 2 x batch/256, biases still 0.024 of it), one warm-up epoch: at the paper's lr
the encoder barely moves in a run of a few hundred steps (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.comm import gather_with_grad
from selfsup.methods.base import Method, StepOutput, bias_lr_groups
from selfsup.methods.losses import barlow_twins_loss
from selfsup.models.heads import mlp


@dataclass
class BarlowTwinsConfig:
    """Paper defaults (Zbontar et al. 2021, Sec. 2 "Implementation details"; official repo)."""

    projector_hidden_dim: int = 8192
    projection_dim: int = 8192
    projector_layers: int = 3
    lambd: float = 0.0051
    bias_lr_multiplier: float = 0.024  # 0.0048 / 0.2
    head_norm: str = "batchnorm"


class BarlowTwins(Method):
    name = "barlow_twins"
    Config = BarlowTwinsConfig
    OPTIMIZER = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6, "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 1024, "projection_dim": 1024}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 2.0, "weight_decay": 1.5e-6, "warmup_epochs": 1}
    # The official code: torchvision's ResNet-50 with zero_init_residual=True.
    ZERO_INIT_RESIDUAL = True

    def __init__(self, encoder: nn.Module, config: BarlowTwinsConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim,
                             num_layers=c.projector_layers, norm=c.head_norm, last_bias=False)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        y1, y2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(y1), self.projector(y2)
        loss = barlow_twins_loss(gather_with_grad(z1), gather_with_grad(z2), self.config.lambd)
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics={"barlow_twins": loss.detach()})

    def param_groups(self) -> list[dict[str, Any]]:
        return bias_lr_groups(self, self.config.bias_lr_multiplier)
