"""CPC v2: Data-Efficient Image Recognition with Contrastive Predictive Coding (Henaff et al., ICML 2020).

    x -> a G x G grid of overlapping patches x_ij, each augmented on its own (patch-based augmentation)
    z_ij = f(x_ij)                          every patch through the encoder (layer norm, not batch norm)
    c = g(z)                                masked (PixelCNN-style) context network: c_ij sees rows <= i
    loss = - mean over (i, j), k of  log exp(W_k c_ij . t_i+k,j) / sum_l exp(W_k c_ij . t_l)   (InfoNCE)
           t = a 1x1 projection of z; negatives t_l: every other position of every image of the batch

The context network is the residual stack of the paper's pseudo-code: per layer 1x1 conv, ReLU,
1x3 conv, one row of zero padding on top, 2x1 conv, ReLU, 1x1 conv, added to its input; so c_ij
sees the rows i - layers .. i and no row below i. Predictions skip the ``steps_to_ignore`` nearest
rows (k = steps_to_ignore + 1 .. steps_to_predict): with patches overlapping by half, the patches
of rows i + 1 and i share pixels, and the context would see part of its target. The method refuses a
grid in which the nearest predicted row overlaps the context's rows.

CPC v2's changes to CPC v1 that matter here: layer norm replaces batch norm in the encoder (batch
statistics mix the patches of a batch, which lets the network see the rows it predicts: the
``encoder_norm`` option turns every BatchNorm of the backbone into a per-sample layer norm, with
its affine parameters kept), predictions in several directions (``directions``: 1 top-down, 2 adds
bottom-up, 4 adds both horizontal ones; each its own context network and projections, applied to
the grid rotated by 0/180/90/270 degrees; the losses are averaged), and patch-based augmentation
(each patch on its own: flipped, contrast/brightness-jittered, the shift in units of the image's
std, and on RGB data colour-dropped, two of three channels set to the dataset mean; the paper also
draws from AutoAugment's operations, which are not implemented). The random draws of the patch
augmentation are made for the global batch from a seeded step counter, so one process and several
see the same patches.

Grid (``grid`` patches per side, side ``patch_fraction`` x the image, evenly spaced): the paper cuts
64-px patches with stride 32 from 256-px images, a 7 x 7 grid (``patch_fraction`` 0.25); the
pseudo-code predicts 3 rows ahead (steps_to_ignore 2, steps_to_predict 3) with 64-d targets, a
5-layer context network of width 256 and a prediction scale of 0.1. Optimiser: Adam at lr 2e-4
(CPC v1's; here AdamW without weight decay).

Small images (28-32 px; ``SMALL_IMAGE_RECIPE``, measured on Fashion-MNIST, BENCHMARKS.md): a 6 x 6
grid of patches 8/28 of the side (at 28 px: 8-px patches at offsets 0, 4, ..., 20, i.e. stride 4 and
half-patch overlap as the paper's; at 32 px: 9-px patches at 0, 5, 9, 14, 18, 23), predicting 2 and 3
rows ahead (the nearest row that shares no pixel with the context's), a context network of 3 layers
of width 64, and AdamW at lr 0.016 x batch/256 (0.004 at batch 64): at the paper's 2e-4 the encoder
barely moves in a few hundred steps. Evaluation encodes the whole image with the trained encoder
(its layer norms work at any size), not the patch grid of the paper's linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import gather_with_grad, rank, world_size
from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import cpc_infonce_loss
from selfsup.models.norm import NORMS, make_norm

# the grid rotations (multiples of 90 degrees) of the prediction directions: top-down, bottom-up, then
# the two horizontal ones
DIRECTION_ROTATIONS = (0, 2, 1, 3)
EMBEDDING_ROWS = 1024  # at most this many (prediction, target) pairs go to the collapse monitors


class GlobalBatchRandom(nn.Module):
    """Random numbers drawn for the global batch, the same on every process and after a resume.

    Each call of :meth:`generator` returns a CPU generator seeded from ``(seed, draws)``; both are
    buffers (saved in checkpoints), and a host-side copy of the counter avoids reading the device
    every step. A method draws for ``rows_per_process x world_size`` rows and keeps
    :meth:`local_rows`, so a 1-process run of the global batch draws what N processes draw together.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seed", torch.randint(2**31 - 1, ()))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self._host: tuple[int, int] | None = None

    def generator(self) -> torch.Generator:
        if self._host is None:
            self._host = (int(self.seed), int(self.draws))
        seed, draws = self._host
        self._host = (seed, draws + 1)
        self.draws.add_(1)
        return torch.Generator().manual_seed(seed * 1_000_003 + draws)

    @staticmethod
    def local_rows(rows_per_process: int) -> slice:
        return slice(rank() * rows_per_process, (rank() + 1) * rows_per_process)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[override]
        self._host = None
        super()._load_from_state_dict(*args, **kwargs)


