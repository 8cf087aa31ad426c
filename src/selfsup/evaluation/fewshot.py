"""N-way K-shot few-shot evaluation of frozen features with Prototypical Networks.

Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017) classify a query by the nearest
*class prototype*, the mean embedding of that class's K support examples. Snell et al. use the
**squared Euclidean distance**, which is the default here (``metric="euclidean"``: logits are
``-||q - p_c||^2``); ``metric="cosine"`` uses the cosine similarity to the prototypes of
L2-normalised features instead. The embeddings are the frozen encoder's features, unchanged
(no fine-tuning, no feature standardisation): this measures the representation itself.

Each episode draws ``n_way`` classes, then ``k_shot`` support and ``n_query`` query images per
class, disjoint, without replacement (the usual 5-way 1/5-shot, 15 queries per class setting of
Snell et al. / Vinyals et al. 2016). Accuracy is averaged over ``episodes`` (600 by default) and
reported with the 95% confidence interval ``1.96 * std / sqrt(episodes)`` where ``std`` is the
population standard deviation (``ddof=0``, numpy's default, as in the common few-shot code of
Chen et al. 2019, "A Closer Look at Few-shot Classification").

Episodes come from one CPU generator seeded with ``seed``, so the same seed gives the same
episodes -- also for different encoders, which are then compared on identical episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.data.episodes import Episode, sample_episode

__all__ = ["Episode", "FewShotResult", "sample_episode", "prototypes", "prototype_logits", "episode_accuracy",
           "mean_ci95", "fewshot_eval", "METRICS", "episodic_eval", "crosstransformer_fewshot_eval"]

METRICS = ("euclidean", "cosine")


@dataclass
class FewShotResult:
    """Mean accuracy in [0, 1] over episodes, its 95% confidence half-width, and the setting."""

    mean: float
    ci95: float
    std: float
    episodes: int
    n_way: int
    k_shot: int
    n_query: int
    metric: str


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class prototypes ``[n_way, D]``: the mean support embedding of each episode label."""
    out = torch.zeros(n_way, support.shape[1], dtype=support.dtype)
    out.index_add_(0, support_labels.long(), support)
    counts = torch.bincount(support_labels.long(), minlength=n_way).clamp_min(1).to(support.dtype)
    return out / counts[:, None]


def prototype_logits(query: torch.Tensor, protos: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``[Q, n_way]`` scores: ``-squared Euclidean distance`` or cosine similarity to each prototype."""
    if metric == "euclidean":
        return -torch.cdist(query.double(), protos.double()).pow(2)
    if metric == "cosine":
        return F.normalize(query.double(), dim=1) @ F.normalize(protos.double(), dim=1).T
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def episode_accuracy(features: torch.Tensor, episode: Episode, metric: str = "euclidean") -> float:
    """Fraction of the episode's queries whose nearest prototype is their class."""
    feats = features.float()
    if metric == "cosine":  # prototypes of L2-normalised embeddings
        feats = F.normalize(feats, dim=1)
    n_way = len(episode.classes)
    protos = prototypes(feats[episode.support], episode.support_labels, n_way)
    pred = prototype_logits(feats[episode.query], protos, metric).argmax(1)
    return float((pred == episode.query_labels).float().mean())


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` with the population std (``ddof=0``)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, 1.96 * std / math.sqrt(n)


def fewshot_eval(features: torch.Tensor, labels: torch.Tensor, n_way: int = 5, k_shot: int = 1,
                 n_query: int = 15, episodes: int = 600, seed: int = 0, metric: str = "euclidean",
                 classes: Sequence[int] | None = None) -> FewShotResult:
    """Mean accuracy and 95% CI of prototype classification over ``episodes`` seeded episodes."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    if features.shape[0] != labels.shape[0]:
        raise ValueError("features and labels have different lengths")
    gen = torch.Generator().manual_seed(seed)
    accs = [episode_accuracy(features, sample_episode(labels, n_way, k_shot, n_query, gen, classes), metric)
            for _ in range(episodes)]
    mean, ci = mean_ci95(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return FewShotResult(mean=mean, ci95=ci, std=std, episodes=episodes, n_way=n_way, k_shot=k_shot,
                         n_query=n_query, metric=metric)


def episodic_eval(classify: Callable[[Episode], torch.Tensor], labels: torch.Tensor, n_way: int = 5, k_shot: int = 1,
                  n_query: int = 15, episodes: int = 600, seed: int = 0, classes: Sequence[int] | None = None,
                  metric: str = "custom") -> FewShotResult:
    """Mean accuracy and 95% CI of any episode classifier: ``classify(episode)`` returns the predicted
    label of each query. The episodes are those of :func:`fewshot_eval` with the same seed."""
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(episodes):
        episode = sample_episode(labels, n_way, k_shot, n_query, gen, classes)
        accs.append(float((classify(episode).cpu() == episode.query_labels).float().mean()))
    mean, ci = mean_ci95(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return FewShotResult(mean=mean, ci95=ci, std=std, episodes=episodes, n_way=n_way, k_shot=k_shot,
                         n_query=n_query, metric=metric)


@torch.no_grad()
def crosstransformer_fewshot_eval(feature_maps: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                                  n_way: int = 5, k_shot: int = 1, n_query: int = 15, episodes: int = 600,
                                  seed: int = 0, classes: Sequence[int] | None = None) -> FewShotResult:
    """CrossTransformer few-shot evaluation (Doersch et al. 2020): ``feature_maps`` ``[N, C, H, W]`` of the
    frozen backbone (any float dtype), ``head(support_maps, support_labels, query_maps, n_way)`` the trained
    :class:`selfsup.methods.crosstransformer_head.CrossTransformerHead`; episodes as :func:`fewshot_eval`'s."""
    if feature_maps.shape[0] != labels.shape[0]:
        raise ValueError("feature maps and labels have different lengths")
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device

    def classify(episode: Episode) -> torch.Tensor:
        support = feature_maps[episode.support].to(device).float()
        query = feature_maps[episode.query].to(device).float()
        return head(support, episode.support_labels.to(device), query, n_way).argmax(1)

    try:
        return episodic_eval(classify, labels, n_way, k_shot, n_query, episodes, seed, classes, "crosstransformer")
    finally:
        head.train(was_training)
