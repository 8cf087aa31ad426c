"""Jigsaw puzzles: the context-free network (Noroozi & Favaro, ECCV 2016).

    tiles t_1..t_9: a 3 x 3 grid cut from the image, each jittered inside its cell    (Sec. 3.2)
    t_k <- (t_k - mean(t_k)) / std(t_k)                   each tile normalised on its own (Sec. 3.2)
    p ~ U(P), P a set of permutations of maximal Hamming distance                     (Sec. 3.3)
    logits = fc8(fc7([fc6(f(t_p(1))), ..., fc6(f(t_p(9)))]))   shared tile encoder f, concatenation
    loss = -log softmax(logits)[index of p in P], batch mean

The network sees the tiles in the order of a permutation drawn from the set P and names that
permutation: ``shuffled[i] = tiles[p[i]]``. The guards against shortcuts (Sec. 3.2): gaps between
the tiles and a random shift of each tile inside its cell (no continuation of edges across tile
borders), each tile normalised by its own mean and std (no matching of low-level statistics), and
grayscale images beside colour ones against the colour channels' aberration (``grayscale_p``, 0.3
here). P is chosen by the paper's greedy algorithm
(Algorithm 1: each new permutation maximises the summed Hamming distance to those chosen), cached
under ``~/.cache/selfsup/jigsaw``; its size is ``--num-permutations`` (the paper's best: 1000, average
Hamming distance 8.0). The set is a buffer of the method, so a checkpoint carries its own.

Defaults (paper Sec. 3.2-3.3; official ``solver_cfn_jps.prototxt``): 225-px crops, 3 x 3 cells of 75 px
holding a 64-px tile (tile 64, gap 11, jitter 5 here; the official code cuts 255-px crops into 85-px
cells, i.e. gap 21, jitter 10), fc6 1024 per tile, fc7 4096, dropout 0.5 after both, 1000
permutations; SGD with momentum 0.9, lr 0.01 at batch 256 (divided by 10 every 100k of 350k
iterations; a cosine schedule here), weight decay 5e-4.
The per-channel spatial jitter of colour tiles (0-2 px) is not implemented.
Small-image recipe (Fashion-MNIST 28 px, CPU-sized; BENCHMARKS.md): 7-px tiles, gap 2, jitter 1 (a
27-px grid: the paper's tile/cell ratio 64/75 in whole pixels, one pixel of jitter), resized to 14 px
before the encoder (``tile_input_size``: a 7-px tile leaves the last stage of the small-stem ResNet a 1 x 1
map, so only the centre of its kernels trains; 14 px leaves 2 x 2, as a 64-px tile does in a stride-32
ResNet), fc6 128, fc7 512, no dropout, 100 permutations (1000 classes learn slowly in a few hundred
steps), SGD lr 1.0 x batch/256. Measured with 5,000 images, batch 64, width 0.25, 3 epochs, lr 0.4:
linear probe 76.5% (14-px tiles, no dropout), 71.5% (14 px, dropout 0.5), 71.0% (7 px, dropout 0.5);
random init 70.5%. At width 0.125, 2 epochs, lr 1.0 reaches 73.6% where lr 0.4 stays below the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import pretext_accuracy, pretext_classification_loss
from selfsup.methods.patches import (
    BatchRandom,
    GridLayout,
    StepRandom,
    cut_tiles,
    dropout,
    normalize_tiles,
    permutation_set,
    resize_tiles,
)


@dataclass
class JigsawConfig:
    """Paper defaults (Noroozi & Favaro 2016, Sec. 3)."""

    num_permutations: int = 1000
    permutation_seed: int = 0  # the draw of the greedy algorithm's first permutation
    tile_size: int = 64
    tile_gap: int = 11
    tile_jitter: int = 5
    normalize_tiles: bool = True  # each tile to zero mean, unit std
    tile_input_size: int = 0  # side the tiles are resized to (bilinear) before the encoder; 0: as cut
    grayscale_p: float = 0.3
    tile_dim: int = 1024  # fc6, per tile
    hidden_dim: int = 4096  # fc7
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.num_permutations < 2:
            raise ValueError(f"--num-permutations: at least 2, got {self.num_permutations}")
        GridLayout(self.tile_size, self.tile_gap, self.tile_jitter)  # raises on a bad layout
        if self.tile_input_size < 0:
            raise ValueError(f"--tile-input-size: must be >= 0 (0: as cut), got {self.tile_input_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout: must be in [0, 1), got {self.dropout}")


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """``tiles`` [B, K, C, t, t] in the order of ``perms`` [B, K]: ``out[b, i] = tiles[b, perms[b, i]]``."""
    index = perms.to(tiles.device).view(*perms.shape, 1, 1, 1).expand_as(tiles)
    return tiles.gather(1, index)


class Jigsaw(Method):
    name = "jigsaw"
    Config = JigsawConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"tile_size": 7, "tile_gap": 2, "tile_jitter": 1, "tile_input_size": 14,
                          "num_permutations": 100, "tile_dim": 128, "hidden_dim": 512, "dropout": 0.0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 5e-4, "warmup_epochs": 0}

    def __init__(self, encoder: nn.Module, config: JigsawConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.layout = GridLayout(c.tile_size, c.tile_gap, c.tile_jitter)
        self.register_buffer("permutations", permutation_set(c.num_permutations, self.layout.num_tiles,
                                                             c.permutation_seed))
        self.fc6 = nn.Linear(self.feature_dim, c.tile_dim)
        self.fc7 = nn.Linear(self.layout.num_tiles * c.tile_dim, c.hidden_dim)
        self.fc8 = nn.Linear(c.hidden_dim, c.num_permutations)
        self.randomness = StepRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """One view: a random crop, grayscale with probability ``grayscale_p``, nothing else."""
        self.layout.check(size, "--tile-size / --tile-gap / --tile-jitter")
        return [ViewSpec(size=size, crop_scale=crop_scale, flip_p=0.0, jitter_p=0.0,
                         grayscale_p=self.config.grayscale_p, blur_p=0.0, solarize_p=0.0)]

    def puzzle(self, images: torch.Tensor, rand: BatchRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """The tiles of ``images`` [B, C, S, S] jittered in their cells, normalised and shuffled
        ``[B, 9, C, t, t]``, and the index of each image's permutation in the set ``[B]``."""
        self.layout.check(images.shape[-1], "--tile-size / --tile-gap / --tile-jitter")
        positions = self.layout.positions(images.shape[-1], self.layout.draw_offsets(rand))
        tiles = cut_tiles(images, positions, self.layout.tile)
        if self.config.normalize_tiles:
            tiles = normalize_tiles(tiles)
        labels = rand.integers(0, self.config.num_permutations).to(images.device)
        return shuffle_tiles(tiles, self.permutations[labels]), labels

    def logits(self, tiles: torch.Tensor, rand: BatchRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """Permutation logits ``[B, |P|]`` of shuffled ``tiles`` and the tile features ``[B, 9, D]``."""
        b, k = tiles.shape[:2]
        features = self.encoder(resize_tiles(tiles.flatten(0, 1), self.config.tile_input_size)).view(b, k, -1)
        per_tile = torch.relu(self.fc6(features)).flatten(1)  # [B, 9 * tile_dim], tiles in shuffled order
        p = self.config.dropout
        hidden = torch.relu(self.fc7(dropout(per_tile, p, rand, self.training)))
        return self.fc8(dropout(hidden, p, rand, self.training)), features

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        rand = self.randomness.draw(views[0].shape[0])
        tiles, labels = self.puzzle(views[0], rand)
        logits, features = self.logits(tiles, rand)
        loss = pretext_classification_loss(logits, labels)
        # the online probe reads the mean of the nine tile features (the image's bag of tiles)
        return StepOutput(loss=loss, features=features.mean(dim=1).detach(),
                          metrics={"jigsaw_accuracy": pretext_accuracy(logits.detach(), labels)})

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The tiles as cut (before normalisation) and in the permuted order the network sees them."""
        rand = BatchRandom(0, 0, views[0].shape[0])
        layout, size = self.layout, views[0].shape[-1]
        positions = layout.positions(size, layout.draw_offsets(rand))
        tiles = cut_tiles(views[0], positions, layout.tile)
        labels = rand.integers(0, self.config.num_permutations)
        shuffled = shuffle_tiles(tiles, self.permutations.cpu()[labels])
        return [("tiles as cut", mosaic(tiles, layout.grid)), ("tiles shuffled (input)", mosaic(shuffled, layout.grid))]


def mosaic(tiles: torch.Tensor, grid: int, border: int = 1) -> torch.Tensor:
    """``tiles`` [B, grid^2, C, t, t] laid out row by row with ``border`` white pixels between them."""
    b, _, c, t, _ = tiles.shape
    side = grid * t + (grid + 1) * border
    out = torch.ones(b, c, side, side, dtype=tiles.dtype)
    for k in range(grid * grid):
        r, col = divmod(k, grid)
        top, left = border + r * (t + border), border + col * (t + border)
        out[:, :, top:top + t, left:left + t] = tiles[:, k].cpu()
    return out
