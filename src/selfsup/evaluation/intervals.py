"""95% intervals of accuracies measured on a finite test split, and when a split is too small.

An accuracy ``p`` on ``n`` test images is a binomial proportion; its Wilson score interval (Wilson
1927) stays inside [0, 1] and is honest for small ``n`` and for ``p`` near 0 or 1 (3 of 3 correct
gives [0.44, 1.0], not "100%"):

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

Scores are flat keys; the interval of ``<key>`` is ``<key>_ci95 = [low, high]``. Few-shot scores keep
their own ``_ci95`` (a half-width over episodes).
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054
SMALL_SPLIT = 100  # test images under which a comparison of accuracies is mostly noise


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``accuracy`` observed on ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def is_accuracy(key: str, value: Any) -> bool:
    return (key.endswith(("_top1", "_top5")) and isinstance(value, float)) and not isinstance(value, bool)


def with_intervals(scores: dict[str, Any], test_images: int) -> dict[str, Any]:
    """``scores`` plus ``<key>_ci95 = [low, high]`` for every accuracy that has no interval yet."""
    out = dict(scores)
    for key, value in scores.items():
        if is_accuracy(key, value) and f"{key}_ci95" not in scores:
            out[f"{key}_ci95"] = list(wilson_interval(value, test_images))
    return out


def small_split_warning(test_images: int, data: str) -> str | None:
    """A one-line warning when ``test_images`` is too few for accuracies to be compared, else None."""
    if test_images >= SMALL_SPLIT:
        return None
    low, high = wilson_interval(0.5, test_images)
    return (f"warning: {data} has only {test_images} test images: an accuracy near 50% is known to within "
            f"{100 * (high - low) / 2:.0f} points (95% interval), so differences between encoders mean little; "
            "give the split explicitly with train/ and test/ sub-folders")
