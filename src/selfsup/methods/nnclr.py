"""NNCLR: Nearest-Neighbor Contrastive Learning of Visual Representations (Dwibedi et al., ICCV 2021).

    z = g(f(x)) (projections),  p = h(z) (predictions)
    NN(z, Q) = argmax_{q in Q} cos(z, q)                 (nearest neighbour in the support set Q)
    L(nn, p) = -1/n sum_i log exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t)    (Eq. 2)
    loss = L(NN(z1, Q), p2)/2 + L(NN(z2, Q), p1)/2                               (Algorithm 1)
    after the loss: enqueue z1 in Q (FIFO)

The neighbour carries no gradient (the support set is detached). Across processes the
predictions of the whole batch are gathered (``gather_with_grad``) as negatives and the support
set is filled from every process. Before anything is enqueued (the first step) the projection
itself stands in for its neighbour; afterwards only rows written so far are searched.

Defaults (Sec. 4, "Implementation details"): projector 3 layers [2048, 2048, 256] with BN after
every layer (the last without affine parameters here) and ReLU after all but the last, predictor
[4096, 256] (BN + ReLU in the hidden layer), support set 98,304, temperature 0.1, LARS lr 0.3 x
batch/256 (SimCLR's rule), weight decay 1e-6, 10 warm-up epochs, cosine; BYOL's asymmetric
views. Small-image recipe, measured on digits (BENCHMARKS.md): narrower heads, a support set of
512 (four batches: a set of 1024 scored lower in every setting tried) and LARS lr 2 x batch/256
(with LARS' trust coefficient of 1e-3 a short run needs a large lr).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import gather_with_grad, rank
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import nnclr_loss
from selfsup.methods.queue import FeatureQueue
from selfsup.models.heads import mlp


@dataclass
class NNCLRConfig:
    """Paper defaults (Dwibedi et al. 2021, Sec. 4)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 256
    predictor_hidden_dim: int = 4096
    queue_size: int = 98304
    temperature: float = 0.1
    head_norm: str = "batchnorm"


class NNCLR(Method):
    name = "nnclr"
    Config = NNCLRConfig
    OPTIMIZER = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 128, "predictor_hidden_dim": 512,
                          "queue_size": 512}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 2.0, "weight_decay": 1e-6, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: NNCLRConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, num_layers=3,
                             norm=c.head_norm, last_norm=c.head_norm == "batchnorm", last_bias=False)
        self.predictor = mlp(c.projection_dim, c.predictor_hidden_dim, c.projection_dim, norm=c.head_norm)
        self.support = FeatureQueue(c.queue_size, c.projection_dim, init="zeros")

    @torch.no_grad()
    def nearest_neighbour(self, z: torch.Tensor) -> torch.Tensor:
        """The support-set row of highest cosine similarity to each row of ``z`` (``z`` itself while empty)."""
        z = F.normalize(z.detach(), dim=-1)
        support = self.support.items.to(z.dtype)
        sims = (z @ support.T).masked_fill(~self.support.valid_mask(), float("-inf"))
        nn_z = support[sims.argmax(dim=1)]
        return torch.where(self.support.filled > 0, nn_z, z)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        y1, y2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(y1), self.projector(y2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        nn1, nn2 = self.nearest_neighbour(z1), self.nearest_neighbour(z2)
        all_p1, all_p2 = gather_with_grad(p1), gather_with_grad(p2)
        offset, t = rank() * z1.shape[0], self.config.temperature
        loss = nnclr_loss(nn1, all_p2, t, offset) / 2 + nnclr_loss(nn2, all_p1, t, offset) / 2
        self.support.push(F.normalize(z1.detach(), dim=-1))
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics={"nnclr": loss.detach()})
