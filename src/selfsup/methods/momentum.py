"""Momentum (EMA) targets shared by BYOL, MoCo, DINO: the update and the cosine rate schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

from selfsup.schedules import cosine


def cosine_tau(step: int, total_steps: int, tau_base: float) -> float:
    """BYOL's schedule (Grill et al. 2020, Sec. 3.2): tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2."""
    return cosine(step, total_steps, start=tau_base, end=1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, over parameters, in one fused foreach op."""
    target_params = [p for p in target.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, 1.0 - tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (a momentum target)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
