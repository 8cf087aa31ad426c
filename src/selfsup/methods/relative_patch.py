"""Relative patch location: context prediction (Doersch, Gupta & Efros, ICCV 2015).

    a 3 x 3 grid of patches with gaps, each jittered                          (Sec. 3, Fig. 2)
    centre patch c = patch 5, neighbour n = one of the 8 others, k its position (0..7, row by row)
    logits = fc9(fc8(fc7([fc6(f(c)), fc6(f(n))])))        shared patch encoder f (the pair network)
    loss = -log softmax(logits)[k], batch mean

Each image gives one pair per step: its centre patch and a neighbour drawn uniformly, labelled by the
neighbour's place on the grid (0 1 2 / 3 . 4 / 5 6 7). The paper's guards against trivial solutions
(Sec. 3.1, 4), each a switch:

* gaps and jitter: patches ``patch_gap`` apart and each shifted by up to ``patch_jitter`` pixels, so no
  edge or texture continues from one patch into the next;
* ``color_dropping``: chromatic aberration (lenses shift the colour channels relative to each other by
  an amount that depends on the position in the image) tells where a patch was cut. Of each colour patch
  two of the three channels are replaced by Gaussian noise of 1/100 the remaining channel's std (colour
  images only; a 1-channel image has no aberration to hide);
* ``pixelation``: a third of the patches are downsampled to as few as 100 pixels (10 x 10 of 96 x 96:
  here a side of 10/96 of the patch, at least 2 px), side drawn with a uniform area, and upsampled back,
  so the network cannot rely on fine detail alone;
* ``normalize_patches``: each patch's channels lose their mean and the patch is scaled to unit RMS
  (the official code, "so that gradients are a less useful cue").

Defaults (paper Sec. 3-4; official ``cdoersch/deepcontext``): 96-px patches, 48-px gap, jitter up to
7 px; the pair network's fc6 4096 per patch with BatchNorm, fc7 4096 with BatchNorm, fc8 4096, fc9 8;
SGD without momentum at a constant lr 1e-5 on the loss summed over ~4000 pairs (about 0.04 on the mean
loss, 0.004 with the momentum 0.9 of the loop's SGD), no weight decay.
Small-image recipe (Fashion-MNIST 28 px, CPU-sized; BENCHMARKS.md): 7-px patches, gap 2, jitter 1 (a
27-px grid: the paper's gap of half a patch and 7-px jitter do not fit three patches into 28 px), resized
to 14 px before the encoder (``patch_input_size``; as the jigsaw's tiles), fc6 128, fc7/fc8 256, SGD lr
1.0 x batch/256, weight decay 5e-4. Measured with 5,000 images, batch 64, width 0.25, 3 epochs, lr 0.4:
linear probe 75.7% with 14-px inputs, 72.9% with 7-px ones; random init 70.5%. Pixelation and colour
dropping stay on (the latter does nothing on 1-channel images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import pretext_accuracy, pretext_classification_loss
from selfsup.methods.patches import BatchRandom, GridLayout, StepRandom, cut_tiles, resize_tiles
from selfsup.models.norm import make_norm

CENTRE = 4  # index of the centre patch on the 3 x 3 grid
NEIGHBOURS = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])  # grid index of neighbour label k
MIN_PIXELATED_FRACTION = 10 / 96  # the paper: as few as 100 pixels of a 96 x 96 patch


@dataclass
class RelativePatchConfig:
    """Paper defaults (Doersch et al. 2015, Sec. 3-4; official code)."""

    patch_size: int = 96
    patch_gap: int = 48
    patch_jitter: int = 7
    color_dropping: bool = True
    pixelation: bool = True
    pixelation_p: float = 1 / 3
    normalize_patches: bool = True
    patch_input_size: int = 0  # side the patches are resized to (bilinear) before the encoder; 0: as cut
    patch_dim: int = 4096  # fc6, per patch
    hidden_dim: int = 4096  # fc7 and fc8
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        GridLayout(self.patch_size, self.patch_gap, self.patch_jitter)  # raises on a bad layout
        if self.patch_input_size < 0:
            raise ValueError(f"--patch-input-size: must be >= 0 (0: as cut), got {self.patch_input_size}")
        if not 0 <= self.pixelation_p <= 1:
            raise ValueError(f"--pixelation-p: must be in [0, 1], got {self.pixelation_p}")


def drop_colours(patches: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Colour dropping: of each patch [N, C, p, p] only channel ``keep`` [N] stays; the others become
    ``noise`` [N, C, p, p] (standard normal) times 1/100 the kept channel's std."""
    rows = torch.arange(patches.shape[0], device=patches.device)
    kept = patches[rows, keep]  # [N, p, p]
    scale = 0.01 * kept.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    out = noise.to(patches) * scale
    out[rows, keep] = kept
    return out


