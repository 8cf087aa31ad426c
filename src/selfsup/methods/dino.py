"""DINO, self-distillation with no labels: Emerging Properties in Self-Supervised Vision Transformers
(Caron et al., ICCV 2021).

    student:  P_s(x) = softmax(g_s(x) / t_s)                     every crop (2 global + V local)
    teacher:  P_t(x) = softmax((g_t(x) - c) / t_t)               the 2 global crops, no gradient
    loss = mean over pairs (global i, crop v != i) of -sum_k P_t(x_i)_k log P_s(x_v)_k   (Eq. 1-2)
    after each step: theta_t <- l theta_t + (1 - l) theta_s,  l cosine 0.996 -> 1       (Sec. 3.1)
                     c <- m c + (1 - m) mean of g_t over the global batch,  m = 0.9     (Eq. 4)

Centring (the centre ``c``, reduced across processes) and sharpening (a teacher temperature below
the student's) together avoid collapse. The teacher temperature warms up linearly from 0.04 to 0.07
over the first 30 epochs (Sec. 4 / Appendix D of the paper; per epoch as the official schedule).
The head g is a 3-layer MLP (GELU, hidden 2048, no BN) to a 256-d bottleneck, L2-normalised, then
a weight-normalised linear layer without bias to K = 65536 outputs whose norms are fixed to 1
(``norm_last_layer``); that last layer gets no gradient during the first epoch
(``freeze_last_layer_epochs``). Gradients are clipped per parameter to norm 3 (``clip_grad``) as
in the official code.

Defaults (paper and official code, ViT-S/16): multi-crop 2 x 224 (0.4, 1) + 8 x 96 (0.05, 0.4), views
as BYOL's (blur 1.0 / 0.1 and solarise 0 / 0.2 on the global crops, blur 0.5 on local ones), AdamW,
lr 0.0005 x batch / 256, 10 warm-up epochs, cosine decay, 100 epochs (ablations; 300-800 for the
best models). Simplifications: the weight decay is constant 0.04 (the paper's cosine 0.04 -> 0.4 is
not scheduled by the loop), no stochastic depth in ViTs, and the final lr is 0 rather than 1e-6.
The evaluated encoder is the student (``encoder``); the teacher is ``teacher_encoder``.

Small-image recipe (measured on digits, BENCHMARKS.md): BN in the head (the ResNet's ReLU features
are too alike for a BN-free MLP), out 256, teacher temperature 0.04 without warm-up, teacher
momentum 0.996, SGD 0.1 x batch/256 (the official ResNet-50 run also uses SGD), crops (0.6, 1), no
local crops: with AdamW, or with the teacher temperature warming up, the outputs collapsed to
uniform, and local crops of a few pixels hurt. With a ViT pass ``--optimizer adamw --lr 0.0005``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import all_reduce_sum
from selfsup.data.views import ViewSpec, byol_views
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import at_least_float32, dino_loss
from selfsup.methods.momentum import cosine_tau, ema_update, frozen_copy
from selfsup.methods.multicrop import SMALL_IMAGE_CROPS, MultiCropConfig, check_global_crops, crop_views, encode_crops
from selfsup.models.norm import make_norm


class WeightNormLinear(nn.Module):
    """``y = x W^T`` with ``W = g v / |v|`` row-wise, no bias (``nn.utils.weight_norm(Linear)``, dim 0).

    With ``fixed_norm`` the magnitudes ``g`` are 1 and not trained (DINO's ``norm_last_layer``).
    """

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.v, std=0.02)
        self.g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    @property
    def weight(self) -> torch.Tensor:
        return self.g * F.normalize(self.v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (``num_layers`` Linear, GELU between) -> bottleneck, L2-normalise, weight-normalised output layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm: str = "none", norm_last_layer: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(num_layers, 1) - 1):
            layers += [nn.Linear(dim, hidden_dim), make_norm(norm, hidden_dim, dims=1), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised bottleneck ``[B, bottleneck]``, logits ``[B, out_dim]``)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return z, self.last_layer(z)


@dataclass
class DINOConfig(MultiCropConfig):
    """Paper defaults (Caron et al. 2021, Sec. 3-4, Appendix; official main_dino.py)."""

    head_hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 65536
    head_layers: int = 3
    head_norm: str = "none"  # the official use_bn_in_head=False
    norm_last_layer: bool = True
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_temperature_epochs: int = 30
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # cosine increase to 1
    freeze_last_layer_epochs: int = 1
    clip_grad: float = 3.0  # per-parameter gradient norm; 0 disables
    num_local_crops: int = 8  # 2 x 224 (0.4, 1) + 8 x 96 (0.05, 0.4)
    global_crop_scale_min: float = 0.4


class DINO(Method):
    name = "dino"
    Config = DINOConfig
    OPTIMIZER = {"optimizer": "adamw", "lr": 0.0005, "weight_decay": 0.04, "warmup_epochs": 10}
    # Measured on digits (module docstring): BN in the head, a sharper constant teacher (0.04), SGD
    # as the official ResNet-50 run, larger crops, no local crops.
    SMALL_IMAGE_RECIPE = {"head_hidden_dim": 512, "bottleneck_dim": 64, "out_dim": 256, "head_norm": "batchnorm",
                          "teacher_temperature": 0.04, "warmup_teacher_temperature_epochs": 0, **SMALL_IMAGE_CROPS}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: DINOConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.head = DINOHead(self.feature_dim, c.out_dim, c.head_hidden_dim, c.bottleneck_dim, c.head_layers,
                             c.head_norm, c.norm_last_layer)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, c.out_dim))
        self.epoch = 0

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """2 global + ``num_local_crops`` local crops; their scales come from this method's options."""
        return crop_views(self.config, size, byol_views(size), ViewSpec(blur_p=0.5, solarize_p=0.0))

    def teacher_temperature(self, epoch: int | None = None) -> float:
        """Linear warm-up over ``warmup_teacher_temperature_epochs`` epochs, then constant (per epoch,
        as the official ``np.linspace(warmup, final, warmup_epochs)`` schedule)."""
        c, e = self.config, self.epoch if epoch is None else epoch
        warm = c.warmup_teacher_temperature_epochs
        if e >= warm - 1:
            return c.teacher_temperature
        return c.warmup_teacher_temperature + (c.teacher_temperature - c.warmup_teacher_temperature) * e / (warm - 1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c <- m c + (1 - m) * mean of the teacher logits over the global batch (Eq. 4)."""
        total = all_reduce_sum(at_least_float32(teacher_logits).sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(teacher_logits.shape[0]), device=total.device))
        m = self.config.center_momentum
        self.center.mul_(m).add_(total / count, alpha=1 - m)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        check_global_crops(self.name, views)
        c = self.config
        sizes = [v.shape[0] for v in views]
        features = encode_crops(self.encoder, views)
        z, logits = self.head(features)
        with torch.no_grad():
            _, teacher_logits = self.teacher_head(self.teacher_encoder(torch.cat(views[:2])))
        teacher = list(teacher_logits.split(sizes[:2]))
        loss = dino_loss(list(logits.split(sizes)), teacher, self.center, c.student_temperature,
                         self.teacher_temperature())
        self.update_center(teacher_logits)
        z1, z2 = z.split(sizes)[:2]
        return StepOutput(loss=loss, embeddings=(z1.detach(), z2.detach()), features=features[:sizes[0]].detach(),
                          metrics={"dino_loss": loss.detach()})

    def on_epoch_start(self, epoch: int, steps_per_epoch: int) -> None:
        self.epoch = epoch

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.config.clip_grad > 0:  # the official clip_gradients: each parameter's gradient norm <= clip
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                scale = [torch.clamp(self.config.clip_grad / (n + 1e-6), max=1.0) for n in torch._foreach_norm(grads)]
                torch._foreach_mul_(grads, scale)
        if self.epoch < self.config.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        return cosine_tau(step, total_steps, self.config.teacher_momentum)

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        m = self.teacher_momentum(step, total_steps)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
        return {"teacher_momentum": m, "teacher_temperature": self.teacher_temperature()}


__all__ = ["DINO", "DINOConfig", "DINOHead", "WeightNormLinear"]
