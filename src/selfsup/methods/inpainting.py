"""Context encoder: feature learning by inpainting (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016).

    x^ = F((1 - M) x)                     encoder f, decoder g: F = g(f(.)); hidden pixels set to the mean
    L_rec = ||W (x - x^)||^2 / |region|   W = 1 on the hidden pixels, 10 in the overlap band (Sec. 3.2,
                                          Eq. 1 with the official code's overlap weighting), 0 elsewhere
    L = L_rec (default), or (1 - l_adv) L_rec + l_adv L_adv with a discriminator D   (Eq. 2-3, l_adv 0.001)

**Masks** (Sec. 3.3). ``center``: the central square of half the image side (64 of 128 px); the network
sees all but its inner part, ``overlap`` pixels in from each edge (official ``overlapPred`` 4 px at
128 px, 1 px at 32), and predicts the whole square: the visible band is the "overlap" whose loss weighs
10x (official ``overlapL2Weight``), so the prediction joins its context. ``random`` (the paper's choice
for feature learning, Sec. 5.2): a random region, the official generator's smooth noise (uniform noise
on a ~7.7 x 7.7 grid across the image, upsampled bicubically) thresholded so that a quarter of the
image is hidden (the official code keeps patterns with 20-30% hidden); the overlap band is every
visible pixel within ``overlap`` pixels of the hidden region. Hidden pixels are set to 0, the middle of
the [-1, 1] pixel range (the official code fills the dataset's mean colour, the same kind of constant):
``INPUT_NORMALIZATION = (0.5, 0.5)`` scales pixels to [-1, 1] as the official code does.

**The adversarial term is off by default.** The paper trained its feature-learning encoders with the
reconstruction loss alone ("we did not manage to make the adversarial loss converge with AlexNet",
Sec. 5.2; the released feature model is the L2 one); the adversarial term sharpens inpainted pixels,
which is what the paper's inpainting figures show, not what a linear probe reads. It is also a two-player
game: the official code alternates an Adam step of D and one of the encoder-decoder, while the loop here
takes one step on one loss. With ``adversarial_weight`` > 0 that loss is the encoder-decoder's
``(1 - l) L_rec + l L_adv`` plus D's binary cross-entropy on real images and (detached) inpainted ones;
the generator's term goes through a copy of D's weights without gradient, so neither player's loss
moves the other's parameters, and D learns at 1/10 of the lr (the official code's 10x generator lr).

Encoder: the run's backbone; decoder: up-convolutions from its last feature map to the full
resolution (``models/decoders.py``). Defaults (Sec. 5.2 and the official ``train_random.lua``): Adam lr
1e-4 for random regions (1e-3 for the centre), beta1 0.5, batch 64 (lr x batch/256 here: 4e-4), no weight
decay; AdamW here (betas 0.9/0.999). Small-image recipe (28-32 px, CPU-sized): AdamW lr 1.6e-2 x
batch/256, weight decay 1e-4, no warm-up: on Fashion-MNIST, one epoch of 3,000 images, the linear probe
gained 3, 6, 8 and 12 points over the random-init encoder at 2e-3, 8e-3, 1.6e-2 and 3.2e-2
(BENCHMARKS.md); 1.6e-2 keeps the batch-256 protocol's lr at a size AdamW trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import context_encoder_loss
from selfsup.methods.patches import BatchRandom, StepRandom
from selfsup.models.decoders import ConvDecoder, feature_map, upsamplings_for

MASKS = ("center", "random")
NOISE_CELLS = 128 * 0.06  # the official random-region pattern: noise at 0.06 x the resolution, 128-px crops


def center_mask(height: int, width: int, overlap: int, device: torch.device | None = None) -> torch.Tensor:
    """Hidden pixels ``[1, 1, H, W]`` (bool): the central square of half the image side, less ``overlap``
    pixels on each side (the official ``real_ctx`` fill)."""
    top, left = height // 4, width // 4
    mask = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
    mask[..., top + overlap:top + height // 2 - overlap, left + overlap:left + width // 2 - overlap] = True
    return mask


def random_region_mask(noise: torch.Tensor, height: int, width: int, fraction: float) -> torch.Tensor:
    """Hidden pixels ``[B, 1, H, W]``: the low-resolution ``noise`` ``[B, 1, g, g]`` upsampled bicubically
    and thresholded per image so that ``fraction`` of the pixels are hidden."""
    smooth = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False).flatten(1)
    k = max(1, round(fraction * height * width))
    threshold = smooth.kthvalue(k, dim=1, keepdim=True).values
    return (smooth <= threshold).view(-1, 1, height, width)


def overlap_weights(hidden: torch.Tensor, overlap: int, weight: float = 10.0) -> torch.Tensor:
    """Loss weights ``[B, 1, H, W]``: 1 on ``hidden`` pixels, ``weight`` on the visible ones within ``overlap``
    pixels of them (a square neighbourhood), 0 elsewhere. For the centre mask this is the official weighting
    of the predicted central square."""
    hidden_f = hidden.float()
    if overlap > 0:
        band = F.max_pool2d(hidden_f, 2 * overlap + 1, stride=1, padding=overlap) - hidden_f
    else:
        band = torch.zeros_like(hidden_f)
    return hidden_f + weight * band


def discriminator(channels: int, width: int = 64, layers: int = 3) -> nn.Sequential:
    """DCGAN-style critic: ``layers`` 4x4 stride-2 convolutions with LeakyReLU 0.2 (channels doubling from
    ``width``), global average pooling and a linear score; no normalisation layers, so a copy of its
    weights computes the same function."""
    modules: list[nn.Module] = []
    c_in, c_out = channels, width
    for _ in range(layers):
        modules += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c_in, c_out = c_out, c_out * 2
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1)]
    return nn.Sequential(*modules)


@dataclass
class InpaintingConfig:
    """Paper defaults (Pathak et al. 2016, Sec. 3.2-3.3 and 5.2; official code)."""

    mask: str = "random"  # "random" region (feature learning, Sec. 5.2) | "center" square
    hidden_fraction: float = 0.25  # random regions: the part of the image hidden
    overlap_fraction: float = 4 / 128  # overlap band width / image side (official overlapPred 4 px at 128 px)
    overlap_weight: float = 10.0  # loss weight of the overlap band (official overlapL2Weight)
    adversarial_weight: float = 0.0  # lambda_adv (0.001 in the paper's inpainting models); 0: reconstruction only
    decoder_width: int = 256

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"--mask: choose from {', '.join(MASKS)}, got {self.mask!r}")
        if not 0 < self.hidden_fraction < 1:
            raise ValueError(f"--hidden-fraction: must be in (0, 1), got {self.hidden_fraction}")
        if not 0 <= self.overlap_fraction < 0.25:
            raise ValueError(f"--overlap-fraction: must be in [0, 0.25), got {self.overlap_fraction}")
        if not 0 <= self.adversarial_weight < 1:
            raise ValueError(f"--adversarial-weight: must be in [0, 1), got {self.adversarial_weight}")


class Inpainting(Method):
    name = "inpainting"
    Config = InpaintingConfig
    INPUT_NORMALIZATION: ClassVar[tuple[float, float]] = (0.5, 0.5)  # pixels in [-1, 1], as the official code
    OPTIMIZER = {"optimizer": "adamw", "lr": 4e-4, "weight_decay": 0.0, "warmup_epochs": 0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "adamw", "lr": 1.6e-2, "weight_decay": 1e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: InpaintingConfig) -> None:
        super().__init__(encoder, config)
        self.channels = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.decoder = ConvDecoder(self.feature_dim, self.channels, upsamplings_for(encoder),
                                   width=config.decoder_width)
        self.critic = discriminator(self.channels) if config.adversarial_weight > 0 else None
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: random resized crop and flip (the official loader's random crops of 350-px images)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def overlap(self, size: int) -> int:
        return round(self.config.overlap_fraction * size)

    def hidden(self, x: torch.Tensor, rand: BatchRandom) -> torch.Tensor:
        """The hidden pixels ``[B, 1, H, W]`` of this batch."""
        b, _, h, w = x.shape
        if self.config.mask == "center":
            return center_mask(h, w, self.overlap(min(h, w)), x.device).expand(b, -1, -1, -1)
        cells = max(2, round(NOISE_CELLS))
        return random_region_mask(rand.uniform(1, cells, cells).to(x.device), h, w, self.config.hidden_fraction)

    def inpaint(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masked input, reconstruction [B, C, H, W], pooled features)``: hidden pixels set to 0."""
        masked = x * (~hidden).to(x.dtype)
        fmap, features = feature_map(self.encoder, masked)
        return masked, self.decoder(fmap, size=x.shape[-2:]), features

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        hidden = self.hidden(x, self.randomness.draw(x.shape[0]))
        _, reconstruction, features = self.inpaint(x, hidden)
        weights = overlap_weights(hidden, self.overlap(min(x.shape[-2:])), self.config.overlap_weight)
        rec = context_encoder_loss(reconstruction, x, weights)
        metrics = {"reconstruction_loss": rec.detach(),
                   "hidden_mse": context_encoder_loss(reconstruction.detach(), x, hidden)}
        loss = rec
        if self.critic is not None:
            loss = self._adversarial(x, reconstruction, weights > 0, rec, metrics)
        return StepOutput(loss=loss, features=features.detach(), metrics=metrics)

    def _adversarial(self, x: torch.Tensor, reconstruction: torch.Tensor, region: torch.Tensor, rec: torch.Tensor,
                     metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(1 - l) L_rec + l L_adv`` for the encoder-decoder plus the critic's own loss (Eq. 2-3)."""
        lam = self.config.adversarial_weight
        fake = torch.where(region, reconstruction, x)  # the prediction pasted into its context
        real_score, fake_score = self.critic(x), self.critic(fake.detach())
        critic_loss = F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score)) + \
            F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score))
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        generator_score = functional_call(self.critic, frozen, (fake,))
        adversarial = F.binary_cross_entropy_with_logits(generator_score, torch.ones_like(generator_score))
        metrics.update(adversarial_loss=adversarial.detach(), critic_loss=critic_loss.detach())
        return (1 - lam) * rec + lam * adversarial + critic_loss

    def param_groups(self) -> list[dict[str, Any]]:
        if self.critic is None:
            return super().param_groups()
        critic = set(self.critic.parameters())
        return [{"params": [p for p in self.parameters() if p.requires_grad and p not in critic]},
                {"params": list(self.critic.parameters()), "lr_multiplier": 0.1}]

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        mean, std = self.INPUT_NORMALIZATION
        x = (views[0].float() - mean) / std
        hidden = self.hidden(x, BatchRandom(0, 0, x.shape[0]))  # fixed masks: the same preview every time
        masked, reconstruction, _ = self.inpaint(x, hidden)
        filled = torch.where(hidden, reconstruction, x)
        return [("encoder input (hidden region)", (masked * std + mean).clamp(0, 1)),
                ("inpainted", (filled * std + mean).clamp(0, 1))]
