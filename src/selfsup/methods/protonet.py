"""Prototypical Networks trained episodically (Snell, Swersky & Zemel, NeurIPS 2017).

    c_k = 1/|S_k| sum_{x in S_k} f(x)                      (Eq. 1: the prototype of class k)
    p(y = k | x) = softmax_k(-||f(x) - c_k||^2)            (Eq. 2, squared Euclidean distance, Sec. 2.7)
    J = -1/|Q| sum_{(x, y) in Q} log p(y | x)              (Algorithm 1: cross-entropy over the queries)

Each training step is one episode of the *base* classes (:mod:`selfsup.data.episodes`); the novel
classes are never seen. ``f`` is the backbone with global average pooling (the encoder's usual
output); support and query images go through it as one batch, so BatchNorm's batch statistics
are the episode's. Training runs in :mod:`selfsup.runs.episodic` (``train_fewshot``), not in the
self-supervised loop: an episode needs labels and class-balanced draws, which that loop's
uniformly drawn, unlabelled batches do not give.

Defaults (Sec. 3.2): Adam, lr 1e-3 halved every 2000 episodes, no regularisation but BatchNorm;
training episodes of as many or more ways than at test (30-way 1-shot / 20-way 5-shot with 15
queries per class on miniImageNet), shots matched to the test. Small-image recipe: with only five
base classes of Fashion-MNIST the episodes are 5-way (5-shot, 15 queries), and the lr follows a
cosine to zero over runs of a few hundred episodes, which would never reach the paper's first halving:
200 episodes from scratch on Fashion-MNIST's classes 0-4 score 40.9 / 57.0% (novel 5-way 1- / 5-shot)
with the cosine, 41.2 / 55.3% with the paper's schedule (a constant lr there; BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.losses.fewshot import prototypical_logits


class EpisodicMethod(nn.Module):
    """An encoder (plus heads) that classifies an episode's queries from its support set.

    Subclasses set ``name``, ``Config`` (the paper's hyperparameters) and ``OPTIMIZER`` (Adam's lr,
    weight decay, and the lr schedule: ``"step"`` multiplies it by ``decay_rate`` every ``decay_every``
    episodes, ``"cosine"`` anneals it to zero); ``SMALL_IMAGE_OPTIMIZER`` overrides the optimiser for
    images <= 64 px. They implement ``logits``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    OPTIMIZER: ClassVar[dict[str, Any]] = {"lr": 1e-3, "weight_decay": 0.0, "schedule": "step", "decay_every": 2000,
                                           "decay_rate": 0.5}
    SMALL_IMAGE_OPTIMIZER: ClassVar[dict[str, Any]] = {"schedule": "cosine"}
    SMALL_IMAGE_RECIPE: ClassVar[dict[str, Any]] = {}  # Config values that differ for images <= 64 px

    def __init__(self, encoder: nn.Module, config: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, D]``: what the nearest-neighbour (supervision collapse) analysis reads."""
        return self.encoder(images)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               n_way: int) -> torch.Tensor:
        """``[Q, n_way]`` class scores of the ``query`` images given the labelled ``support`` images."""
        raise NotImplementedError

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int | None = None) -> torch.Tensor:
        n_way = int(support_labels.max()) + 1 if n_way is None else n_way
        return self.logits(support, support_labels, query, n_way)

    def episode_loss(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                     query_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cross-entropy over the queries, their accuracy)``; the accuracy is detached."""
        logits = self(support, support_labels, query)
        loss = F.cross_entropy(logits, query_labels)
        return loss, (logits.detach().argmax(1) == query_labels).float().mean()

    def _support_and_query(self, support: torch.Tensor, query: torch.Tensor,
                           features) -> tuple[torch.Tensor, torch.Tensor]:
        out = features(torch.cat([support, query]))
        return out[:len(support)], out[len(support):]


@dataclass
class ProtoNetConfig:
    """Snell et al. 2017: squared Euclidean distance to the class means of pooled features (no head)."""

    metric: str = "euclidean"  # the only metric trained here (Sec. 2.7: better than cosine)

    def __post_init__(self) -> None:
        if self.metric != "euclidean":
            raise ValueError(f"metric: Prototypical Networks are trained with the squared Euclidean distance, "
                             f"got {self.metric!r}")


class ProtoNet(EpisodicMethod):
    name = "protonet"
    Config = ProtoNetConfig

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               n_way: int) -> torch.Tensor:
        s, q = self._support_and_query(support, query, self.encoder)
        return prototypical_logits(q, s, support_labels, n_way)
