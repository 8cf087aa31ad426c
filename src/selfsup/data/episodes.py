"""Few-shot episodes: which images form the support and query sets of an N-way K-shot task.

An episode draws ``ways`` classes from a chosen class set, then ``shots`` support and ``queries``
query images of each, disjoint (Vinyals et al. 2016; Snell et al. 2017). Training episodes are
drawn from the *base* classes only; the *novel* classes (``--holdout-classes``) are kept for
the few-shot test, so a model never sees a novel class while it learns.

``variable=True`` draws episodes as Meta-Dataset does (Triantafillou et al., ICLR 2020, Sec. 3.2;
its ``sampling.py``): ways uniform in ``[ways, min(max_ways, classes)]``; the same number of
queries for every class, ``min(max_query, floor(min_c |c| / 2))``; a support-set size
``min(max_support, sum_c floor(beta * min(max_support_per_class, |c| - q) + 1))`` with
``beta ~ U(0, 1)``; and shots ``min(floor(p_c * (size - ways)) + 1, |c| - q)`` with proportions
``p_c`` proportional to ``|c| * exp(U(log 0.5, log 2))``. Classes thus get unequal shots.

A **SimCLR episode** (Doersch, Gupta & Zisserman, NeurIPS 2020, Sec. 4; the official
``add_simclr_episodes``) turns an episode into instance discrimination: every support image is
its own class (labels ``0..S-1``), and the queries are, for each class whose episode had ``q``
queries, its first ``min(q, shots)`` support images again, labelled by the support image they
come from; support and query images are then augmented independently with SimCLR's
augmentations (:func:`simclr_episode_views`), blur on the queries only.

Everything is drawn from one CPU generator seeded with ``seed``: the same seed gives the same
episodes. Fixed-size episodes are :func:`selfsup.evaluation.fewshot.sample_episode`'s, so the
evaluation's episodes and a sampler's with the same seed are the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from selfsup.data.views import ViewSpec

__all__ = ["Episode", "EpisodeSpec", "EpisodeSampler", "SimCLREpisode", "base_and_novel", "simclr_episode",
           "simclr_episode_views"]


@dataclass
class Episode:
    """Indices into the pool and episode-local labels ``0..n_way-1`` (``classes[i]`` is label ``i``)."""

    classes: list[int]
    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor



def sample_episode(labels: torch.Tensor, n_way: int, k_shot: int, n_query: int,
                   generator: torch.Generator, classes: Sequence[int] | None = None) -> Episode:
    """One episode from ``labels`` (of the pool), restricted to ``classes`` when given."""
    labels = labels.long().cpu()
    pool = sorted(int(c) for c in (classes if classes is not None else labels.unique().tolist()))
    if n_way < 2 or k_shot < 1 or n_query < 1:
        raise ValueError("need n_way >= 2, k_shot >= 1, n_query >= 1")
    if len(pool) < n_way:
        raise ValueError(f"{n_way}-way episodes need {n_way} classes, only {len(pool)} available")
    chosen = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:n_way].tolist()]
    support, query = [], []
    for c in chosen:
        members = (labels == c).nonzero().squeeze(1)
        if len(members) < k_shot + n_query:
            raise ValueError(f"class {c} has {len(members)} images; an episode needs {k_shot + n_query}")
        pick = members[torch.randperm(len(members), generator=generator)[:k_shot + n_query]]
        support.append(pick[:k_shot])
        query.append(pick[k_shot:])
    local = torch.arange(n_way)
    return Episode(classes=chosen, support=torch.cat(support), support_labels=local.repeat_interleave(k_shot),
                   query=torch.cat(query), query_labels=local.repeat_interleave(n_query))


@dataclass(frozen=True)
class EpisodeSpec:
    """The shape of the episodes: fixed ``ways``/``shots``/``queries``, or Meta-Dataset's variable ones
    (``variable=True``: ``ways`` is then the least number of ways, ``shots`` and ``queries`` unused)."""

    ways: int = 5
    shots: int = 5
    queries: int = 15
    variable: bool = False
    max_ways: int = 50  # Meta-Dataset's defaults from here on
    max_query: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)

    def __post_init__(self) -> None:
        if self.ways < 2:
            raise ValueError(f"ways: need at least 2, got {self.ways}")
        if not self.variable and (self.shots < 1 or self.queries < 1):
            raise ValueError(f"shots and queries must be >= 1, got {self.shots} and {self.queries}")
        if self.variable and (self.max_ways < self.ways or self.max_query < 1 or self.max_support < self.ways
                              or self.max_support_per_class < 1 or self.min_log_weight > self.max_log_weight):
            raise ValueError("variable episodes: need max_ways >= ways, max_query >= 1, max_support >= ways, "
                             "max_support_per_class >= 1 and min_log_weight <= max_log_weight")

    def images_needed(self) -> int:
        """The fewest images a class needs to take part in an episode."""
        return 2 if self.variable else self.shots + self.queries


def base_and_novel(labels: torch.Tensor, novel: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(base, novel)`` class lists of ``labels``: the novel classes given, the base classes the rest."""
    present = sorted(set(int(c) for c in labels.unique().tolist()))
    novel_set = sorted(set(int(c) for c in novel))
    return [c for c in present if c not in novel_set], novel_set


