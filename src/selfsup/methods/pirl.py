"""PIRL: Self-Supervised Learning of Pretext-Invariant Representations (Misra & van der Maaten, CVPR 2020).

Instead of predicting the pretext transformation (which jigsaw permutation?), PIRL asks for a
representation that does not change under it: an image and its jigsaw-shuffled tiles map to the same
embedding, contrasted against other images through a memory bank (NPID's, Wu et al. 2018):

    f(v_I)   = h_f(phi(I)) / |.|              the image (one augmented view), linear head h_f to 128-d
    g(v_It)  = h_g(concat_k W phi(tile_k)) / |.|    9 tiles of a second view, shuffled by a random
                                              permutation, each encoded by the same backbone phi and
                                              projected by W to 128-d, concatenated, projected to 128-d
    L = lambda L_NCE(m_I, g(v_It)) + (1 - lambda) L_NCE(m_I, f(v_I))                  (Sec. 3.2)
    L_NCE(m_I, v) = -log h(m_I, v) - sum_{I' in D_N} log(1 - h(m_I', v)),  h = P / (P + N/|D|)  (Sec. 3.1)
    after each step: m_I <- (mu m_I + (1 - mu) f(v_I)) / |...|, mu = 0.5   (the bank follows the image)

m_I is image I's memory-bank row, D_N the N negatives drawn uniformly from the bank, P(m, v) =
exp(m . v / t) / Z with NPID's constant Z (``methods/memory_bank.py``, losses ``methods/losses/memory.py``).
``loss="softmax"`` replaces both NCE terms by NPID's exact non-parametric softmax over the bank.

The jigsaw view (``methods/patches.py``'s grid of tiles): a crop of (0.6, 1) of the image resized to
``jigsaw_size``, cut into 3 x 3 tiles of ``tile_size`` with ``tile_gap`` between cells and a random
offset of up to ``tile_jitter`` in each; the tiles are put in a random order (a uniformly random
permutation per image) and, with ``normalize_tiles``, each is standardised to zero mean and unit
std. The offsets and permutations are drawn for the global batch from a generator seeded for the
step (``patches.StepRandom``), so N processes draw what one draws. The official pipeline jitters the
colour of each tile independently; here the tiles share the jigsaw view's colour jitter and the
per-tile standardisation removes the brightness and contrast that tell neighbouring tiles apart.

Defaults (paper Sec. 3-4 and VISSL's ``pirl_jigsaw_4node_resnet.yaml``): embedding 128, temperature
0.07, lambda 0.5, memory momentum 0.5, 32,000 negatives, image crops (0.08, 1) at 224 px, jigsaw crops
(0.6, 1) at 255 px cut into 64-px tiles in 85-px cells, colour jitter (0.4, 0.4, 0.4, 0.2), grayscale
0.2, flip; SGD lr 0.03 x batch/256, momentum 0.9, weight decay 1e-4, cosine, 800 epochs.
``head_hidden_dim > 0`` puts one hidden layer in both heads (VISSL's ``mlphead`` PIRL models).

Small-image recipe (images <= 64 px; measured on Fashion-MNIST, BENCHMARKS.md): a 30-px jigsaw view cut
into 8-px tiles in 10-px cells (the paper's 64 of 85), the exact softmax over the bank for both terms,
MLP heads (512 hidden, BN; with linear heads the embeddings' std fell to ~0.1 and the gain halved),
SGD lr 0.3 x batch/256 with one warm-up epoch, zero-initialised residual blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.memory_bank import MEMORY_LOSSES, MemoryBank, memory_bank_loss
from selfsup.methods.npid import embedding_head
from selfsup.methods.patches import BatchRandom, GridLayout, StepRandom, cut_tiles, normalize_tiles

GRID = 3  # 3 x 3 tiles, as the jigsaw pretext task


@dataclass
class PIRLConfig:
    """Paper defaults (Misra & van der Maaten 2020, Sec. 3-4; VISSL's PIRL configuration)."""

    embedding_dim: int = 128
    head_hidden_dim: int = 0  # 0: the paper's linear heads; > 0: VISSL's "mlphead" variant, one hidden layer
    head_norm: str = "batchnorm"  # the hidden layer's norm when head_hidden_dim > 0
    temperature: float = 0.07
    jigsaw_weight: float = 0.5  # lambda: weight of the jigsaw term, 1 - lambda the image term's
    memory_momentum: float = 0.5
    loss: str = "nce"  # "nce" (the paper) | "softmax" (NPID's exact softmax over the bank)
    num_negatives: int = 32000
    jigsaw_size: int = 255  # side of the view the tiles are cut from
    jigsaw_crop_scale_min: float = 0.6
    tile_size: int = 64
    tile_gap: int = 21  # pixels between neighbouring cells' tiles before jitter
    tile_jitter: int = 10  # each tile moves by up to this many pixels per axis
    normalize_tiles: bool = True

    def __post_init__(self) -> None:
        if self.loss not in MEMORY_LOSSES:
            raise ValueError(f"--loss: must be one of {', '.join(MEMORY_LOSSES)}, got {self.loss!r}")
        if not 0 <= self.jigsaw_weight <= 1:
            raise ValueError(f"--jigsaw-weight: must be in [0, 1], got {self.jigsaw_weight}")
        if self.num_negatives < 1:
            raise ValueError(f"--num-negatives: must be >= 1, got {self.num_negatives}")
        layout = GridLayout(self.tile_size, self.tile_gap, self.tile_jitter, GRID)  # raises on a bad layout
        layout.check(self.jigsaw_size, "--tile-size, --tile-gap or --tile-jitter (or a larger --jigsaw-size)")


class JigsawHead(nn.Module):
    """PIRL's g: each tile's features projected to ``dim`` (one head shared by the tiles: a linear layer,
    or an MLP with ``hidden_dim``), the tiles' projections concatenated in their (shuffled) order, and
    projected to ``dim`` by a linear layer."""

    def __init__(self, feature_dim: int, dim: int, hidden_dim: int = 0, norm: str = "batchnorm",
                 tiles: int = GRID * GRID) -> None:
        super().__init__()
        self.tile = embedding_head(feature_dim, hidden_dim, dim, norm)
        self.joint = nn.Linear(tiles * dim, dim)

    def forward(self, tile_features: torch.Tensor) -> torch.Tensor:
        """``[B, tiles, feature_dim]`` -> ``[B, dim]``."""
        b = tile_features.shape[0]
        return self.joint(self.tile(tile_features.flatten(0, 1)).view(b, -1))


class PIRL(Method):
    name = "pirl"
    Config = PIRLConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE: dict[str, Any] = {"loss": "softmax", "head_hidden_dim": 512, "jigsaw_size": 30,
                                          "tile_size": 8, "tile_gap": 2, "tile_jitter": 1}
    SMALL_IMAGE_OPTIMIZER: dict[str, Any] = {"lr": 0.3, "warmup_epochs": 1}
    SMALL_IMAGE_ZERO_INIT_RESIDUAL = True

    def __init__(self, encoder: nn.Module, config: PIRLConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.layout = GridLayout(c.tile_size, c.tile_gap, c.tile_jitter, GRID)
        self.image_head = embedding_head(self.feature_dim, c.head_hidden_dim, c.embedding_dim, c.head_norm)
        self.jigsaw_head = JigsawHead(self.feature_dim, c.embedding_dim, c.head_hidden_dim, c.head_norm)
        self.bank = MemoryBank(c.embedding_dim, c.memory_momentum)
        self.random = StepRandom()  # tile offsets and permutations
        self._pending: torch.Tensor | None = None

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """The image, and the view the jigsaw tiles are cut from (its own crop scale and size)."""
        image = ViewSpec(size=size, crop_scale=crop_scale, jitter_p=1.0, brightness=0.4, contrast=0.4,
                         saturation=0.4, hue=0.2, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
        return [image, replace(image, size=self.config.jigsaw_size,
                               crop_scale=(self.config.jigsaw_crop_scale_min, 1.0))]

    def on_batch_start(self, indices: torch.Tensor) -> None:
        self.bank.set_batch(indices)

    def jigsaw_tiles(self, source: torch.Tensor, rand: BatchRandom) -> torch.Tensor:
        """``[B, 9, C, t, t]``: the tiles of ``source`` at jittered grid positions, in a random order per
        image (permutation drawn from ``rand``), each standardised with ``normalize_tiles``."""
        b, k = source.shape[0], self.layout.num_tiles
        positions = self.layout.positions(source.shape[-1], self.layout.draw_offsets(rand))  # [B, 9, 2]
        order = rand.uniform(k).argsort(dim=1)  # a uniformly random permutation of the tiles
        positions = positions[torch.arange(b)[:, None], order]
        tiles = cut_tiles(source, positions, self.layout.tile)
        return normalize_tiles(tiles) if self.config.normalize_tiles else tiles

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        c = self.config
        image, source = views[0], views[1]
        n = image.shape[0]
        y = self.encoder(image)
        f = self.image_head(y)
        tiles = self.jigsaw_tiles(source, self.random.draw(n))
        tile_features = self.encoder(tiles.flatten(0, 1)).view(n, tiles.shape[1], -1)
        g = self.jigsaw_head(tile_features)
        # the jigsaw term first: NCE's constant Z is estimated on the first scores (VISSL's order)
        jigsaw_term = memory_bank_loss(self.bank, g, c.loss, c.temperature, c.num_negatives)
        image_term = memory_bank_loss(self.bank, f, c.loss, c.temperature, c.num_negatives)
        loss = c.jigsaw_weight * jigsaw_term + (1 - c.jigsaw_weight) * image_term
        self._pending = f.detach()
        return StepOutput(loss=loss, embeddings=(F.normalize(f.detach(), dim=1), F.normalize(g.detach(), dim=1)),
                          features=y.detach(), metrics={"jigsaw_term": jigsaw_term.detach(),
                                                        "image_term": image_term.detach()})

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        if self._pending is not None:
            self.bank.update(self._pending)  # the bank follows the image embedding f(v_I)
            self._pending = None
        return {}

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The jigsaw view's tiles in their shuffled order, laid out on the 3 x 3 grid (gaps black)."""
        source = views[1]
        tiles = self.jigsaw_tiles(source, BatchRandom(0, 0, source.shape[0]))
        if self.config.normalize_tiles:  # back to [0, 1] for display
            low = tiles.amin(dim=(-3, -2, -1), keepdim=True)
            high = tiles.amax(dim=(-3, -2, -1), keepdim=True)
            tiles = (tiles - low) / (high - low).clamp_min(1e-6)
        b, k, ch, t, _ = tiles.shape
        pitch = t + self.layout.gap
        side = GRID * t + (GRID - 1) * self.layout.gap
        canvas = tiles.new_zeros(b, ch, side, side)
        for i in range(k):
            r, col = divmod(i, GRID)
            canvas[:, :, r * pitch:r * pitch + t, col * pitch:col * pitch + t] = tiles[:, i]
        return [("jigsaw tiles (shuffled)", canvas)]
