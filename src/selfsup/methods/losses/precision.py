"""The precision losses are computed in: float32 at least, whatever the autocast dtype."""

from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a lower precision (bf16, fp16); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()
