"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

    z = h(f(x)) for both views (encoder f, expander h)
    s = MSE(z1, z2)                                                      (invariance, Eq. 5)
    v = mean_j relu(1 - sqrt(Var(z_j) + eps)), eps = 1e-4, per branch    (variance, Eqs. 1-2)
    c = sum_{i != j} Cov(z)_ij^2 / d, per branch                         (covariance, Eqs. 3-4)
    loss = lambda s + mu [v(z1) + v(z2)] + nu [c(z1) + c(z2)]            (Eq. 6, Algorithm 1)

As in the official code the variance term is averaged (not summed) over the two branches.
Across processes the embeddings are gathered (``gather_with_grad``) so variance and covariance
are those of the global batch.

Defaults (Sec. 4.1 and the official repo): lambda = mu = 25, nu = 1; expander of 3 linear layers of
8192 (BN + ReLU after the first two); LARS lr 0.2 x batch/256 (``--base-lr 0.2``), weight decay
1e-6, 10 warm-up epochs, cosine over 1000 epochs at batch 2048; BYOL's asymmetric views (the
official code gives biases and norm parameters the same lr, without LARS adaptation:
``bias_lr_multiplier`` 1). Small-image recipe, measured on digits (BENCHMARKS.md): an expander of
1024, LARS lr 10 x batch/256 for the weights and 0.05 of it for biases and norm parameters, weight
decay 1e-4. CIFAR recipes such as solo-learn's use a LARS trust coefficient of 0.02; with this LARS'
1e-3 the weights need a ~20x larger lr to move within a short run, which the unadapted biases and
norm parameters must not get.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.comm import gather_with_grad
from selfsup.methods.base import Method, StepOutput, bias_lr_groups
from selfsup.methods.losses import vicreg_loss
from selfsup.models.heads import mlp


@dataclass
class VICRegConfig:
    """Paper defaults (Bardes et al. 2022, Sec. 4.1 and Appendix C)."""

    expander_hidden_dim: int = 8192
    embedding_dim: int = 8192
    expander_layers: int = 3
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    variance_eps: float = 1e-4
    bias_lr_multiplier: float = 1.0  # lr of biases and norm parameters (no LARS adaptation) / lr of weights
    head_norm: str = "batchnorm"


class VICReg(Method):
    name = "vicreg"
    Config = VICRegConfig
    OPTIMIZER = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1e-6, "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE = {"expander_hidden_dim": 1024, "embedding_dim": 1024, "bias_lr_multiplier": 0.05}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 10.0, "weight_decay": 1e-4, "warmup_epochs": 1}
    # The official code builds its ResNet with zero_init_residual=True.
    ZERO_INIT_RESIDUAL = True

    def __init__(self, encoder: nn.Module, config: VICRegConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.expander = mlp(self.feature_dim, c.expander_hidden_dim, c.embedding_dim,
                            num_layers=c.expander_layers, norm=c.head_norm, last_bias=False)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        y1, y2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.expander(y1), self.expander(y2)
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        loss = vicreg_loss(gather_with_grad(z1), gather_with_grad(z2), c.invariance_weight, c.variance_weight,
                           c.covariance_weight, c.variance_eps, terms=terms)
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(), metrics=terms)

    def param_groups(self) -> list[dict[str, Any]]:
        return bias_lr_groups(self, self.config.bias_lr_multiplier)
