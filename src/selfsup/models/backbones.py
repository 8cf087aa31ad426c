"""Backbones: torchvision ResNets with a small-image stem, any input channels and a width multiplier.

``ResNetBackbone`` subclasses ``torchvision.models.ResNet`` and reuses its block builder, so at
``width=1`` its ``state_dict`` has exactly torchvision's keys (without ``fc``), and with
``small_stem=False, in_channels=3`` it loads strictly into ``torchvision.models.resnet18/50``.
The small-image stem (3x3 conv, stride 1, no max-pool) follows SimCLR's CIFAR variant
(Chen et al. 2020, Appendix B.9).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from selfsup.models.checkpointing import run_checkpointed
from selfsup.models.norm import NORMS, make_norm, standardize_convs
from selfsup.models.timm_backbones import build_timm_backbone, is_timm
from selfsup.models.vit import VIT_CONFIGS, ViTBackbone, build_vit

BACKBONES: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
# Vision Transformers (models/vit.py): (class, [layers, heads, hidden, mlp]); ``norm`` does not apply.
BACKBONES.update({name: (ViTBackbone, list(spec)) for name, spec in VIT_CONFIGS.items()})


class ResNetBackbone(ResNet):
    """A torchvision ResNet without its classifier; ``forward`` returns pooled features ``[B, D]``."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: float = 1.0,
                 in_channels: int = 3, small_stem: bool = False,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, zero_init_residual: bool = False) -> None:
        nn.Module.__init__(self)
        widths = [max(4, int(round(w * width))) for w in (64, 128, 256, 512)]
        self._norm_layer = norm_layer
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.inplanes = widths[0]
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        self.feature_dim = widths[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as its shortcut (Goyal et al. 2017, Sec. 5.1)
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if getattr(last, "weight", None) is not None:  # not with --norm none
                    nn.init.zeros_(last.weight)

    grad_checkpointing: bool = False  # recompute each stage (layer1..4) in backward; see models/checkpointing.py

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if not self.grad_checkpointing:
            return super()._forward_impl(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run_checkpointed(stage, x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self._forward_impl(x), 1)

    @property
    def stage_dims(self) -> list[int]:
        """Channels of the feature maps of stages 1-4 (``layer1`` ... ``layer4``)."""
        return [_out_channels(stage) for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def stage_outputs(self, x: torch.Tensor, last: int = 4) -> list[torch.Tensor]:
        """The feature maps ``[B, C_k, H_k, W_k]`` of stages 1 to ``last`` (no pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4)[:last]:
            x = run_checkpointed(stage, x) if self.grad_checkpointing else stage(x)
            maps.append(x)
        return maps


def _out_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features


class StageEncoder(nn.Module):
    """A ResNet read at stage ``stage`` (1-4): globally average-pooled features ``[B, C_stage]``.

    RotNet's finding (Gidaris et al. 2018, Sec. 3.1) is that an intermediate block's features can
    beat the last block's; evaluation, embedding and export read any stage through this module.
    """

    def __init__(self, backbone: ResNetBackbone, stage: int) -> None:
        super().__init__()
        if not 1 <= stage <= 4:
            raise ValueError(f"stage must be 1-4, got {stage}")
        self.backbone, self.stage = backbone, stage
        self.feature_dim = backbone.stage_dims[stage - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.stage_outputs(x, last=self.stage)[-1].mean(dim=(2, 3))


def encoder_at_stage(encoder: nn.Module, stage: int | None) -> nn.Module:
    """``encoder`` itself for ``None`` or 4 (a ResNet's last stage is its usual output), else its
    :class:`StageEncoder`; only ResNets have stages."""
    if stage is None or (stage == 4 and isinstance(encoder, ResNetBackbone)):
        return encoder
    if not isinstance(encoder, ResNetBackbone):
        what = getattr(encoder, "timm_name", None) or type(encoder).__name__
        raise ValueError(f"--eval-layer: only selfsup's ResNet backbones have stages, not {what}")
    return StageEncoder(encoder, stage)


def build_backbone(name: str = "resnet18", *, width: float = 1.0, in_channels: int = 3,
                   small_stem: bool = False, norm: str = "batchnorm", grad_checkpointing: bool = False,
                   zero_init_residual: bool = False, image_size: int | None = None) -> nn.Module:
    """Build a backbone by name; ``norm`` is one of ``NORMS`` (``groupnorm_ws`` also standardises convs).

    ``timm:NAME`` builds timm's model NAME, untrained (models/timm_backbones.py says which options apply);
    ``image_size`` (the run's) is for timm models only: those whose class takes ``img_size`` are built for it,
    and each is checked to run at that size.

    ``zero_init_residual`` (ResNets) sets the scale of each block's last norm layer to zero, so every
    block starts as its shortcut: Goyal et al. 2017's trick, in SimCLR's official ResNet (every block)
    and BYOL's (haiku's bottleneck blocks).

    ``grad_checkpointing`` (ResNets) recomputes each stage during backward instead of storing its
    activations: less memory for large backbones/images, about one extra forward of compute.
    """
    if is_timm(name):
        return build_timm_backbone(name, width=width, in_channels=in_channels, small_stem=small_stem, norm=norm,
                                   grad_checkpointing=grad_checkpointing, zero_init_residual=zero_init_residual,
                                   image_size=image_size)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}, or timm:NAME")
    if grad_checkpointing and name in VIT_CONFIGS:
        raise ValueError(f"gradient checkpointing is implemented for the ResNet backbones, not {name!r}")
    if name in VIT_CONFIGS:
        return build_vit(name, width=width, in_channels=in_channels, small_stem=small_stem)
    block, layers = BACKBONES[name]
    model = ResNetBackbone(block, layers, width=width, in_channels=in_channels,
                           small_stem=small_stem, norm_layer=lambda c: make_norm(norm, c, dims=2),
                           zero_init_residual=zero_init_residual)
    if norm == "groupnorm_ws":
        standardize_convs(model)
    model.grad_checkpointing = grad_checkpointing
    return model


__all__ = ["BACKBONES", "NORMS", "ResNetBackbone", "StageEncoder", "build_backbone", "encoder_at_stage"]
