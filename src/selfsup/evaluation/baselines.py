"""The floors every learned encoder is compared with, on frozen features (kNN, linear probe).

* **random init (same init)**: the run's architecture at the run's initialisation, from a seed of its
  own: what the architecture alone gives, with no training at all.
* **random init (default init)**: the same architecture at the framework's default initialisation
  (torchvision's: every residual block active) when the run's differs (zero-initialised residual
  blocks): the stronger random floor on small images, the one a skeptic would pick.
* **raw pixels**: the normalised images themselves, flattened; any representation must beat it.

Scores are flat keys, fractions in [0, 1]: ``random_init_knn_top1``, ``raw_pixels_linear_top1``...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfsup.data.dataset import DataSplit
from selfsup.evaluation.frozen import PROTOCOLS_FROZEN, evaluate_encoder, evaluate_raw_pixels
from selfsup.evaluation.intervals import with_intervals

__all__ = ["BASELINES", "baseline_scores", "frozen_table"]

# (score-key prefix, name) of every floor, in the order tables show them.
BASELINES: tuple[tuple[str, str], ...] = (("random_init_", "random init (same init)"),
                                          ("random_default_init_", "random init (default init)"),
                                          ("raw_pixels_", "raw pixels"))


def baseline_scores(random_init: nn.Module, split: DataSplit, size: int, mean: Sequence[float],
                    std: Sequence[float], device: torch.device | str, seed: int,
                    protocols: Sequence[str] = PROTOCOLS_FROZEN,
                    default_init: nn.Module | None = None) -> dict[str, float]:
    """``random_init_<score>`` of ``random_init``, ``random_default_init_<score>`` of ``default_init``
    (when given) and ``raw_pixels_<score>``, for each of ``protocols``."""
    encoders = {"random_init_": random_init, "random_default_init_": default_init}
    out: dict[str, float] = {}
    for prefix, encoder in encoders.items():
        if encoder is not None:
            scores = evaluate_encoder(encoder, split, size, mean, std, protocols, device, seed)
            out.update({prefix + k: v for k, v in scores.items()})
    out.update({"raw_pixels_" + k: v for k, v in evaluate_raw_pixels(split, size, mean, std, protocols, seed).items()})
    return out


def frozen_table(encoder: nn.Module, split: DataSplit, size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str, seed: int, protocols: Sequence[str] = PROTOCOLS_FROZEN,
                 random_init: nn.Module | None = None, default_init: nn.Module | None = None) -> dict[str, float]:
    """Learned scores (``knn_top1``...) and, when ``random_init`` is given, :func:`baseline_scores` beside
    them; every accuracy with its 95% interval (``<key>_ci95``)."""
    out = dict(evaluate_encoder(encoder, split, size, mean, std, protocols, device, seed))
    if random_init is not None:
        out.update(baseline_scores(random_init, split, size, mean, std, device, seed, protocols, default_init))
    return with_intervals(out, len(split.test))