def patch_geometry(size: int, grid: int, patch_fraction: float) -> tuple[int, torch.Tensor]:
    """``(patch side, top-left offsets [grid])``: patches of ``round(patch_fraction x size)`` pixels,
    the first at 0 and the last at ``size - patch``, evenly spaced in between (rounded)."""
    patch = max(1, min(size, int(round(patch_fraction * size))))
    return patch, torch.linspace(0, size - patch, grid).round().long()


def extract_patches(x: torch.Tensor, patch: int, positions: torch.Tensor) -> torch.Tensor:
    """``[B, C, S, S]`` -> ``[B, G, G, C, patch, patch]``: the patch at grid row i, column j starts
    at pixel ``(positions[i], positions[j])``."""
    idx = positions.to(x.device).view(-1, 1) + torch.arange(patch, device=x.device)  # [G, patch]
    tiles = x[:, :, idx][..., idx]  # [B, C, G, patch, G, patch]
    return tiles.permute(0, 2, 4, 1, 3, 5)


def check_no_overlap(patch: int, positions: torch.Tensor, nearest_offset: int, size: int) -> None:
    """Raise unless every patch row starts below the bottom of the row ``nearest_offset`` above it."""
    k = nearest_offset
    if positions.numel() <= k or int((positions[k:] - positions[:-k]).min()) < patch:
        raise ValueError(
            f"cpc_v2: at {size} px a grid of {positions.numel()} patches of {patch} px puts rows "
            f"{nearest_offset} apart within one patch of each other (offsets {positions.tolist()}): the "
            "context would see pixels of the rows it predicts; raise --steps-to-ignore, lower "
            "--patch-fraction or --grid")


