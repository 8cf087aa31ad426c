"""A FIFO queue of embeddings: MoCo's keys (He et al. 2020, Sec. 3.2), NNCLR's support set
(Dwibedi et al. 2021, Sec. 3.2), SwAV's stored features (Caron et al. 2020, Sec. 4.1).

The rows live in a registered buffer, so they are saved in checkpoints with the write pointer and
the fill count. ``push`` gathers the rows of every process (``gather_no_grad``), so all processes
hold the same queue, and writes them over the oldest rows, wrapping around at the end. Every index
is computed on the device: no host synchronisation per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import gather_no_grad


class FeatureQueue(nn.Module):
    """``size`` rows of dimension ``dim``; ``init="random"`` fills them with random unit vectors
    (MoCo's initial queue, counted as full), ``init="zeros"`` starts empty (``filled`` = 0)."""

    def __init__(self, size: int, dim: int, init: str = "random") -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        if init not in ("random", "zeros"):
            raise ValueError(f"queue init must be 'random' or 'zeros', got {init!r}")
        random = init == "random"
        self.register_buffer("items", F.normalize(torch.randn(size, dim), dim=1) if random else torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("filled", torch.tensor(size if random else 0, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.items.shape[0]

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        """Enqueue the rows of ``x`` from every process (in rank order), dropping the oldest."""
        x = gather_no_grad(x.detach()).to(self.items.dtype)
        if x.shape[0] > self.size:  # only the newest ``size`` rows survive
            self.ptr.add_(x.shape[0] - self.size).remainder_(self.size)
            x = x[-self.size:]
        n = x.shape[0]
        index = (self.ptr + torch.arange(n, device=self.items.device)) % self.size
        self.items.index_copy_(0, index, x)
        self.ptr.add_(n).remainder_(self.size)
        self.filled.add_(n).clamp_(max=self.size)

    def valid_mask(self) -> torch.Tensor:
        """Boolean [size]: rows written so far (rows fill from 0 upwards before the first wrap)."""
        return torch.arange(self.size, device=self.items.device) < self.filled

    def ordered(self) -> torch.Tensor:
        """The valid rows, oldest first (for inspection and tests; synchronises with the device)."""
        n, ptr = int(self.filled), int(self.ptr)
        if n < self.size:
            return self.items[:n].clone()
        return torch.cat([self.items[ptr:], self.items[:ptr]])
