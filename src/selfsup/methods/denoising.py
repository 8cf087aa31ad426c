"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol, ICML 2008, "Extracting and Composing
Robust Features with Denoising Autoencoders").

    x~ ~ q_D(x~ | x)                 corrupt the input
    z = g(f(x~))                     encoder f, decoder g, z = sigmoid(...) in [0, 1]
    L_H(x, z) = -sum_k [x_k log z_k + (1 - x_k) log(1 - z_k)]   reconstruction cross-entropy (Sec. 2.3)

The target is the clean ``x``: the network must undo the corruption, not copy its input. Corruptions:
``masking`` (the paper's, Sec. 2.3): a fixed number ``nu d`` of the ``d`` input components (pixel and
channel), chosen at random per image, set to 0; ``gaussian`` (Vincent et al. 2010, Sec. 4.2): additive
isotropic noise of std ``nu``. Inputs are pixels in [0, 1] as in the paper (``INPUT_NORMALIZATION = (0,
1)``), so a masked component is black. ``loss="mse"`` takes the squared error instead (the paper's
choice for real-valued inputs).

The paper stacks one-hidden-layer autoencoders on 28-px MNIST variants and picks the destruction
fraction nu among 10%, 25%, 40% by validation (Table 1): 25% is the default here. Encoder: the run's
backbone; decoder: up-convolutions from its last feature map to the full resolution
(``models/decoders.py``). The paper trains by plain SGD; here AdamW lr 1e-3 x batch/256 (the paper's
per-layer MLP learning rates do not carry over to a ResNet). Small-image recipe (28-32 px, CPU-sized):
AdamW lr 1.6e-2 x batch/256, weight decay 1e-4, no warm-up: on Fashion-MNIST, one epoch of 3,000
images, the linear probe gained 5, 12, 17 and 19 points over the random-init encoder at 2e-3, 8e-3,
1.6e-2 and 3.2e-2 (BENCHMARKS.md); 1.6e-2 keeps the batch-256 protocol's lr at a size AdamW trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import denoising_loss
from selfsup.methods.patches import BatchRandom, StepRandom
from selfsup.models.decoders import ConvDecoder, feature_map, upsamplings_for

NOISES = ("masking", "gaussian")
LOSSES = ("cross_entropy", "mse")


def masking_noise(x: torch.Tensor, fraction: float, uniform: torch.Tensor) -> torch.Tensor:
    """``x`` with exactly ``round(fraction * d)`` of each image's ``d`` components set to 0: those where
    ``uniform`` (same shape, i.i.d. uniform) is smallest."""
    b = x.shape[0]
    d = x[0].numel()
    k = round(fraction * d)
    if k == 0:
        return x
    drop = uniform.reshape(b, d).topk(k, dim=1, largest=False).indices
    keep = torch.ones(b, d, dtype=x.dtype, device=x.device).scatter_(1, drop.to(x.device), 0.0)
    return x * keep.view_as(x)


@dataclass
class DenoisingAEConfig:
    """Paper defaults (Vincent et al. 2008, Sec. 2.3 and Table 1)."""

    noise: str = "masking"  # "masking" (components set to 0) | "gaussian" (additive)
    corruption: float = 0.25  # masking: fraction nu of components destroyed; gaussian: the noise std
    loss: str = "cross_entropy"  # "cross_entropy" (sigmoid outputs, inputs in [0, 1]) | "mse"
    decoder_width: int = 256

    def __post_init__(self) -> None:
        if self.noise not in NOISES:
            raise ValueError(f"--noise: choose from {', '.join(NOISES)}, got {self.noise!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss: choose from {', '.join(LOSSES)}, got {self.loss!r}")
        if self.corruption < 0 or (self.noise == "masking" and self.corruption >= 1):
            raise ValueError(f"--corruption: a fraction in [0, 1) for masking, a std >= 0 for gaussian, got "
                             f"{self.corruption}")


class DenoisingAE(Method):
    name = "denoising_ae"
    Config = DenoisingAEConfig
    INPUT_NORMALIZATION: ClassVar[tuple[float, float]] = (0.0, 1.0)  # pixels in [0, 1], as the paper
    OPTIMIZER = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "adamw", "lr": 1.6e-2, "weight_decay": 1e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: DenoisingAEConfig) -> None:
        super().__init__(encoder, config)
        channels = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.decoder = ConvDecoder(self.feature_dim, channels, upsamplings_for(encoder), width=config.decoder_width)
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: random resized crop and flip (the corruption is the method's own)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def corrupt(self, x: torch.Tensor, rand: BatchRandom) -> torch.Tensor:
        c = self.config
        if c.noise == "masking":
            return masking_noise(x, c.corruption, rand.uniform(*x.shape[1:]))
        return x + c.corruption * rand.normal(*x.shape[1:]).to(device=x.device, dtype=x.dtype)

    def reconstruct(self, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs ``[B, C, H, W]`` (logits for the cross-entropy loss) and the pooled features."""
        fmap, features = feature_map(self.encoder, corrupted)
        return self.decoder(fmap, size=corrupted.shape[-2:]), features

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        out, features = self.reconstruct(self.corrupt(x, self.randomness.draw(x.shape[0])))
        loss = denoising_loss(out, x, self.config.loss)
        with torch.no_grad():
            pixels = out.sigmoid() if self.config.loss == "cross_entropy" else out
            mse = (pixels.float() - x.float()).pow(2).mean()
        return StepOutput(loss=loss, features=features.detach(), metrics={"reconstruction_mse": mse})

    @torch.no_grad()
    def denoise(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The reconstruction in pixel units (``sigmoid`` of the outputs for the cross-entropy loss)."""
        out, _ = self.reconstruct(corrupted)
        return out.sigmoid() if self.config.loss == "cross_entropy" else out

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        x = views[0].float()  # INPUT_NORMALIZATION (0, 1): the views are the inputs
        corrupted = self.corrupt(x, BatchRandom(0, 0, x.shape[0]))  # fixed noise: the same preview every time
        return [(f"encoder input ({self.config.noise} {self.config.corruption:g})", corrupted.clamp(0, 1)),
                ("reconstruction", self.denoise(corrupted).clamp(0, 1))]