def pixelate(patches: torch.Tensor, selected: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """The ``selected`` [N] patches [N, C, p, p] downsampled to ``sides`` [N] pixels a side (antialiased)
    and upsampled back to p (bilinear); the others unchanged."""
    out = patches.clone()
    p = patches.shape[-1]
    for side in sides[selected].unique().tolist():
        rows = (selected & (sides == side)).nonzero().flatten().to(patches.device)
        small = F.interpolate(patches[rows], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[rows] = F.interpolate(small, size=(p, p), mode="bilinear", align_corners=False)
    return out


def normalize_patches(patches: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Each channel of each patch [N, C, p, p] to zero mean, then each patch to unit root mean square (floored
    at ``eps``, 1/100 of the data's std, so that a flat patch stays flat)."""
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    rms = centred.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt()
    return centred / rms.clamp_min(eps)


class RelativePatch(Method):
    name = "relative_patch"
    Config = RelativePatchConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.004, "weight_decay": 0.0, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"patch_size": 7, "patch_gap": 2, "patch_jitter": 1, "patch_input_size": 14, "patch_dim": 128,
                          "hidden_dim": 256}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 5e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: RelativePatchConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.layout = GridLayout(c.patch_size, c.patch_gap, c.patch_jitter)
        self.fc6 = nn.Sequential(nn.Linear(self.feature_dim, c.patch_dim), make_norm(c.head_norm, c.patch_dim, dims=1),
                                 nn.ReLU(inplace=True))
        self.head = nn.Sequential(  # fc7 (with norm), fc8, fc9 on the concatenated pair
            nn.Linear(2 * c.patch_dim, c.hidden_dim), make_norm(c.head_norm, c.hidden_dim, dims=1),
            nn.ReLU(inplace=True), nn.Linear(c.hidden_dim, c.hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(c.hidden_dim, len(NEIGHBOURS)))
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: a random crop, no flip and no colour change (the paper samples patches as they are)."""
        self.layout.check(size, "--patch-size / --patch-gap / --patch-jitter")
        return [ViewSpec(size=size, crop_scale=crop_scale, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def pairs(self, images: torch.Tensor, rand: BatchRandom) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (centre, neighbour) patches ``[B, 2, C, p, p]`` of ``images`` [B, C, S, S] as cut (jittered,
        before the guards), each neighbour's label ``[B]`` (0..7) and the patches' top-left corners
        ``[B, 2, 2]``."""
        self.layout.check(images.shape[-1], "--patch-size / --patch-gap / --patch-jitter")
        labels = rand.integers(0, len(NEIGHBOURS))
        which = torch.stack([torch.full_like(labels, CENTRE), NEIGHBOURS[labels]], dim=1)
        positions = self.layout.positions(images.shape[-1], self.layout.draw_offsets(rand, 2), which)
        return cut_tiles(images, positions, self.layout.tile), labels.to(images.device), positions

    def guard(self, patches: torch.Tensor, rand: BatchRandom) -> torch.Tensor:
        """Pixelation, colour dropping (colour images) and per-patch normalisation, each when switched on,
        of ``patches`` [B, 2, C, p, p]."""
        c = self.config
        b, k, channels, p, _ = patches.shape
        x = patches.flatten(0, 1)
        low = max(2, round(MIN_PIXELATED_FRACTION * p))
        if c.pixelation and p > low:
            selected = (rand.uniform(k) < c.pixelation_p).flatten()
            area = rand.uniform(k).flatten() * ((p - 1) ** 2 - low**2) + low**2  # side drawn with a uniform area
            x = pixelate(x, selected, area.sqrt().floor().long().clamp(low, p - 1))
        if c.color_dropping and channels == 3:
            x = drop_colours(x, rand.integers(0, channels, k).flatten().to(x.device),
                             rand.normal(k, channels, p, p).flatten(0, 1))
        if c.normalize_patches:
            x = normalize_patches(x)
        return x.view(b, k, channels, p, p)

    def logits(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour-position logits ``[B, 8]`` of (centre, neighbour) ``patches`` and the patch features
        ``[B, 2, D]``."""
        b = patches.shape[0]
        features = self.encoder(resize_tiles(patches.flatten(0, 1), self.config.patch_input_size)).view(b, 2, -1)
        return self.head(self.fc6(features.flatten(0, 1)).view(b, -1)), features

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        rand = self.randomness.draw(views[0].shape[0])
        patches, labels, _ = self.pairs(views[0], rand)
        logits, features = self.logits(self.guard(patches, rand))
        loss = pretext_classification_loss(logits, labels)
        # the online probe reads the mean of the two patch features
        return StepOutput(loss=loss, features=features.mean(dim=1).detach(),
                          metrics={"location_accuracy": pretext_accuracy(logits.detach(), labels)})

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """Where the two patches were cut, then the centre and the neighbour as the network gets them (after
        the guards, rescaled to [0, 1])."""
        x = views[0]
        rand = BatchRandom(0, 0, x.shape[0])
        patches, _, positions = self.pairs(x, rand)
        guarded = self.guard(patches, rand)
        lo = guarded.flatten(2).min(dim=2).values[..., None, None, None]
        hi = guarded.flatten(2).max(dim=2).values[..., None, None, None]
        shown = (guarded - lo) / (hi - lo).clamp_min(1e-6)
        where, t = x.clone() * 0.4, self.layout.tile  # the dimmed image, the two patches at full brightness
        for i in range(x.shape[0]):
            for r, col in positions[i].tolist():
                where[i, :, r:r + t, col:col + t] = x[i, :, r:r + t, col:col + t]
        return [("the pair, where cut", where), ("centre patch (input)", shown[:, 0]),
                ("neighbour (input)", shown[:, 1])]
