"""Vision Transformers (Dosovitskiy et al., ICLR 2021) as backbones for every method.

``ViTBackbone`` subclasses ``torchvision.models.VisionTransformer`` (torchvision is already a
dependency; timm would add a second model zoo for two configurations). It keeps torchvision's
modules and parameter names (``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers``, ``encoder.ln``) and changes three things:

* the patch embedding takes any number of input channels (1 for Fashion-MNIST and digits);
* the position embeddings are interpolated (bicubic, as DINO's ``interpolate_pos_encoding``) to the
  patch grid of each input, so global and local multi-crop views of different sizes go through the
  same network;
* ``forward`` returns the final-LayerNorm [CLS] token ``[B, hidden_dim]`` (no classification head),
  and ``feature_dim`` says its size.

Configurations (Touvron et al. 2021, DeiT, Table 1): ViT-Tiny 12 layers, 3 heads, 192 dims, MLP 768;
ViT-Small 12 layers, 6 heads, 384 dims, MLP 1536. Patch size 16 at 224 px as in the papers; for
small images (``small_stem``, images up to 64 px) patch 4, which gives 7 x 7 patches at 28 px and
8 x 8 at 32 px (2 x 2 for 8-px digits). ``width`` scales the embedding dimension (rounded to a
multiple of the number of heads, MLP 4x) for CPU-sized runs. ``norm`` (BatchNorm / GroupNorm
choices of the ResNets) does not apply: a ViT uses LayerNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

# name -> (num_layers, num_heads, hidden_dim, mlp_dim)
VIT_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny": (12, 3, 192, 768),
    "vit_small": (12, 6, 384, 1536),
}
SMALL_PATCH, LARGE_PATCH = 4, 16
SMALL_IMAGE, LARGE_IMAGE = 32, 224  # the grid the position embeddings are stored at


class ViTBackbone(VisionTransformer):
    """A torchvision ViT without its head; ``forward`` returns the [CLS] features ``[B, hidden_dim]``."""

    def __init__(self, image_size: int = SMALL_IMAGE, patch_size: int = SMALL_PATCH, num_layers: int = 12,
                 num_heads: int = 3, hidden_dim: int = 192, mlp_dim: int = 768, in_channels: int = 3) -> None:
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                         hidden_dim=hidden_dim, mlp_dim=mlp_dim)
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch_size ** 2)))
        nn.init.zeros_(self.conv_proj.bias)  # torchvision's initialisation, for the new channel count
        self.heads = nn.Identity()
        self.feature_dim = hidden_dim
        self.num_heads = num_heads

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input of ``height`` x ``width`` pixels (the remainder is cropped off)."""
        return height // self.patch_size, width // self.patch_size

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """``[1, 1 + h * w, D]``: the [CLS] embedding and the patch embeddings resized to an h x w grid."""
        pos = self.encoder.pos_embedding
        g = self.image_size // self.patch_size
        if (h, w) == (g, g):
            return pos
        patches = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings with the [CLS] token prepended and position embeddings added: ``[B, 1 + hw, D]``."""
        h, w = self.grid(x.shape[-2], x.shape[-1])
        if h < 1 or w < 1:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}-px patch")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B, hw, D]
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embedding(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        return enc.ln(enc.layers(enc.dropout(self.tokens(x))))[:, 0]


def build_vit(name: str, *, width: float = 1.0, in_channels: int = 3, small_stem: bool = False) -> ViTBackbone:
    """A ViT of ``VIT_CONFIGS`` by name; patch 4 with ``small_stem`` (small images), 16 otherwise."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT {name!r}; choose from {', '.join(VIT_CONFIGS)}")
    layers, heads, hidden, _ = VIT_CONFIGS[name]
    hidden = max(heads, int(round(hidden * width / heads)) * heads)
    return ViTBackbone(image_size=SMALL_IMAGE if small_stem else LARGE_IMAGE,
                       patch_size=SMALL_PATCH if small_stem else LARGE_PATCH, num_layers=layers, num_heads=heads,
                       hidden_dim=hidden, mlp_dim=4 * hidden, in_channels=in_channels)


@torch.no_grad()
def cls_attention_maps(vit: ViTBackbone, images: torch.Tensor) -> torch.Tensor:
    """Attention of the [CLS] query to every patch in the last block, per head: ``[B, heads, h, w]``.

    ``images`` are normalised float inputs ``[B, C, H, W]``; each map sums to 1 over the patches plus
    the [CLS] token itself (the maps DINO shows in its Fig. 1 and 3, before any thresholding).
    """
    if not isinstance(vit, ViTBackbone):
        raise TypeError(f"attention maps need a ViT backbone, got {type(vit).__name__}")
    h, w = vit.grid(images.shape[-2], images.shape[-1])
    x = vit.encoder.dropout(vit.tokens(images))
    layers = list(vit.encoder.layers)
    for block in layers[:-1]:
        x = block(x)
    last = layers[-1]
    y = last.ln_1(x)
    _, attn = last.self_attention(y, y, y, need_weights=True, average_attn_weights=False)  # [B, heads, T, T]
    return attn[:, :, 0, 1:].reshape(images.shape[0], -1, h, w)


__all__ = ["VIT_CONFIGS", "ViTBackbone", "build_vit", "cls_attention_maps"]
