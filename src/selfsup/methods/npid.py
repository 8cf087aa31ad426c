"""NPID: Unsupervised Feature Learning via Non-Parametric Instance Discrimination (Wu, Xiong, Yu & Lin,
CVPR 2018).

Every image is its own class; a memory bank keeps one unit vector m_i per training image instead of
a classifier weight per class:

    v = g(f(x)) / |g(f(x))|                 one augmented view per image, a linear layer g to 128-d
    P(i | v) = exp(m_i . v / t) / sum_j exp(m_j . v / t)         non-parametric softmax (Sec. 3.1, Eq. 2)
    loss = -log P(i | v_i)                                        ``loss="softmax"``: exact over the bank
         or NCE with K noise rows drawn uniformly (Sec. 3.2):     ``loss="nce"``
             h(j, v) = P(j | v) / (P(j | v) + K / N),   P(j | v) = exp(m_j . v / t) / Z
             loss = -log h(i, v_i) - sum_k log(1 - h(j_k, v_i)),  Z = N mean exp(m . v / t) on the first batch
    after each step: m_i <- (mu m_i + (1 - mu) v_i) / |...|, mu = 0.5

The loss of a step reads the bank as it was before the step (the official code writes the new rows
in the backward pass); the bank is written in ``on_step_end``. The paper's proximal term (Sec. 3.3)
is, in the official code, this momentum update of the stored entry. Evaluation: the paper's weighted
kNN (Sec. 3.4, k = 200) is ``selfsup eval --protocol knn`` (on the backbone features, temperature
0.1; the paper uses the 128-d embeddings and 0.07). The bank, its DDP handling and the NCE normaliser
are in ``methods/memory_bank.py``; the losses in ``methods/losses/memory.py``.

Defaults (paper and the official ImageNet code, ``main.py``): 128-d embedding after one linear layer,
temperature 0.07, memory momentum 0.5, NCE with 4096 noise samples (``--nce-k``; 0 selects the exact
softmax, the CIFAR setting), SGD lr 0.03 x batch/256, momentum 0.9, weight decay 1e-4, batch 256,
200 epochs, one view: RandomResizedCrop (0.2, 1), grayscale 0.2, colour jitter (0.4, 0.4, 0.4, 0.4),
flip. The lr is stepped x0.1 at epochs 120 and 160 there; the loop's schedule is cosine.

**NPID++** (Misra & van der Maaten 2020, Sec. 4; VISSL's ``npid++_4nodes_resnet.yaml``): the same
method with 32,000 noise samples, 800 epochs and a cosine lr (0.12 at batch 1024, i.e. 0.03 x
batch/256): ``NPID_PLUS_PLUS``, e.g. ``selfsup train --method npid --num-negatives 32000 --epochs 800``.

Small-image recipe (images <= 64 px; measured on Fashion-MNIST, BENCHMARKS.md): the exact softmax (a
bank of 10k-60k rows costs less than a backbone layer), temperature 0.1 (the official CIFAR script's),
a 2-layer MLP head (512 hidden, BN) instead of the linear one (as VISSL's ``mlphead`` variants and
MoCo v2 / SimCLR's finding: +6 to +11 linear-probe points after 120 steps here), SGD lr 0.3 x batch/256 with
one warm-up epoch, and zero-initialised residual blocks. Runs of a few hundred steps are short for a
memory bank: a row is random until its image's first visit and moves halfway per visit, so the first
epoch trains against random positives (the warm-up keeps that epoch's steps small).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.memory_bank import MEMORY_LOSSES, MemoryBank, memory_bank_loss
from selfsup.models.heads import mlp


@dataclass
class NPIDConfig:
    """Paper defaults (Wu et al. 2018, Sec. 3-4; official ``main.py`` for ImageNet)."""

    embedding_dim: int = 128
    head_hidden_dim: int = 0  # 0: the paper's single linear layer; > 0: Linear-BN-ReLU-Linear
    head_norm: str = "batchnorm"  # the hidden layer's norm when head_hidden_dim > 0
    temperature: float = 0.07
    memory_momentum: float = 0.5
    loss: str = "nce"  # "nce" (K noise samples, the ImageNet setting) | "softmax" (exact, the CIFAR setting)
    num_negatives: int = 4096  # K of NCE

    def __post_init__(self) -> None:
        if self.loss not in MEMORY_LOSSES:
            raise ValueError(f"--loss: must be one of {', '.join(MEMORY_LOSSES)}, got {self.loss!r}")
        if self.num_negatives < 1:
            raise ValueError(f"--num-negatives: must be >= 1, got {self.num_negatives}")
        if not 0 <= self.memory_momentum <= 1:
            raise ValueError(f"--memory-momentum: must be in [0, 1], got {self.memory_momentum}")


# NPID++ (the PIRL paper's stronger NPID): method options and the training schedule (VISSL's config).
NPID_PLUS_PLUS: dict[str, Any] = {"loss": "nce", "num_negatives": 32000, "epochs": 800, "optimizer": "sgd",
                                  "lr": 0.03, "weight_decay": 1e-4}


def npid_views(size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
    """NPID's single view (official ``main.py``): crop, grayscale 0.2, colour jitter 0.4 always, flip."""
    return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4,
                     hue=0.4, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)]


def embedding_head(in_dim: int, hidden_dim: int, out_dim: int, norm: str) -> nn.Sequential:
    """A linear layer (``hidden_dim = 0``: NPID's and PIRL's) or a 2-layer MLP with a normalised hidden layer."""
    if hidden_dim <= 0:
        return mlp(in_dim, in_dim, out_dim, num_layers=1)
    return mlp(in_dim, hidden_dim, out_dim, norm=norm)


class NPID(Method):
    name = "npid"
    Config = NPIDConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE: dict[str, Any] = {"loss": "softmax", "temperature": 0.1, "head_hidden_dim": 512}
    SMALL_IMAGE_OPTIMIZER: dict[str, Any] = {"lr": 0.3, "warmup_epochs": 1}
    SMALL_IMAGE_ZERO_INIT_RESIDUAL = True
    # The official code trains per-GPU BN (a plain DataParallel / DDP model); here SyncBN keeps the
    # N-process run equal to the one-process run, as for the other methods.

    def __init__(self, encoder: nn.Module, config: NPIDConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.head = embedding_head(self.feature_dim, c.head_hidden_dim, c.embedding_dim, c.head_norm)
        self.bank = MemoryBank(c.embedding_dim, c.memory_momentum)
        self._pending: torch.Tensor | None = None

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        return npid_views(size, crop_scale)

    def on_batch_start(self, indices: torch.Tensor) -> None:
        self.bank.set_batch(indices)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        c = self.config
        y = self.encoder(views[0])
        v = self.head(y)
        stored = self.bank.positives(v.shape[0])  # m_i before this step: the monitors' second "view"
        loss = memory_bank_loss(self.bank, v, c.loss, c.temperature, c.num_negatives)
        self._pending = v.detach()
        v = F.normalize(v.detach(), dim=1)
        return StepOutput(loss=loss, embeddings=(v, stored.to(v.dtype)), features=y.detach(),
                          metrics={"npid_loss": loss.detach()})

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        if self._pending is not None:
            self.bank.update(self._pending)
            self._pending = None
        return {}
