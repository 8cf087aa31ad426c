"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML 2020).

    h = f(x),  z = g(h)                                 (encoder f, MLP projector g, Sec. 2.1)
    l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t)        (Eq. 1)
    loss = 1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]        (NT-Xent over the 2N views, Algorithm 1)

Across processes the negatives are the views of the global batch (``gather_with_grad``); each
process averages the loss over its own anchors, so the mean over processes is the global loss.

Defaults (Sec. 2.3, Sec. 5.1 / Table 5, Appendix A-B): LARS, lr 0.3 x batch/256, weight decay
1e-6, 10 warm-up epochs, cosine; temperature 0.1 (the best of Table 5 at batch 4096); 2-layer MLP
projector of hidden size 2048 (the ResNet-50 feature size) to 128. Symmetric views: crop, flip,
colour jitter of strength s (0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale 0.2, blur 0.5
(Appendix A). Small-image recipe: the CIFAR-10 recipe of Appendix B.9 and the official repo's
README (temperature 0.5, jitter strength 0.5, no blur, weight decay 1e-6), a narrower head, and
LARS lr 6.0 x batch/256, measured on digits (BENCHMARKS.md): with LARS' trust coefficient of 1e-3
the weights need a large lr to move within a short run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.comm import gather_with_grad, rank
from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import nt_xent_gathered_loss
from selfsup.models.heads import mlp


def contrastive_views(size: int, crop_scale: tuple[float, float], jitter_strength: float = 1.0,
                      blur_p: float = 0.5) -> list[ViewSpec]:
    """Two identically distributed views (SimCLR Appendix A; MoCo v2 / SimSiam use strength 0.5)."""
    s = jitter_strength
    view = ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.8, brightness=0.8 * s, contrast=0.8 * s,
                    saturation=0.8 * s, hue=0.2 * s, grayscale_p=0.2, blur_p=blur_p, solarize_p=0.0)
    return [view, view]


@dataclass
class SimCLRConfig:
    """Paper defaults (Chen et al. 2020, Sec. 2.3, Appendix A-B.1)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 128
    temperature: float = 0.1
    jitter_strength: float = 1.0
    head_norm: str = "batchnorm"  # BN in the hidden layer, as in the official code


class SimCLR(Method):
    name = "simclr"
    Config = SimCLRConfig
    OPTIMIZER = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 128, "temperature": 0.5,
                          "jitter_strength": 0.5}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 6.0, "weight_decay": 1e-6, "warmup_epochs": 1}
    # The official ResNet (TF, SimCLR v1 and v2) starts each block's last BN scale at zero.
    ZERO_INIT_RESIDUAL = True

    def __init__(self, encoder: nn.Module, config: SimCLRConfig) -> None:
        super().__init__(encoder, config)
        self.projector = mlp(self.feature_dim, config.projector_hidden_dim, config.projection_dim,
                             norm=config.head_norm)

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        return contrastive_views(size, crop_scale, self.config.jitter_strength, blur_p=0.5)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        y1, y2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(y1), self.projector(y2)
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent_gathered_loss(z1, z2, all1, all2, offset=rank() * z1.shape[0],
                                     temperature=self.config.temperature)
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics={"nt_xent": loss.detach()})
