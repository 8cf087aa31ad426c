"""SwAV: Swapping Assignments between multiple Views (Caron et al., NeurIPS 2020).

    z_v = g(f(x_v)) / |g(f(x_v))|             for every crop v (2 global + V local)
    scores_v = C^T z_v                         C: K prototypes, L2-normalised after each step
    q_i = Sinkhorn-Knopp(scores_i)             codes of the 2 global crops only, no gradient (Sec. 3.1)
    loss = 1/2 sum_{i in globals} 1/(V+1) sum_{v != i} -sum_k q_i,k log softmax(scores_v / t)_k  (Eq. 1-3)

Sinkhorn-Knopp: 3 iterations, epsilon 0.05, its sums reduced across processes (``sinkhorn.py``).
The prototypes get no gradient during the first epoch (``freeze_prototypes_epochs``; the official
code's ``freeze_prototypes_niters``, 313 iterations = 1 epoch at batch 4096) and are L2-normalised
after every optimiser step. With small batches a FIFO queue of past global-crop embeddings
(``queue_size``, one queue per global crop, started at ``queue_start_epoch``) is scored by the current
prototypes and joins the Sinkhorn problem, so that the equipartition constraint is spread over more
samples than K (Sec. 4.1, "small batches"); as in the official code it is used once it is full.

Defaults (paper, Sec. 4 and Appendix A, official ``swav_800ep_pretrain.sh``): projector 2048 -> 128
with BN, 3000 prototypes, temperature 0.1, multi-crop 2 x 224 (0.14, 1) + 6 x 96 (0.05, 0.14),
no queue at batch 4096 (3840 rows from epoch 15 at batch 256), LARS, lr 4.8 at batch 4096
(0.3 x batch / 256) with cosine decay, weight decay 1e-6, 10 warm-up epochs, 800 epochs. Views: colour
distortion of strength 1 (jitter 0.8, 0.8, 0.8, 0.2 with p 0.8, grayscale 0.2) and blur p 0.5 on
every crop, no solarisation. Small-image recipe (measured on digits, BENCHMARKS.md): SGD 0.1 x
batch/256, 30 prototypes (few for a dataset of 1.4k images), epsilon 0.03 (sharper codes), crops
(0.8, 1), no local crops: with LARS and 100 prototypes the codes collapsed to uniform, and local
crops of a few pixels hurt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import rank, world_size
from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import swav_loss
from selfsup.methods.multicrop import SMALL_IMAGE_CROPS, MultiCropConfig, check_global_crops, crop_views, project_crops
from selfsup.methods.queue import FeatureQueue
from selfsup.methods.sinkhorn import sinkhorn_knopp
from selfsup.models.heads import mlp

# SwAV's colour distortion (strength 1) and blur, the same for every crop (official multicropdataset.py).
SWAV_VIEW = ViewSpec(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_p=0.8, grayscale_p=0.2,
                     blur_p=0.5, solarize_p=0.0)


def swav_crop_views(config: MultiCropConfig, size: int) -> list[ViewSpec]:
    """2 global + ``num_local_crops`` local crops, each with SwAV's colour distortion and blur; their
    scales come from ``config`` (SwAV and DeepCluster-v2)."""
    return crop_views(config, size, [SWAV_VIEW, SWAV_VIEW], SWAV_VIEW)


def _this_process_share(x: torch.Tensor) -> torch.Tensor:
    """This process's chunk of rows of ``x`` (all of ``x`` on one process)."""
    return x.chunk(world_size())[rank()] if world_size() > 1 else x


@dataclass
class SwAVConfig(MultiCropConfig):
    """Paper defaults (Caron et al. 2020, Sec. 4, Appendix A; official scripts)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: float = 1.0
    queue_size: int = 0  # 0: no queue (batch 4096); the paper's small-batch runs use 3840
    queue_start_epoch: int = 15
    head_norm: str = "batchnorm"


class SwAV(Method):
    name = "swav"
    Config = SwAVConfig
    OPTIMIZER = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}
    # Measured on digits (8 px, ResNet-18 x0.125, batch 128, 10 epochs; module docstring): SGD, few
    # prototypes for 1.4k images, sharper codes, large crops, no local crops.
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 64, "num_prototypes": 30, "epsilon": 0.03,
                          **SMALL_IMAGE_CROPS, "global_crop_scale_min": 0.8, "queue_size": 0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: SwAVConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, norm=c.head_norm)
        self.prototypes = nn.Linear(c.projection_dim, c.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.queues = nn.ModuleList(FeatureQueue(c.queue_size, c.projection_dim, init="zeros")
                                    for _ in range(2)) if c.queue_size > 0 else None
        self.epoch, self.steps_per_epoch = 0, 1

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """2 global + ``num_local_crops`` local crops; their scales come from this method's options."""
        return swav_crop_views(self.config, size)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def queue_active(self) -> bool:
        return self.queues is not None and self.epoch >= self.config.queue_start_epoch

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, crop: int) -> torch.Tensor:
        """Sinkhorn codes of one global crop's ``[B, K]`` scores, with the queue when it is in use."""
        c = self.config
        if not self.queue_active():
            return sinkhorn_knopp(scores, c.epsilon, c.sinkhorn_iterations)
        queue = self.queues[crop]
        # Every process holds the same (gathered) queue; each scores its share of the rows, so the
        # Sinkhorn sums reduced over processes count every queued row once.
        rows, valid = _this_process_share(queue.items), _this_process_share(queue.valid_mask())
        in_use = valid & (queue.filled == queue.size)  # the official code waits for a full queue
        queued = rows.to(scores.dtype) @ self.prototypes.weight.to(scores.dtype).T
        weights = torch.cat([in_use.to(scores.dtype), scores.new_ones(scores.shape[0])])
        return sinkhorn_knopp(torch.cat([queued, scores]), c.epsilon, c.sinkhorn_iterations, weights)[-scores.shape[0]:]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        check_global_crops(self.name, views)
        c = self.config
        features, z = project_crops(self.encoder, self.projector, views)
        scores = list(self.prototypes(z).split([v.shape[0] for v in views]))
        embeddings = z.split([v.shape[0] for v in views])
        codes = [self.codes(scores[i].detach(), i) for i in range(2)]
        loss = swav_loss(scores, codes, c.temperature)
        if self.queue_active():
            for i in range(2):
                self.queues[i].push(embeddings[i].detach())
        b = views[0].shape[0]
        return StepOutput(loss=loss, embeddings=(embeddings[0].detach(), embeddings[1].detach()),
                          features=features[:b].detach(), metrics={"swav_loss": loss.detach()})

    def on_epoch_start(self, epoch: int, steps_per_epoch: int) -> None:
        self.epoch, self.steps_per_epoch = epoch, steps_per_epoch

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        if step < self.config.freeze_prototypes_epochs * self.steps_per_epoch:
            self.prototypes.weight.grad = None  # the optimiser skips parameters without a gradient

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        self.normalize_prototypes()
        return {}
