"""Colorization: predicting the colours of a grey image (Zhang, Isola & Efros, ECCV 2016, "Colorful Image
Colorization"; as a self-supervised representation: Sec. 3.2 and Table 4).

    L, ab = Lab(x)                                   the encoder sees the lightness L only
    Z^ = softmax(g(f(L)))                            Q = 313 in-gamut ab bins, at 1/4 of the resolution
    Z = soft-encode(ab): 5 nearest bins, Gaussian sigma 5                              (Sec. 2.1)
    loss = -1/N sum_{h,w} v(Z_hw) sum_q Z_hwq log Z^_hwq                                (Eq. 2)
    v(Z_hw) = w_{q*}, q* = argmax_q Z_hwq, w ~ ((1 - lambda) p~ + lambda / Q)^-1, E_p~[w] = 1   (Eq. 3-4)
    colour shown: the annealed mean of Z^ at T = 0.38                                    (Eq. 5)

(the colour maths is in ``methods/lab.py``). The paper's p~ is the ab distribution of ImageNet's pixels;
here p~ is the histogram of every training pixel seen so far (over all processes), smoothed by a
Gaussian of sigma 5 and kept in the checkpoint: after the first steps it is the training set's.

**The encoder reads L.** The backbone's first convolution (a ResNet's ``conv1``, a ViT's patch
embedding) is replaced by a one-channel ``LightnessConv`` that turns its RGB input into ``(L - 50) / 50``
before convolving. Everything that feeds the encoder the run's RGB images -- the training views, the
kNN / linear / fine-tuning evaluations, ``selfsup embed``, the random-init floor (built the same way)
-- therefore feeds it L, as the paper evaluates its colorization network on grey images (Sec. 3.2).
For the conversion to be exact the run scales pixels to [0, 1] and no further
(``INPUT_NORMALIZATION = (0, 1)``, recorded in ``config.yaml`` as the run's mean and std). The data
must be colour: ``--data photos`` (the photographs bundled with scikit-learn and scikit-image) or
``folder:PATH``; a one-channel source is refused.

Decoder: the backbone's last feature map, up-convolved to 1/4 of the input resolution (the paper's
output resolution, 56 px of 224), then a 3x3 convolution to the 313 logits; the ab targets are taken
every 4th pixel (the official code's stride-4 subsampling). Defaults (paper Sec. 3.1 and the official
Caffe solver): Adam, lr 3.16e-5 at batch 40 (2e-4 x batch/256 here), betas (0.9, 0.99), weight decay
1e-3, random crops and flips only (no colour augmentation: the colours are the targets). AdamW here
(betas 0.9/0.999, decoupled weight decay).
Small-image recipe (32-px photo crops, CPU-sized): AdamW lr 1.6e-2 x batch/256, weight decay 1e-4, no
warm-up: of 2e-3, 8e-3 and 1.6e-2 (x batch/256) the largest learned the most in 64 steps (linear probe
+5, +8, +11 points over the random-init encoder; BENCHMARKS.md). A few hundred steps need a larger
step than the paper's 450k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import comm
from selfsup.data.views import ViewSpec
from selfsup.errors import ConfigError
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.lab import (
    ab_bins,
    annealed_mean,
    lab_to_rgb,
    rebalancing_weights,
    rgb_to_lab,
    smoothed_distribution,
    soft_encode,
)
from selfsup.methods.losses import colorization_loss
from selfsup.models.backbones import ResNetBackbone
from selfsup.models.decoders import ConvDecoder, feature_map, upsamplings_for
from selfsup.models.vit import ViTBackbone


class LightnessConv(nn.Conv2d):
    """A one-channel first convolution fed with the lightness of its RGB input, ``(L - 50) / 50``; a
    one-channel input is read as a grey image (R = G = B)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.autocast(x.device.type, enabled=False):
            rgb = x if x.dtype == torch.float64 else x.float()
            lightness = (rgb_to_lab(rgb)[:, :1] - 50) / 50
        return super().forward(lightness.to(self.weight.dtype))