@torch.no_grad()
def draw_patch_augmentation(shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform draws for every patch of ``shape = (images, grid, grid)``: the same numbers whatever the
    options, so the stream does not depend on them."""
    names = ("flip", "jitter", "contrast", "brightness", "color_drop", "keep_channel")
    return {name: torch.rand(shape, generator=generator, dtype=torch.float64) for name in names}


def augment_patches(patches: torch.Tensor, draws: dict[str, torch.Tensor], flip_p: float, jitter_p: float,
                    contrast: float, brightness: float, color_drop_p: float, scale: torch.Tensor,
                    fill: float = 0.0) -> torch.Tensor:
    """Each patch of ``[B, G, G, C, p, p]`` on its own: horizontal flip (``flip_p``); with ``jitter_p``
    a contrast factor in ``[1 - contrast, 1 + contrast]`` around the patch mean and a brightness shift
    in ``[-brightness, brightness]`` x ``scale`` (``[B]``, the image's std: the same change on normalised
    or [0, 1] images); on 3-channel patches, with ``color_drop_p``, every channel but one (uniform) set to
    ``fill`` (0: the dataset mean of normalised images)."""
    b, g, _, c, _, _ = patches.shape
    d = {k: v[:b].to(device=patches.device, dtype=patches.dtype).view(b, g, g, 1, 1, 1) for k, v in draws.items()}
    x = torch.where(d["flip"] < flip_p, patches.flip(-1), patches)
    factor = 1 - contrast + 2 * contrast * d["contrast"]
    shift = brightness * (2 * d["brightness"] - 1) * scale.to(patches.dtype).view(b, 1, 1, 1, 1, 1)
    mean = x.mean(dim=(3, 4, 5), keepdim=True)
    x = torch.where(d["jitter"] < jitter_p, factor * (x - mean) + mean + shift, x)
    if c == 3 and color_drop_p > 0:
        keep = (d["keep_channel"] * 3).floor().clamp_(max=2)  # the channel that survives
        channel = torch.arange(3, device=x.device, dtype=x.dtype).view(1, 1, 1, 3, 1, 1)
        x = torch.where((d["color_drop"] < color_drop_p) & (channel != keep), torch.full_like(x, fill), x)
    return x


class MaskedContextNetwork(nn.Module):
    """The PixelCNN-style context network of the CPC v2 pseudo-code: ``layers`` residual blocks of 1x1
    conv, ReLU, 1x3 conv (same width), a zero row padded on top, 2x1 conv (valid), ReLU, 1x1 conv; then
    ReLU. Output row i depends on input rows i - layers .. i only."""

    def __init__(self, dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1)),
                          nn.ZeroPad2d((0, 0, 1, 0)), nn.Conv2d(hidden, hidden, (2, 1)), nn.ReLU(),
                          nn.Conv2d(hidden, dim, 1))
            for _ in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            z = z + block(z)
        return F.relu(z)


class CPCDirection(nn.Module):
    """One prediction direction: context network, target projection, one prediction per offset."""

    def __init__(self, dim: int, hidden: int, layers: int, target_dim: int, offsets: int) -> None:
        super().__init__()
        self.context = MaskedContextNetwork(dim, hidden, layers)
        self.target = nn.Conv2d(dim, target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(dim, target_dim, 1) for _ in range(offsets))


def replace_batchnorms(module: nn.Module, kind: str) -> int:
    """Swap every ``BatchNorm2d`` of ``module`` for ``make_norm(kind, C, dims=2)``, carrying over the
    affine parameters (so e.g. zero-initialised residual blocks stay zero-initialised); returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = make_norm(kind, child.num_features, dims=2)
            if child.affine and getattr(new, "weight", None) is not None:
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    new.bias.copy_(child.bias)
            setattr(module, name, new)
            count += 1
        else:
            count += replace_batchnorms(child, kind)
    return count


@dataclass
class CPCConfig:
    """CPC v2 defaults (Henaff et al. 2020 and its pseudo-code)."""

    grid: int = 7  # patches per side
    patch_fraction: float = 0.25  # patch side / image side (64 of 256 px)
    target_dim: int = 64
    context_dim: int = 256  # hidden width of the context network
    context_layers: int = 5
    steps_to_ignore: int = 2  # predicted rows: i + k for k = steps_to_ignore + 1 .. steps_to_predict
    steps_to_predict: int = 3
    prediction_scale: float = 0.1  # the pseudo-code's emb_scale
    directions: int = 4  # 1: top-down; 2: + bottom-up; 4: + both horizontal directions
    encoder_norm: str = "layernorm"  # replaces the backbone's BatchNorms; "batchnorm" keeps them (CPC v1)
    patch_flip_p: float = 0.5
    patch_jitter_p: float = 0.8
    patch_contrast: float = 0.4
    patch_brightness: float = 0.4
    patch_color_drop_p: float = 1.0  # RGB only: keep one channel of each patch

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"--grid: must be >= 2, got {self.grid}")
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"--patch-fraction: must be in (0, 1], got {self.patch_fraction}")
        if not 0 <= self.steps_to_ignore < self.steps_to_predict < self.grid:
            raise ValueError("--steps-to-ignore / --steps-to-predict: need 0 <= steps_to_ignore < steps_to_predict "
                             f"< grid ({self.grid}), got {self.steps_to_ignore} / {self.steps_to_predict}")
        if self.directions not in (1, 2, 4):
            raise ValueError(f"--directions: choose 1, 2 or 4, got {self.directions}")
        if self.encoder_norm not in NORMS:
            raise ValueError(f"--encoder-norm: choose from {', '.join(NORMS)}, got {self.encoder_norm!r}")
        if self.context_layers < 0 or self.context_dim < 1 or self.target_dim < 1:
            raise ValueError("--context-layers must be >= 0, --context-dim and --target-dim >= 1")

    @property
    def offsets(self) -> list[int]:
        return list(range(self.steps_to_ignore + 1, self.steps_to_predict + 1))


