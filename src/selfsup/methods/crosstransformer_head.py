"""The CrossTransformer head (Doersch, Gupta & Zisserman, NeurIPS 2020, Sec. 3) and the spatial
feature maps it reads.

The head compares a query image with each class's support images part by part: a shared 1x1
key/query head ``Gamma`` (the paper ties the query head ``Omega`` to it, end of Sec. 3; the official
code uses one set of weights) and a 1x1 value head ``Lambda`` (shared by support and query) map the
backbone's feature maps to ``d_k`` / ``d_v`` channels (128 each in the paper); the logits of
:func:`selfsup.methods.losses.crosstransformer_logits` follow. Both convs have no bias and start from
a truncated normal of std 0.1 (the official ``functional_backbones.conv``).

:func:`dilate_last_stage` is the "larger-resolution final stage" of the paper's stride-16 ResNet-34
(Sec. 5; the official ``resnet34.max_stride = 16``): the last stage runs at stride 1 and its later
3x3 convolutions are dilated by 2 (atrous), as torchvision's ``replace_stride_with_dilation`` does.
The weights are unchanged, so a pretrained encoder keeps them; the final map doubles in side
(4 x 4 -> 7 x 7 for 28-px images with the small-image stem).
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.methods.losses.fewshot import crosstransformer_attention, crosstransformer_logits
from selfsup.models.backbones import ResNetBackbone

__all__ = ["CrossTransformerHead", "SpatialEncoder", "dilate_last_stage", "spatial_features"]


def spatial_features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last stage's feature map ``[B, C, H, W]`` of a ResNet encoder (no global pooling)."""
    if not isinstance(encoder, ResNetBackbone):
        raise ValueError(f"the CrossTransformer reads spatial feature maps of a ResNet backbone, not "
                         f"{type(encoder).__name__}")
    return encoder.stage_outputs(images)[-1]


class SpatialEncoder(nn.Module):
    """A ResNet encoder whose forward returns its last feature map ``[B, C, H, W]`` instead of pooled features."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(encoder, ResNetBackbone):
            raise ValueError(f"the CrossTransformer needs a ResNet backbone, not {type(encoder).__name__}")
        self.encoder = encoder
        self.feature_dim = encoder.stage_dims[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return spatial_features(self.encoder, images)


def dilate_last_stage(encoder: nn.Module) -> nn.Module:
    """``encoder`` (changed in place) with its last stage at stride 1 and dilation 2 (module docstring)."""
    if not isinstance(encoder, ResNetBackbone):
        raise ValueError(f"--high-res: only ResNet backbones have a last stage to dilate, not {type(encoder).__name__}")
    if getattr(encoder, "dilated_last_stage", False):
        return encoder
    first, *rest = encoder.layer4
    for m in first.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
    for block in rest:
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.dilation, m.padding = (2, 2), (2, 2)
    encoder.dilated_last_stage = True
    return encoder


class CrossTransformerHead(nn.Module):
    """Keys, queries and values of support and query feature maps, and the class logits of an episode."""

    def __init__(self, in_dim: int, key_dim: int = 128, value_dim: int = 128) -> None:
        super().__init__()
        self.key = nn.Conv2d(in_dim, key_dim, 1, bias=False)  # Gamma, also the query head Omega
        self.value = nn.Conv2d(in_dim, value_dim, 1, bias=False)  # Lambda
        for conv in (self.key, self.value):
            nn.init.trunc_normal_(conv.weight, std=0.1, a=-0.2, b=0.2)

    @staticmethod
    def _positions(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]

    def keys_values(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, H*W, d_k], [B, H*W, d_v])`` of feature maps ``[B, C, H, W]``."""
        return self._positions(self.key(maps)), self._positions(self.value(maps))

    def attention(self, support_maps: torch.Tensor, support_labels: torch.Tensor, query_maps: torch.Tensor,
                  n_way: int | None = None) -> list[torch.Tensor]:
        """Per class ``c``, the attention ``[Q, H*W, S_c, H'*W']`` of each query position over the class's
        support positions (sums to one over the last two dims)."""
        n_way = int(support_labels.max()) + 1 if n_way is None else n_way
        return crosstransformer_attention(self.keys_values(query_maps)[0], self.keys_values(support_maps)[0],
                                          support_labels, n_way)

    def forward(self, support_maps: torch.Tensor, support_labels: torch.Tensor, query_maps: torch.Tensor,
                n_way: int | None = None) -> torch.Tensor:
        """``[Q, n_way]`` logits ``-d(query, query-aligned prototype of each class)``."""
        n_way = int(support_labels.max()) + 1 if n_way is None else n_way
        support_keys, support_values = self.keys_values(support_maps)
        query_keys, query_values = self.keys_values(query_maps)
        return crosstransformer_logits(query_keys, query_values, support_keys, support_values, support_labels, n_way)
