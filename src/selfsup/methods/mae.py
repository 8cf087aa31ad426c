"""MAE: masked autoencoders (He, Chen, Xie, Li, Dollár & Girshick, CVPR 2022).

    patches p_1..p_N of x; keep a random 25% (per image), drop the rest         (Sec. 3, mask ratio 0.75)
    latent = ViT encoder([CLS]; visible patches + their position embeddings)    (the encoder never sees a mask token)
    decoder: Linear(latent) with a shared learned mask token in every dropped place, fixed 2-D sin-cos
             position embeddings, Transformer blocks, LayerNorm, Linear to p*p*C pixels per patch
    loss = mean over the dropped patches of ||pred - t||^2 / (p*p*C), t = the patch's pixels normalised by
           their own mean and std (norm_pix_loss)                                (Sec. 3, "Reconstruction target")

Works on the ViT backbones (``--backbone vit_tiny|vit_small``, ``models/vit.py``): their patch embedding,
[CLS] token, learned position embeddings (interpolated to the grid; the paper uses fixed sin-cos ones in
the encoder) and blocks, run on the visible tokens only. Evaluation reads the [CLS] token of the whole
image, as the paper's linear probing does.

Defaults (paper Table 8 and the official ``PRETRAIN.md``): mask ratio 0.75, norm_pix_loss, decoder 8
blocks of width 512 with 16 heads (MLP 4x), AdamW lr 1.5e-4 x batch/256, betas (0.9, 0.95), weight
decay 0.05, 40 warm-up epochs of 800, random resized crop (0.2, 1) and flip only. The loop's AdamW
keeps PyTorch's betas (0.9, 0.999). ``INPUT_NORMALIZATION = (0.5, 0.5)``: pixels in [-1, 1] (the paper
normalises with ImageNet's per-channel mean and std, a fixed affine map the patch embedding absorbs), so
the preview can show reconstructions in pixels without the data's statistics.
Small-image recipe (ViT-Tiny, patch 4 on 28-32 px: 49-64 patches, CPU-sized): decoder 2 blocks of width
128 with 4 heads (the paper's Table 1a: a 1-block decoder already gives most of the fine-tuning
accuracy; a decoder as deep as the encoder would do most of the work of a 12-block ViT at width 0.25),
AdamW lr 1.5e-3 x batch/256, one warm-up epoch, weight decay 0.05 (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from selfsup.data.views import ViewSpec
from selfsup.errors import ConfigError
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import masked_patch_loss
from selfsup.methods.patches import BatchRandom, StepRandom
from selfsup.models.vit import ViTBackbone


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, h * w, patch * patch * C]``, patches row by row, pixels in (row, column,
    channel) order (the official code's order); the remainder of H, W beyond whole patches is dropped."""
    b, c = images.shape[:2]
    h, w = images.shape[2] // patch, images.shape[3] // patch
    x = images[:, :, :h * patch, :w * patch].reshape(b, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, h * w, patch * patch * C]`` -> ``[B, C, h * patch, w * patch]``."""
    b = patches.shape[0]
    x = patches.reshape(b, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * patch, w * patch)


def random_keep(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image random masking (the official ``random_masking``): the ``N * (1 - mask_ratio)`` patches
    with the smallest ``noise`` ``[B, N]`` are kept. Returns ``(kept indices [B, K], mask [B, N])``,
    mask 1 where the patch is dropped."""
    n = noise.shape[1]
    keep = int(n * (1 - mask_ratio))
    kept = noise.argsort(dim=1)[:, :keep]
    mask = torch.ones_like(noise).scatter_(1, kept, 0.0)
    return kept, mask


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[h * w, dim]`` (half the dims for the row, half for the
    column, each ``sin`` then ``cos`` of ``pos / 10000^(2i/d)``; the official ``get_2d_sincos_pos_embed``)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (cols.flatten(), rows.flatten()):  # the official code's grid[0] is the column (w) axis
        angles = pos[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


@dataclass
class MAEConfig:
    """Paper defaults (He et al. 2022, Sec. 3, Table 8; official ``models_mae.py``)."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio: must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ValueError(f"--decoder-dim {self.decoder_dim}: must be divisible by 4 and by --decoder-heads "
                             f"{self.decoder_heads}")
        if self.decoder_depth < 1:
            raise ValueError(f"--decoder-depth: must be >= 1, got {self.decoder_depth}")


class MAE(Method):
    name = "mae"
    Config = MAEConfig
    INPUT_NORMALIZATION: ClassVar[tuple[float, float]] = (0.5, 0.5)  # pixels in [-1, 1]
    OPTIMIZER = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.05, "warmup_epochs": 40}
    SMALL_IMAGE_RECIPE = {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 0.05, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: MAEConfig) -> None:
        if not isinstance(encoder, ViTBackbone):
            raise ConfigError(f"--backbone: MAE needs a ViT backbone (vit_tiny, vit_small), got "
                              f"{type(encoder).__name__}")
        super().__init__(encoder, config)
        c = config
        self.patch = encoder.patch_size
        self.channels = encoder.conv_proj.in_channels
        self.decoder_embed = nn.Linear(encoder.feature_dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_blocks = nn.Sequential(*[EncoderBlock(c.decoder_heads, c.decoder_dim, 4 * c.decoder_dim, 0.0, 0.0)
                                              for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_dim, self.patch ** 2 * self.channels)
        for module in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(module, nn.Linear):  # the official initialisation (xavier, as JAX ViT)
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: random resized crop and flip only (the paper's augmentation)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def encode_visible(self, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The encoder on [CLS] and the ``kept`` patches ``[B, K]``: ``[B, 1 + K, D]`` after the final LayerNorm."""
        vit = self.encoder
        h, w = vit.grid(x.shape[-2], x.shape[-1])
        pos = vit.position_embedding(h, w)
        tokens = vit.conv_proj(x).flatten(2).transpose(1, 2) + pos[:, 1:]
        visible = torch.gather(tokens, 1, kept.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (vit.class_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        enc = vit.encoder
        return enc.ln(enc.layers(enc.dropout(torch.cat([cls, visible], dim=1))))

    def decode(self, latent: torch.Tensor, kept: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
        """Pixel predictions ``[B, N, p * p * C]`` for every patch from the visible patches' ``latent``."""
        y = self.decoder_embed(latent)
        b, dim = y.shape[0], y.shape[-1]
        full = self.mask_token.to(y.dtype).expand(b, n, dim).clone()
        full = full.scatter(1, kept.unsqueeze(-1).expand(-1, -1, dim), y[:, 1:])  # visible tokens in place
        pos = sincos_2d(dim, h, w).to(device=y.device, dtype=y.dtype)
        tokens = torch.cat([y[:, :1], full + pos], dim=1)  # [CLS] keeps a zero position embedding
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(tokens)))[:, 1:]

    def forward_masked(self, x: torch.Tensor, rand: BatchRandom) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(predictions [B, N, P], mask [B, N], [CLS] of the visible patches [B, D])``."""
        h, w = self.encoder.grid(x.shape[-2], x.shape[-1])
        n = h * w
        kept, mask = random_keep(rand.uniform(n).to(x.device), self.config.mask_ratio)
        latent = self.encode_visible(x, kept)
        return self.decode(latent, kept, n, h, w), mask, latent[:, 0]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        prediction, mask, cls = self.forward_masked(x, self.randomness.draw(x.shape[0]))
        loss = masked_patch_loss(prediction, patchify(x, self.patch), mask, self.config.norm_pix_loss)
        return StepOutput(loss=loss, features=cls.detach())

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The visible patches (dropped ones grey) and the reconstruction with the visible patches pasted
        back (the paper's Fig. 2); with norm_pix_loss the predicted patches are shown with their true
        patch's mean and std, as the official visualisation does."""
        mean, std = self.INPUT_NORMALIZATION
        rgb = views[0].float()
        x = (rgb - mean) / std
        h, w = self.encoder.grid(x.shape[-2], x.shape[-1])
        prediction, mask, _ = self.forward_masked(x, BatchRandom(0, 0, x.shape[0]))  # fixed masks
        target = patchify(x, self.patch)
        if self.config.norm_pix_loss:
            spread = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            prediction = prediction * spread + target.mean(dim=-1, keepdim=True)
        dropped = mask.unsqueeze(-1).bool()
        shown = torch.where(dropped, torch.zeros_like(target), target)
        filled = torch.where(dropped, prediction.float(), target)

        def image(patches: torch.Tensor) -> torch.Tensor:
            return (unpatchify(patches, self.patch, self.channels, h, w) * std + mean).clamp(0, 1)

        return [(f"encoder input ({math.floor(100 * self.config.mask_ratio)}% masked)", image(shown)),
                ("reconstruction + visible", image(filled))]