class EpisodeSampler:
    """Episodes over ``classes`` of ``labels`` (all classes when ``None``), from a CPU generator seeded
    with ``seed``. ``sample()`` returns an :class:`Episode` of indices into ``labels``."""

    def __init__(self, labels: torch.Tensor, classes: Sequence[int] | None = None, spec: EpisodeSpec | None = None,
                 seed: int = 0) -> None:
        self.labels = labels.long().cpu()
        self.spec = spec or EpisodeSpec()
        pool = sorted(set(int(c) for c in (classes if classes is not None else self.labels.unique().tolist())))
        self.members = {c: (self.labels == c).nonzero().squeeze(1) for c in pool}
        need = self.spec.images_needed()
        short = {c: len(m) for c, m in self.members.items() if len(m) < need}
        if short:
            raise ValueError(f"classes {sorted(short)} have {sorted(short.values())} images; an episode needs {need} "
                             "per class")
        if len(pool) < self.spec.ways:
            raise ValueError(f"{self.spec.ways}-way episodes need {self.spec.ways} classes, only {len(pool)} given")
        self.classes = pool
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self) -> Episode:
        if not self.spec.variable:
            s = self.spec
            return sample_episode(self.labels, s.ways, s.shots, s.queries, self.generator, self.classes)
        return self._variable()

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def _variable(self) -> Episode:
        s, g = self.spec, self.generator
        max_ways = min(s.max_ways, len(self.classes))
        ways = s.ways + int(torch.randint(max_ways - s.ways + 1, (), generator=g))
        chosen = [self.classes[i] for i in torch.randperm(len(self.classes), generator=g)[:ways].tolist()]
        sizes = torch.tensor([len(self.members[c]) for c in chosen], dtype=torch.float64)
        n_query = min(s.max_query, int(sizes.min()) // 2)
        remaining = sizes - n_query
        beta = self._uniform()
        support_size = min(s.max_support, int(torch.floor(beta * remaining.clamp(max=s.max_support_per_class) + 1)
                                              .sum()))
        log_weights = s.min_log_weight + (s.max_log_weight - s.min_log_weight) * torch.rand(
            ways, generator=g, dtype=torch.float64)
        proportions = sizes * log_weights.exp()
        proportions = proportions / proportions.sum()
        shots = torch.minimum(torch.floor(proportions * (support_size - ways)) + 1, remaining).long().tolist()
        support, query, support_labels = [], [], []
        for label, (c, k) in enumerate(zip(chosen, shots, strict=True)):
            members = self.members[c]
            pick = members[torch.randperm(len(members), generator=g)[:k + n_query]]
            support.append(pick[:k])
            query.append(pick[k:])
            support_labels.append(torch.full((k,), label, dtype=torch.long))
        return Episode(classes=chosen, support=torch.cat(support), support_labels=torch.cat(support_labels),
                       query=torch.cat(query), query_labels=torch.arange(ways).repeat_interleave(n_query))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class SimCLREpisode:
    """An episode whose classes are its support images: ``support_labels`` is ``0..S-1``; ``query``
    holds indices of support images again (``query_labels``: the position in the support set)."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor

    @property
    def ways(self) -> int:
        return len(self.support)


def simclr_episode(episode: Episode) -> SimCLREpisode:
    """The SimCLR episode of ``episode`` (module docstring): for each class with ``q`` queries, its first
    ``min(q, shots)`` support images become queries, labelled by their place in the support set."""
    keep = []
    n_way = int(episode.support_labels.max()) + 1
    query_counts = torch.bincount(episode.query_labels.long(), minlength=n_way)
    for c in range(n_way):
        positions = (episode.support_labels == c).nonzero().squeeze(1)
        keep.append(positions[:int(query_counts[c])])
    positions = torch.cat(keep).sort().values
    return SimCLREpisode(support=episode.support.clone(), support_labels=torch.arange(len(episode.support)),
                         query=episode.support[positions], query_labels=positions)


def simclr_episode_views(size: int, crop_scale: tuple[float, float]) -> tuple[ViewSpec, ViewSpec]:
    """``(support view, query view)`` of SimCLR episodes: SimCLR's augmentations (random resized crop,
    flip, colour jitter of strength 1 with p 0.8, grayscale 0.2; Chen et al. 2020, App. A) on both,
    Gaussian blur (p 1, sigma in [0.1, 2], kernel 10% of the side) on the queries only, as the official
    ``simclr_augment(query_images, blur=True)``."""
    support = ViewSpec(size=size, crop_scale=tuple(crop_scale), jitter_p=0.8, brightness=0.8, contrast=0.8,
                       saturation=0.8, hue=0.2, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
    return support, replace(support, blur_p=1.0)
