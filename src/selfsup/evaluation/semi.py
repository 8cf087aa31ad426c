"""Class-balanced label subsets for the semi-supervised protocol (SimCLR / BYOL, 1% and 10%).

The papers fine-tune the pretrained network on 1% or 10% of ImageNet's labelled training images,
class-balanced (about 13 and 128 images per class; SimCLR, Chen et al. 2020, Sec. 4 and App. B.5,
used the fixed subsets of Zhai et al. 2019), and report top-1/top-5 on the full validation set.
Here the subset is drawn from the evaluation data's *training* split -- the test split is never
touched -- with the same number of images per class, ``max(1, round(fraction * N / C))`` (capped
by what a class has), from a generator seeded with ``seed``: the same seed gives the same subset.
"""

from __future__ import annotations

import re

import torch

__all__ = ["balanced_subset", "parse_semi", "semi_slug"]

_SEMI = re.compile(r"^semi:(\d+(?:\.\d+)?)%$")


def parse_semi(protocol: str) -> float | None:
    """``"semi:1%"`` -> 0.01; None when ``protocol`` is not of the form ``semi:P%`` with 0 < P <= 100."""
    match = _SEMI.match(protocol.strip())
    if not match:
        return None
    percent = float(match.group(1))
    return percent / 100 if 0 < percent <= 100 else None


def semi_slug(fraction: float) -> str:
    """0.01 -> ``semi_1pct``; 0.005 -> ``semi_0.5pct`` (file and key names)."""
    return f"semi_{100 * fraction:g}pct"


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices (int64) of a class-balanced ``fraction`` of ``labels``.

    Every class present gets ``max(1, round(fraction * N / C))`` images (fewer if it has fewer),
    each class's images drawn without replacement, classes in ascending order, all from one
    generator seeded with ``seed``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = labels.long().cpu()
    classes = labels.unique(sorted=True)
    if len(classes) == 0:
        return torch.empty(0, dtype=torch.long)
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes.tolist():
        members = (labels == c).nonzero().squeeze(1)
        picked.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picked).sort().values
