"""From a backbone's last feature map back to pixels: the decoders of the reconstruction methods.

``feature_map(encoder, x)`` gives the last spatial feature map ``[B, D, h, w]`` of a ResNet (stage 4)
or a ViT (the patch tokens of the last block, on their grid) together with the pooled features
``[B, D]`` the encoder's ``forward`` returns (a ResNet's average-pooled map, a ViT's [CLS] token), so
a method pays for one forward and gets both. ``ConvDecoder`` upsamples such a map by 2 per stage with
up-convolutions (4x4 transposed convolutions, stride 2, then norm and ReLU: the decoder of the context
encoder, Pathak et al. 2016, Sec. 3.1, and of DCGAN) and ends with a 3x3 convolution to the output
channels; a final bilinear resize covers sizes that are not the map's times a power of two (28 px).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.models.backbones import ResNetBackbone
from selfsup.models.vit import ViTBackbone


def output_stride(encoder: nn.Module) -> int:
    """How many input pixels one position of the last feature map spans (8 for the small-stem ResNet,
    32 with the standard stem, the patch size for a ViT)."""
    if isinstance(encoder, ViTBackbone):
        return encoder.patch_size
    if isinstance(encoder, ResNetBackbone):
        stem = encoder.conv1.stride[0] * (1 if isinstance(encoder.maxpool, nn.Identity) else 2)
        return stem * 8
    raise TypeError(f"a decoder needs a ResNet or ViT backbone (a spatial feature map), got {type(encoder).__name__}")


def feature_map(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(map [B, D, h, w], pooled features [B, D])`` of ``encoder`` on ``x``; ``pooled`` equals ``encoder(x)``."""
    if isinstance(encoder, ResNetBackbone):
        fmap = encoder.stage_outputs(x)[-1]
        return fmap, fmap.mean(dim=(2, 3))
    if isinstance(encoder, ViTBackbone):
        h, w = encoder.grid(x.shape[-2], x.shape[-1])
        enc = encoder.encoder
        tokens = enc.ln(enc.layers(enc.dropout(encoder.tokens(x))))
        fmap = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return fmap, tokens[:, 0]
    raise TypeError(f"a decoder needs a ResNet or ViT backbone (a spatial feature map), got {type(encoder).__name__}")


class ConvDecoder(nn.Module):
    """``[B, in_dim, h, w]`` -> ``[B, out_dim, h * 2^upsamplings, ...]``: a 1x1 convolution to ``width``
    channels, ``upsamplings`` up-convolution blocks halving the channels (not below ``min_width``), a 3x3
    convolution to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, upsamplings: int, width: int = 256, min_width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, width, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        channels = width
        for _ in range(upsamplings):
            out = max(channels // 2, min_width)
            layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, out_dim, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, fmap: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        out = self.net(fmap)
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


def upsamplings_for(encoder: nn.Module, target_stride: int = 1) -> int:
    """Up-convolutions that take ``encoder``'s last map to ``1 / target_stride`` of the input resolution."""
    return max(0, round(math.log2(output_stride(encoder) / target_stride)))


__all__ = ["ConvDecoder", "feature_map", "output_stride", "upsamplings_for"]
