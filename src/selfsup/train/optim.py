"""Optimisers (LARS, SGD, AdamW) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR and BYOL.

    For parameters of a group with ``lars_adapt=True``: g <- (g + wd w) * eta ||w|| / ||g + wd w||,
    then heavy-ball momentum. Groups with ``lars_adapt=False`` (biases and norm parameters, as in
    BYOL Appendix J) get neither weight decay nor adaptation. With ``clip=True`` (LARC's clipping,
    as solo-learn uses for CIFAR) the ratio becomes min(ratio, lr) / lr, so no layer steps faster
    than the global learning rate.

    Every update is a handful of ``torch._foreach_*`` ops over a whole group (no Python loop of
    kernels per parameter, no host-device synchronisation).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, clip: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      clip=clip, lars_adapt=True))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["lars_adapt"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w = torch.stack(torch._foreach_norm(params))
                g = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w > 0) & (g > 0), group["eta"] * w / g, torch.ones_like(w))
                if group["clip"]:
                    trust = torch.clamp(trust / group["lr"], max=1.0)
                grads = torch._foreach_mul(grads, list(trust.unbind(0)))
            if all("momentum_buffer" in self.state[p] for p in params):
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
            else:
                bufs = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(g).detach()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                    bufs.append(state["momentum_buffer"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def split_decay(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Split each group into weights and (biases, norm parameters): the latter get no weight decay."""
    out = []
    for group in groups:
        weights = [p for p in group["params"] if p.ndim > 1]
        others = [p for p in group["params"] if p.ndim <= 1]
        extra = {k: v for k, v in group.items() if k != "params"}
        if weights:
            out.append({**extra, "params": weights})
        if others:
            out.append({**extra, "params": others, "weight_decay": 0.0, "lars_adapt": False})
    return out


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, weight_decay: float,
                    lars_eta: float = 1e-3, lars_clip: bool = False) -> torch.optim.Optimizer:
    """An optimiser over ``groups`` (each may carry ``lr_multiplier``); biases and norms undecayed.

    SGD and AdamW use the fused CUDA kernels when every parameter is on a CUDA device, and the
    ``foreach`` (multi-tensor) implementation otherwise; LARS is written with foreach ops.
    """
    groups = split_decay(groups)
    params = [p for g in groups for p in g["params"]]
    fast = ({"fused": True} if params and all(p.is_cuda for p in params) else {"foreach": True})
    for g in groups:
        g.setdefault("lr_multiplier", 1.0)
        g["lr"] = lr * g["lr_multiplier"]
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, eta=lars_eta, clip=lars_clip)
    for g in groups:
        g.pop("lars_adapt", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, **fast)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fast)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)
