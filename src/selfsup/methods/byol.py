"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

    online:  y = f(v),  z = g(y),  p = q(z)         (encoder f, projector g, predictor q)
    target:  y' = f'(v'), z' = g'(v')                (EMA copies, no gradient)
    loss  =  ||p/|p| - z'/|z'|||^2, symmetrised over (v, v')            (Eq. 2)
    after each step: xi <- tau xi + (1 - tau) theta, tau cosine-scheduled (Sec. 3.2)

Switches for the paper's ablations (Sec. 5, Appendix F): no predictor, no stop-gradient,
no EMA (target = online weights, tau = 0), fixed target (tau = 1), a predictor learning-rate
multiplier, and beta times an NT-Xent term with negatives (the BYOL-to-SimCLR bridge, Sec. 5 and
Appendix G). ``bootstrap_weight=0`` with ``negatives_beta=1``, no predictor, ``target="none"`` and no
stop-gradient leaves the contrastive term alone: SimCLR expressed in BYOL's code.

Defaults (Sec. 3.3, Appendix J): projector and predictor 4096 -> 256 with BN, tau_base 0.996, LARS
lr 0.2 x batch/256 (batch 4096), weight decay 1.5e-6, 10 warm-up epochs, cosine over 1000 epochs;
the asymmetric views of Table 6.
Small-image recipe: heads 1024 -> 128, tau_base 0.99 (a faster target for runs of a few hundred
steps), LARS lr 1.0 x batch/256 with trust coefficient 0.02 and clipping (solo-learn's CIFAR
setting), weight decay 1e-5, one warm-up epoch: the paper's trust coefficient 1e-3 moves each layer
by ~0.1% a step, right for 300k steps and too slow for a few hundred (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.comm import gather_with_grad, rank
from selfsup.methods.base import Method, StepOutput, predictor_lr_groups
from selfsup.methods.losses import byol_loss, nt_xent_gathered_loss
from selfsup.methods.momentum import cosine_tau, ema_update, frozen_copy
from selfsup.models.heads import mlp


@dataclass
class BYOLConfig:
    """Paper defaults (Grill et al. 2020, Sec. 3.3 and Appendix J)."""

    projector_hidden_dim: int = 4096
    projection_dim: int = 256
    predictor_hidden_dim: int = 4096
    tau_base: float = 0.996
    tau_schedule: bool = True  # cosine increase of tau to 1; False keeps tau = tau_base
    target: str = "ema"  # "ema" | "none" (target = online weights every step, i.e. tau = 0)
    predictor: bool = True
    stop_gradient: bool = True
    predictor_lr_multiplier: float = 1.0
    negatives_beta: float = 0.0
    negatives_temperature: float = 0.1
    bootstrap_weight: float = 1.0  # weight of the BYOL regression term (0: contrastive term only)
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.target not in ("ema", "none"):
            raise ValueError(f"--target: must be 'ema' or 'none', got {self.target!r}")
        if self.bootstrap_weight == 0 and self.negatives_beta == 0:
            raise ValueError("--bootstrap-weight: 0 needs --negatives-beta > 0 (otherwise there is no loss)")


class BYOL(Method):
    name = "byol"
    Config = BYOLConfig
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 1024, "projection_dim": 128,
                          "predictor_hidden_dim": 1024, "tau_base": 0.99}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "lars", "lr": 1.0, "weight_decay": 1e-5, "warmup_epochs": 1,
                             "lars_eta": 0.02, "lars_clip": True}
    # The official code's ResNets zero the last BN scale of each bottleneck block; here every block
    # (BasicBlock too): on Fashion-MNIST it stops the early loss of rank seen on two of three seeds.
    ZERO_INIT_RESIDUAL = True

    def __init__(self, encoder: nn.Module, config: BYOLConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, norm=c.head_norm)
        self.predictor = (mlp(c.projection_dim, c.predictor_hidden_dim, c.projection_dim, norm=c.head_norm)
                          if c.predictor else None)
        if c.target == "ema":
            self.target_encoder = frozen_copy(encoder)
            self.target_projector = frozen_copy(self.projector)
            if not c.stop_gradient:  # gradients reach the target and the optimiser trains it too
                for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
                    p.requires_grad_(True)

    def _target(self, view: torch.Tensor) -> torch.Tensor:
        if self.config.target == "ema":
            return self.target_projector(self.target_encoder(view))
        return self.projector(self.encoder(view))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        v1, v2 = views[0], views[1]
        y1, y2 = self.encoder(v1), self.encoder(v2)
        z1, z2 = self.projector(y1), self.projector(y2)
        p1, p2 = (self.predictor(z1), self.predictor(z2)) if self.predictor is not None else (z1, z2)
        with torch.set_grad_enabled(not self.config.stop_gradient and torch.is_grad_enabled()):
            t1, t2 = self._target(v1), self._target(v2)
        if self.config.stop_gradient:
            t1, t2 = t1.detach(), t2.detach()
        bootstrap = byol_loss(p1, t2) + byol_loss(p2, t1)
        metrics = {"byol_loss": bootstrap.detach()}
        loss = self.config.bootstrap_weight * bootstrap
        if self.config.negatives_beta:
            # NT-Xent of the local anchors against the global batch: on one process this is
            # nt_xent_loss(p1, t2) + nt_xent_loss(p2, t1); on several its mean over processes is.
            temperature, offset = self.config.negatives_temperature, rank() * p1.shape[0]
            all_p1, all_p2, all_t1, all_t2 = (gather_with_grad(x) for x in (p1, p2, t1, t2))
            contrastive = nt_xent_gathered_loss(p1, t2, all_p1, all_t2, offset, temperature) + \
                nt_xent_gathered_loss(p2, t1, all_p2, all_t1, offset, temperature)
            metrics["contrastive_loss"] = contrastive.detach()
            loss = loss + self.config.negatives_beta * contrastive
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=y1.detach(),
                          metrics=metrics)

    def tau(self, step: int, total_steps: int) -> float:
        if self.config.target == "none":
            return 0.0
        if not self.config.tau_schedule:
            return self.config.tau_base
        return cosine_tau(step, total_steps, self.config.tau_base)

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        tau = self.tau(step, total_steps)
        if self.config.target == "ema":
            ema_update(self.target_encoder, self.encoder, tau)
            ema_update(self.target_projector, self.projector, tau)
        return {"tau": tau}

    def param_groups(self) -> list[dict[str, Any]]:
        return predictor_lr_groups(self, self.predictor, self.config.predictor_lr_multiplier)