class CPC(Method):
    name = "cpc_v2"
    Config = CPCConfig
    OPTIMIZER = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.0, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"grid": 6, "patch_fraction": 8 / 28, "steps_to_ignore": 1, "steps_to_predict": 3,
                          "context_dim": 64, "context_layers": 3}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "adamw", "lr": 0.016, "weight_decay": 0.0, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: CPCConfig) -> None:
        super().__init__(encoder, config)
        c = config
        if c.encoder_norm != "batchnorm" and replace_batchnorms(encoder, c.encoder_norm):
            self.backbone_norm = c.encoder_norm  # what export rebuilds the backbone with
        self.heads = nn.ModuleList(CPCDirection(self.feature_dim, c.context_dim, c.context_layers, c.target_dim,
                                                len(c.offsets)) for _ in range(c.directions))
        self.patch_random = GlobalBatchRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: a random crop and flip of the image (the colour changes happen per patch)."""
        return [ViewSpec(size=size, crop_scale=crop_scale, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0)]

    def geometry(self, size: int) -> tuple[int, torch.Tensor]:
        patch, positions = patch_geometry(size, self.config.grid, self.config.patch_fraction)
        check_no_overlap(patch, positions, self.config.offsets[0], size)
        return patch, positions

    def patches(self, x: torch.Tensor, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
        """The augmented patch grid ``[B, G, G, C, p, p]`` of images ``x`` (draws for the global batch)."""
        c, b = self.config, x.shape[0]
        patch, positions = self.geometry(x.shape[-1])
        draws = draw_patch_augmentation((b * world_size(), c.grid, c.grid), generator)
        mine = {k: v[GlobalBatchRandom.local_rows(b)] for k, v in draws.items()}
        return augment_patches(extract_patches(x, patch, positions), mine, c.patch_flip_p, c.patch_jitter_p,
                               c.patch_contrast, c.patch_brightness, c.patch_color_drop_p,
                               x.detach().flatten(1).std(dim=1), fill)

    def latents(self, patches: torch.Tensor) -> torch.Tensor:
        """Encoder features of every patch as a grid ``[B, D, G, G]``."""
        b, g = patches.shape[:2]
        z = self.encoder(patches.reshape(b * g * g, *patches.shape[3:]))
        return z.view(b, g, g, -1).permute(0, 3, 1, 2)

    def direction_outputs(self, z: torch.Tensor, d: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(targets, predictions per offset) of direction ``d`` on the grid rotated into its frame."""
        head = self.heads[d]
        z = torch.rot90(z, DIRECTION_ROTATIONS[d], dims=(2, 3))
        context = head.context(z)
        return head.target(z), [p(context) * self.config.prediction_scale for p in head.predictors]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        c, x = self.config, views[0]
        b = x.shape[0]
        z = self.latents(self.patches(x, self.patch_random.generator()))
        losses, pairs = [], None
        for d in range(c.directions):
            targets, predictions = self.direction_outputs(z, d)
            all_targets = gather_with_grad(targets)
            for offset, p in zip(c.offsets, predictions):
                losses.append(cpc_infonce_loss(p, all_targets, offset, rank() * b))
                if pairs is None:
                    pairs = (p[:, :, :c.grid - offset], targets[:, :, offset:])
        loss = torch.stack(losses).sum() / c.directions  # summed over offsets, averaged over directions
        p, t = (e.detach().permute(0, 2, 3, 1).reshape(-1, c.target_dim)[:EMBEDDING_ROWS] for e in pairs)
        return StepOutput(loss=loss, embeddings=(p, t), features=z.detach().mean(dim=(2, 3)),
                          metrics={"cpc_loss": loss.detach()})

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The augmented patch grid of the first view, tiled with 1-px gaps."""
        x = views[0]
        tiles = self.patches(x, torch.Generator().manual_seed(0), fill=0.5).clamp(0, 1)  # [B, G, G, C, p, p]
        b, g, _, ch, p, _ = tiles.shape
        canvas = torch.ones(b, ch, g * (p + 1) - 1, g * (p + 1) - 1)
        for i in range(g):
            for j in range(g):
                canvas[:, :, i * (p + 1):i * (p + 1) + p, j * (p + 1):j * (p + 1) + p] = tiles[:, i, j]
        return [(f"{g}x{g} patches of {p}px", canvas)]


__all__ = ["CPC", "CPCConfig", "GlobalBatchRandom", "MaskedContextNetwork", "extract_patches", "patch_geometry"]
