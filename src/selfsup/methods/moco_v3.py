"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie & He, ICCV 2021).

MoCo without a queue: the keys are the momentum encoder's outputs for the other view of the same
batch (gathered from every process), and the query side gains a prediction head (Algorithm 1):

    q1, q2 = h(g(f(x1))), h(g(f(x2)))          (encoder f, projector g, predictor h)
    k1, k2 = g'(f'(x1)), g'(f'(x2))           (momentum copies f', g'; no gradient)
    ctr(q, k) = 2 t CrossEntropy(q k^T / t, labels = own key)     q, k L2-normalised (Eq. 1)
    loss = ctr(q1, k2) + ctr(q2, k1)
    after each step: theta' <- m theta' + (1 - m) theta, m cosine-scheduled from 0.99 to 1

**ViT recipe and its stability trick** (Sec. 4.2): the ViT's patch projection is a random linear map
that is never trained (``freeze_patch_projection``, on by default, applies to ViT backbones only:
the official ``--stop-grad-conv1``), initialised Xavier-uniform as the official ``vits.py``. The
paper's ViT-S/B recipe (``VIT_RECIPE``): projector 3 layers, predictor 2 layers, both ending in BN,
hidden 4096, output 256, temperature 0.2, AdamW lr 1.5e-4 x batch/256, weight decay 0.1, 40 warm-up
epochs, 300 epochs; e.g. ``selfsup train --method moco_v3 --backbone vit_small --temperature 0.2
--optimizer adamw --lr 1.5e-4 --weight-decay 0.1 --warmup-epochs 40``. The official ViTs also use
fixed 2-D sine-cosine position embeddings; selfsup's ViT keeps learned ones.

**ResNet recipe** (the defaults; official ``CONFIG.md``, ResNet-50, 100 epochs): projector 2 layers
ending in BN without affine, predictor 2 layers without it, hidden 4096, output 256, temperature 1.0,
momentum 0.99 (cosine to 1), LARS lr 0.6 x batch/256 (0.3 for 300-1000 epochs), weight decay 1e-6,
10 warm-up epochs, batch 4096, crops (0.2, 1), BYOL's asymmetric augmentations, SyncBN and every
residual block zero-initialised. LARS here also adapts the 1-D parameters (the official one skips
them); the heads' linear layers have no bias, as the official ones.

Small-image recipe (measured on Fashion-MNIST, BENCHMARKS.md): see ``SMALL_IMAGE_RECIPE`` and
``SMALL_IMAGE_OPTIMIZER``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.comm import gather_no_grad, rank
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import moco_v3_loss
from selfsup.methods.momentum import cosine_tau, ema_update, frozen_copy
from selfsup.models.heads import mlp
from selfsup.models.vit import ViTBackbone


@dataclass
class MoCoV3Config:
    """Paper defaults, ResNet-50 (Chen et al. 2021, Sec. 3 and Appendix; official ``main_moco.py``)."""

    projector_hidden_dim: int = 4096
    projection_dim: int = 256
    predictor_hidden_dim: int = 4096
    projector_layers: int = 0  # 0: the paper's, 2 for a ResNet, 3 for a ViT
    temperature: float = 1.0  # ResNet; the ViT recipe uses 0.2
    momentum: float = 0.99
    momentum_schedule: bool = True  # cosine increase of m to 1 (official --moco-m-cos, in every recipe)
    freeze_patch_projection: bool = True  # ViT backbones: a random patch projection that is never trained
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.projector_layers < 0:
            raise ValueError(f"--projector-layers: must be >= 0 (0: the paper's), got {self.projector_layers}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature: must be > 0, got {self.temperature}")


def freeze_patch_projection(vit: ViTBackbone) -> None:
    """MoCo v3's stability trick (Sec. 4.2): the patch projection re-initialised Xavier-uniform over its
    fan-in and fan-out (official ``vits.py``) and excluded from training."""
    proj = vit.conv_proj
    fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    bound = math.sqrt(6.0 / (fan_in + proj.out_channels))
    with torch.no_grad():
        proj.weight.uniform_(-bound, bound)
        proj.bias.zero_()
    proj.weight.requires_grad_(False)
    proj.bias.requires_grad_(False)


class MoCoV3(Method):
    name = "moco_v3"
    Config = MoCoV3Config
    OPTIMIZER = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6, "warmup_epochs": 10}
    # The paper's ViT-S/B settings (method options, then the optimiser's), for --backbone vit_*.
    VIT_RECIPE: dict[str, Any] = {"temperature": 0.2, "projector_layers": 3, "freeze_patch_projection": True}
    VIT_OPTIMIZER: dict[str, Any] = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1, "warmup_epochs": 40}
    SMALL_IMAGE_RECIPE: dict[str, Any] = {"projector_hidden_dim": 1024, "projection_dim": 128,
                                          "predictor_hidden_dim": 1024}
    SMALL_IMAGE_OPTIMIZER: dict[str, Any] = {}
    ZERO_INIT_RESIDUAL = True  # the official ResNets (torchvision's zero_init_residual=True)

    def __init__(self, encoder: nn.Module, config: MoCoV3Config) -> None:
        super().__init__(encoder, config)
        c = config
        vit = isinstance(encoder, ViTBackbone)
        if vit and c.freeze_patch_projection:
            freeze_patch_projection(encoder)
        layers = c.projector_layers or (3 if vit else 2)
        bn = c.head_norm != "none"
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, num_layers=layers,
                             norm=c.head_norm, last_norm=bn, last_bias=not bn)
        self.predictor = mlp(c.projection_dim, c.predictor_hidden_dim, c.projection_dim, norm=c.head_norm,
                             last_norm=bn and vit, last_bias=not bn)
        self.momentum_encoder = frozen_copy(encoder)
        self.momentum_projector = frozen_copy(self.projector)

    @torch.no_grad()
    def keys(self, view: torch.Tensor) -> torch.Tensor:
        """The momentum branch's projections of ``view`` for every process's rows (rank order)."""
        return gather_no_grad(self.momentum_projector(self.momentum_encoder(view)))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        v1, v2 = views[0], views[1]
        t, offset = self.config.temperature, rank() * v1.shape[0]
        y1 = self.encoder(v1)
        z1, z2 = self.projector(y1), self.projector(self.encoder(v2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        k1, k2 = self.keys(v1), self.keys(v2)
        loss = moco_v3_loss(q1, k2, t, offset) + moco_v3_loss(q2, k1, t, offset)
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics={"moco_v3_loss": loss.detach()})

    def momentum_at(self, step: int, total_steps: int) -> float:
        if self.config.momentum_schedule:
            return cosine_tau(step, total_steps, self.config.momentum)
        return self.config.momentum

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        m = self.momentum_at(step, total_steps)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
        return {"momentum": m}
