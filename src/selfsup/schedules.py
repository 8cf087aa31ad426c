"""Schedules shared by training, evaluation and the methods: linear warm-up and half-cosine decay."""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float = 0.0) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held there after)."""
    progress = min(step / max(1, total_steps), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``final`` (SimCLR/BYOL)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)
