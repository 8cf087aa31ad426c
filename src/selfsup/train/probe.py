"""Online linear probe: a classifier trained on detached features during pretraining.

A monitor, as in the official BYOL code: it never sends gradients into the encoder, and its
running top-1 on the training batches shows whether the representation is becoming linearly
useful while the run is still going.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OnlineProbe(nn.Module):
    """Linear layer + its own Adam optimiser, updated on each batch's detached features."""

    def __init__(self, feature_dim: int, num_classes: int, lr: float = 1e-2) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr)
        self.register_buffer("correct", torch.zeros(()))
        self.register_buffer("seen", torch.zeros(()))

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimiser step on ``features`` (detached here) and accumulate batch accuracy."""
        logits = self.linear(features.detach().float())
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.numel()

    def read_and_reset(self) -> dict[str, float]:
        """Top-1 on the batches since the last call (one host sync)."""
        top1 = (self.correct / self.seen.clamp_min(1)).item()
        self.correct.zero_()
        self.seen.zero_()
        return {"online_probe_top1": top1}

    def full_state(self) -> dict:
        return {"probe": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_full_state(self, state: dict) -> None:
        self.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