def read_lightness(encoder: nn.Module) -> None:
    """Replace ``encoder``'s first convolution (3 input channels) with a freshly initialised
    ``LightnessConv`` (the backbone's own initialisation for one input channel)."""
    name = "conv1" if isinstance(encoder, ResNetBackbone) else "conv_proj" if isinstance(encoder, ViTBackbone) else None
    if name is None:
        raise ConfigError(f"--backbone: colorization works with the ResNet and ViT backbones, not "
                          f"{type(encoder).__name__}")
    old = getattr(encoder, name)
    if old.in_channels != 3:
        raise ConfigError(f"--data: colorization needs colour (RGB) images, got {old.in_channels} channel(s); "
                          "try --data photos or folder:PATH with colour images")
    new = LightnessConv(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    if name == "conv1":
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    else:
        nn.init.trunc_normal_(new.weight, std=math.sqrt(1 / new.weight[0].numel()))
        nn.init.zeros_(new.bias)
    setattr(encoder, name, new.to(device=old.weight.device, dtype=old.weight.dtype))


@dataclass
class ColorizationConfig:
    """Paper defaults (Zhang et al. 2016, Sec. 2.1-2.2)."""

    soft_neighbors: int = 5  # bins of the soft-encoded target
    soft_sigma: float = 5.0  # Gaussian of the soft encoding, in ab units
    rebalance_lambda: float = 0.5  # lambda of Eq. 4; 1 weights every bin equally (no rebalancing)
    prior_sigma: float = 5.0  # smoothing of the empirical ab distribution p~
    annealed_temperature: float = 0.38  # T of the annealed mean (preview colours)
    target_stride: int = 4  # predictions and targets at 1 / target_stride of the input resolution
    decoder_width: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.soft_neighbors <= 313:
            raise ValueError(f"--soft-neighbors: must be in 1..313, got {self.soft_neighbors}")
        if not 0 <= self.rebalance_lambda <= 1:
            raise ValueError(f"--rebalance-lambda: must be in [0, 1], got {self.rebalance_lambda}")
        if self.soft_sigma <= 0 or self.prior_sigma <= 0 or self.annealed_temperature <= 0:
            raise ValueError("--soft-sigma, --prior-sigma and --annealed-temperature must be positive")
        if self.target_stride < 1:
            raise ValueError(f"--target-stride: must be >= 1, got {self.target_stride}")


class Colorization(Method):
    name = "colorization"
    Config = ColorizationConfig
    INPUT_NORMALIZATION: ClassVar[tuple[float, float]] = (0.0, 1.0)  # the encoder converts [0, 1] RGB to L
    OPTIMIZER = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-3, "warmup_epochs": 0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "adamw", "lr": 1.6e-2, "weight_decay": 1e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: ColorizationConfig) -> None:
        read_lightness(encoder)
        super().__init__(encoder, config)
        bins = ab_bins()
        self.register_buffer("bins", bins, persistent=False)
        self.register_buffer("ab_counts", torch.zeros(len(bins), dtype=torch.float64))  # p~ before smoothing
        self.decoder = ConvDecoder(self.feature_dim, len(bins), upsamplings_for(encoder, config.target_stride),
                                   width=config.decoder_width)

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: random resized crop and flip, no colour change (the colours are the targets)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.INPUT_NORMALIZATION
        return x * std + mean

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits ``[B, Q, ceil(H / s), ceil(W / s)]`` and the pooled features of the encoder."""
        fmap, features = feature_map(self.encoder, x)
        s = self.config.target_stride
        return self.decoder(fmap, size=(-(-x.shape[-2] // s), -(-x.shape[-1] // s))), features

    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft-encoded targets ``[B, Q, h, w]`` of the ab of every ``target_stride``-th pixel, and each
        pixel's nearest bin ``[B, h, w]``."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            rgb = self.rgb(x)
            rgb = rgb if rgb.dtype == torch.float64 else rgb.float()
            s = self.config.target_stride
            ab = rgb_to_lab(rgb)[:, 1:, ::s, ::s]
            z = soft_encode(ab, self.bins.to(ab.dtype), self.config.soft_neighbors, self.config.soft_sigma)
            return z, z.argmax(dim=1)

    @torch.no_grad()
    def bin_weights(self) -> torch.Tensor:
        """Rebalancing weight ``[Q]`` of each bin under the smoothed distribution seen so far (Eq. 4)."""
        prior = smoothed_distribution(self.ab_counts, self.bins.to(self.ab_counts.dtype), self.config.prior_sigma)
        return rebalancing_weights(prior, self.config.rebalance_lambda)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        z, nearest = self.targets(x)
        with torch.no_grad():
            counts = torch.bincount(nearest.flatten(), minlength=len(self.bins)).to(self.ab_counts.dtype)
            self.ab_counts += comm.all_reduce_sum(counts)
            pixel_weights = self.bin_weights()[nearest]
        logits, features = self.logits(x)
        loss = colorization_loss(logits, z.to(logits.dtype), pixel_weights.to(logits.dtype))
        accuracy = (logits.detach().argmax(dim=1) == nearest).float().mean()
        return StepOutput(loss=loss, features=features.detach(), metrics={"bin_accuracy": accuracy})

    @torch.no_grad()
    def colorize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB ``[B, 3, H, W]`` in [0, 1]: the input's L with the annealed-mean ab of the prediction
        (upsampled bilinearly to the full resolution), as the paper shows its results."""
        logits, _ = self.logits(x)
        ab = annealed_mean(logits.float().softmax(dim=1), self.bins, self.config.annealed_temperature)
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        lightness = rgb_to_lab(self.rgb(x).float())[:, :1]
        return lab_to_rgb(torch.cat([lightness, ab], dim=1))

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        rgb = views[0].float()
        if rgb.shape[1] != 3:
            return []
        x = (rgb - self.INPUT_NORMALIZATION[0]) / self.INPUT_NORMALIZATION[1]
        lightness = rgb_to_lab(rgb)[:, :1] / 100
        return [("encoder input: L", lightness),
                (f"colorized (annealed mean, T={self.config.annealed_temperature})", self.colorize(x))]
