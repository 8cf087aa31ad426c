"""MoCo v2: Improved Baselines with Momentum Contrastive Learning (Chen, Fan, Girshick & He, arXiv 2020).

MoCo (He et al., CVPR 2020), Algorithm 1, with v2's MLP head, blur augmentation and cosine lr:

    q = g(f(x_q)),  k = g'(f'(x_k))  (no gradient)      (query encoder f + head g, key copies f', g')
    loss = -log exp(q.k/t) / (exp(q.k/t) + sum_{n in queue} exp(q.n/t))          (InfoNCE, Eq. 1)
    after each step: theta_k <- m theta_k + (1 - m) theta_q                       (Eq. 2)
    enqueue the keys of this step (from every process), dequeue the oldest

The keys are enqueued after the loss of the step is computed against the queue as it was
(the loss uses a copy of it). ``symmetric=True`` adds the swapped term loss(q2, k1) and enqueues
both key batches (the symmetrised MoCo of SimSiam's Table 4 and of the official CIFAR demo).
Shuffle BN (MoCo Sec. 3.3) exists to stop BN from leaking which key is the positive: the query
and its key must not share batch statistics. Here the query encoder normalises over the whole
(per-process) batch and the key encoder over groups of ``key_bn_rows`` rows (32, the per-GPU batch
of the paper's 8-GPU runs), so each key's statistics differ from its query's.
The head of v2 has no BN.

Defaults (v2, Sec. 2-3 and the official repo): queue 65,536, temperature 0.2, key momentum 0.999
(fixed), MLP head 2048 -> 128 without BN, SGD lr 0.03 x batch/256, weight decay 1e-4, momentum
0.9, cosine, no warm-up, 200 epochs; symmetric views with colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
grayscale 0.2, blur p 0.5. Small-image recipe: the official CIFAR demo's queue 4096, key momentum
0.99, symmetric loss and temperature 0.1, keys normalised in groups of 32 (the demo splits BN 8
ways), BN in the head's hidden layer (without it the projections collapse to one direction), and
SimCLR's small-image optimiser, LARS lr 6 x batch/256, weight decay 1e-6, one warm-up epoch (MoCo
v3 also moved its ResNets to LARS): in runs of a few hundred steps on Fashion-MNIST the demo's SGD
did not beat the random-init encoder on every seed, LARS did (BENCHMARKS.md). On 8-px digits this
recipe collapses; SGD lr 0.3 with temperature 0.2 and keys over the whole batch learns there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import infonce_queue_loss
from selfsup.methods.momentum import cosine_tau, ema_update, frozen_copy
from selfsup.methods.queue import FeatureQueue
from selfsup.methods.simclr import contrastive_views
from selfsup.models.heads import mlp


@dataclass
class MoCoConfig:
    """Paper defaults (Chen et al. 2020, "Improved Baselines...", Sec. 2-3; He et al. 2020, Sec. 3-4)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 128
    queue_size: int = 65536
    temperature: float = 0.2
    key_momentum: float = 0.999
    key_momentum_schedule: bool = False  # True: cosine increase of m to 1 (as BYOL's tau)
    symmetric: bool = False
    jitter_strength: float = 0.5  # colour jitter (0.4, 0.4, 0.4, 0.1)
    head_norm: str = "none"
    key_bn_rows: int = 32  # the key encoder's BN groups (Shuffle BN's per-GPU batch); 0: the whole batch


class MoCo(Method):
    name = "moco"
    Config = MoCoConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 128, "queue_size": 4096,
                          "key_momentum": 0.99, "symmetric": True, "head_norm": "batchnorm", "temperature": 0.1}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 6.0, "weight_decay": 1e-6, "warmup_epochs": 1}
    # MoCo v1/v2 normalise per GPU, so on several processes BN stays per process (the key groups of
    # key_bn_rows are then taken within each process); --sync-bn makes an N-process run compute
    # exactly what one process computes on the global batch.
    sync_batchnorm = False

    def __init__(self, encoder: nn.Module, config: MoCoConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, norm=c.head_norm)
        self.key_encoder = frozen_copy(encoder)
        self.key_projector = frozen_copy(self.projector)
        self.queue = FeatureQueue(c.queue_size, c.projection_dim, init="random")

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        return contrastive_views(size, crop_scale, self.config.jitter_strength, blur_p=0.5)

    @torch.no_grad()
    def keys(self, view: torch.Tensor) -> torch.Tensor:
        """Normalised keys; BN statistics over groups of about ``key_bn_rows`` rows (Shuffle BN's role)."""
        groups = max(1, view.shape[0] // self.config.key_bn_rows) if self.config.key_bn_rows else 1
        keys = [self.key_projector(self.key_encoder(group)) for group in view.tensor_split(groups)]
        return F.normalize(torch.cat(keys), dim=-1)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        v1, v2 = views[0], views[1]
        t = self.config.temperature
        queue = self.queue.items.clone()  # the queue before this step's keys
        y1 = self.encoder(v1)
        q1, k2 = self.projector(y1), self.keys(v2)
        loss = infonce_queue_loss(q1, k2, queue, t)
        new_keys, second = [k2], k2
        if self.config.symmetric:
            q2, k1 = self.projector(self.encoder(v2)), self.keys(v1)
            loss = loss + infonce_queue_loss(q2, k1, queue, t)
            new_keys, second = [k2, k1], q2
        for keys in new_keys:  # one push per key batch: [k2 of every process, k1 of every process], as on one
            self.queue.push(keys)
        return StepOutput(loss=loss, embeddings=(q1.detach(), second.detach()), features=y1.detach(),
                          metrics={"infonce": loss.detach()})

    def momentum_at(self, step: int, total_steps: int) -> float:
        if self.config.key_momentum_schedule:
            return cosine_tau(step, total_steps, self.config.key_momentum)
        return self.config.key_momentum

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        m = self.momentum_at(step, total_steps)
        ema_update(self.key_encoder, self.encoder, m)
        ema_update(self.key_projector, self.projector, m)
        return {"key_momentum": m}
