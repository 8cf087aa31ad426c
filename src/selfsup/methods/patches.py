"""Tiles and patches for the pretext tasks (jigsaw, relative patch location), the jigsaw permutation set,
and the per-step random numbers these methods draw themselves.

**Grid of tiles.** A ``GridLayout(tile, gap, jitter, grid)`` places ``grid x grid`` square tiles of side
``tile`` on a lattice of pitch ``tile + gap``, centred in the image; each tile then moves by an integer
offset drawn uniformly in ``[-jitter, jitter]`` per axis, per tile and per image (the "random jitter
inside each cell"). Tile ``k`` is the one at row ``k // grid``, column ``k % grid``. Its cell is the
square it can reach, ``tile + 2 jitter`` wide; with ``2 jitter <= gap`` cells do not overlap, so two
tiles never share a pixel and the gap between neighbours is at least ``gap - 2 jitter``. The papers:

    jigsaw (Noroozi & Favaro 2016): 225-px image, 3 x 3 cells of 75 px, a 64-px tile anywhere in its
        cell:                     tile 64, gap 11, jitter 5 (span 3 * 64 + 2 * 11 + 2 * 5 = 224)
    context (Doersch et al. 2015): 96-px patches, a 48-px gap, jitter up to 7 px:
                                  tile 96, gap 48, jitter 7 (span 398)

**Permutation set.** Noroozi & Favaro's greedy algorithm (2016, Sec. 3.3, Algorithm 1 of the
supplementary material): start from one permutation drawn at random among all 9!; then repeatedly add
the permutation whose summed Hamming distance to those already chosen is largest (the first such in
lexicographic order). ``permutation_set`` caches the result under ``~/.cache/selfsup/jigsaw`` keyed by
(tiles, size, seed): 1000 permutations take a few seconds to choose.

**Random numbers drawn by a method.** Which permutation, where each tile sits, which neighbour: drawn
by the method in ``training_step``, from a generator seeded by a per-method seed (drawn from torch's
global generator when the method is built, so from the run's seed) and the step. The numbers are drawn
for the *global* batch and each process keeps its own rows, so a run on several processes draws what
one process draws for the whole batch; both the seed and the step counter are buffers, so a resumed
run continues the same stream.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import comm
from selfsup.seeds import derived_seed

# ---------------------------------------------------------------------------------------------
# Random numbers for the global batch


class BatchRandom:
    """Random numbers for one step: drawn for the global batch (``local_batch x world size`` rows), of
    which this process keeps rows ``[rank * local_batch, (rank + 1) * local_batch)`` (CPU tensors)."""

    def __init__(self, seed: int, step: int, local_batch: int) -> None:
        self.generator = torch.Generator().manual_seed(derived_seed(seed, step))
        self.global_batch = local_batch * comm.world_size()
        start = comm.rank() * local_batch
        self.rows = slice(start, start + local_batch)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers uniform in ``[low, high)``, ``[local_batch, *shape]``."""
        return torch.randint(low, high, (self.global_batch, *shape), generator=self.generator)[self.rows]

    def uniform(self, *shape: int) -> torch.Tensor:
        """Floats uniform in ``[0, 1)``, ``[local_batch, *shape]``."""
        return torch.rand((self.global_batch, *shape), generator=self.generator)[self.rows]

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal floats, ``[local_batch, *shape]``."""
        return torch.randn((self.global_batch, *shape), generator=self.generator)[self.rows]


class StepRandom(nn.Module):
    """The seed and step counter of a method's own random numbers (buffers: saved and restored)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seed", torch.randint(0, 2**62, ()))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def draw(self, local_batch: int) -> BatchRandom:
        """The random numbers of the next step (and the counter moves on)."""
        step = int(self.step)
        self.step.fill_(step + 1)
        return BatchRandom(int(self.seed), step, local_batch)


def dropout(x: torch.Tensor, p: float, rand: BatchRandom, training: bool) -> torch.Tensor:
    """Inverted dropout of the rows of ``x`` [B, D] with masks from ``rand`` (the same on any number of
    processes, unlike ``nn.Dropout``'s global generator)."""
    if not training or p == 0:
        return x
    keep = (rand.uniform(x.shape[1]) >= p).to(device=x.device, dtype=x.dtype)
    return x * keep / (1 - p)


# ---------------------------------------------------------------------------------------------
# Grids of tiles


@dataclass(frozen=True)
class GridLayout:
    """``grid x grid`` tiles of side ``tile``, ``gap`` pixels apart, each jittered by up to ``jitter``."""

    tile: int
    gap: int
    jitter: int
    grid: int = 3

    def __post_init__(self) -> None:
        if self.tile < 1 or self.gap < 0 or self.jitter < 0 or self.grid < 1:
            raise ValueError(f"tile >= 1, gap >= 0, jitter >= 0 and grid >= 1, got {self}")
        if 2 * self.jitter > self.gap:
            raise ValueError(f"jitter {self.jitter} > gap {self.gap} / 2: neighbouring tiles could overlap")

    @property
    def num_tiles(self) -> int:
        return self.grid * self.grid

    @property
    def span(self) -> int:
        """Side of the square the jittered tiles can cover: the smallest image they fit in."""
        return self.grid * self.tile + (self.grid - 1) * self.gap + 2 * self.jitter

    def check(self, size: int, flags: str) -> None:
        """Raise ``ConfigError`` (a ValueError: the CLI prints one line) when the grid does not fit ``size``."""
        from selfsup.errors import ConfigError

        if self.span > size:
            raise ConfigError(f"{self.grid} x {self.grid} tiles of {self.tile} px, gap {self.gap}, jitter "
                             f"{self.jitter} span {self.span} px, more than the {size}-px view; choose smaller "
                             f"{flags}")

    def nominal(self, size: int) -> torch.Tensor:
        """Top-left corners ``[K, 2]`` (row, column) of the un-jittered tiles, the grid centred in ``size``."""
        origin = (size - (self.grid * self.tile + (self.grid - 1) * self.gap)) // 2
        index = torch.arange(self.num_tiles)
        cells = torch.stack([index // self.grid, index % self.grid], dim=1)
        return origin + cells * (self.tile + self.gap)

    def draw_offsets(self, rand: BatchRandom, tiles: int | None = None) -> torch.Tensor:
        """Jitter ``[B, tiles, 2]`` uniform in ``[-jitter, jitter]`` (default: every tile of the grid)."""
        return rand.integers(-self.jitter, self.jitter + 1, tiles or self.num_tiles, 2)

    def positions(self, size: int, offsets: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        """Top-left corners ``[B, K, 2]``: the nominal corners of tiles ``which`` (``[B, K]`` indices,
        default all) plus ``offsets`` ``[B, K, 2]``."""
        nominal = self.nominal(size)
        base = nominal.expand(offsets.shape[0], -1, -1) if which is None else nominal[which]
        return base + offsets


def cut_tiles(images: torch.Tensor, positions: torch.Tensor, tile: int) -> torch.Tensor:
    """Square tiles ``[B, K, C, tile, tile]`` of ``images`` [B, C, H, W] with top-left corners ``positions``
    [B, K, 2] (row, column): ``tiles[b, k] = images[b, :, r:r + tile, c:c + tile]``."""
    b, k = positions.shape[:2]
    positions = positions.to(images.device)
    steps = torch.arange(tile, device=images.device)
    rows = (positions[..., 0, None] + steps).view(b, k, tile, 1)
    cols = (positions[..., 1, None] + steps).view(b, k, 1, tile)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # [B, K, t, t, C] -> [B, K, C, t, t]


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Each tile (the last three dims, C x H x W) to zero mean and unit std: the jigsaw paper's guard
    against solving the puzzle from low-level statistics shared by neighbouring tiles. The std is floored
    at ``eps`` (inputs are normalised by the data's std, so 1/100 of it): a flat tile stays flat instead of
    its rounding noise being amplified to unit std."""
    mean = tiles.mean(dim=(-3, -2, -1), keepdim=True)
    std = tiles.std(dim=(-3, -2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / std.clamp_min(eps)


def resize_tiles(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """``tiles`` [N, C, t, t] resized to ``size`` (bilinear); unchanged for 0 or their own size."""
    if size == 0 or size == tiles.shape[-1]:
        return tiles
    return F.interpolate(tiles, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# The permutation set of maximal Hamming distance


def all_permutations(num_tiles: int) -> np.ndarray:
    """Every permutation of ``range(num_tiles)``, ``[num_tiles!, num_tiles]`` uint8, in lexicographic order."""
    perms = np.zeros((1, 0), dtype=np.uint8)
    for n in range(1, num_tiles + 1):  # the permutations of n from those of n - 1, block by first element
        blocks = []
        for first in range(n):
            rest = np.array([v for v in range(n) if v != first], dtype=np.uint8)
            blocks.append(np.concatenate([np.full((len(perms), 1), first, dtype=np.uint8), rest[perms]], axis=1))
        perms = np.concatenate(blocks)
    return perms


def maximal_hamming_permutations(size: int, num_tiles: int = 9, seed: int = 0) -> np.ndarray:
    """``size`` permutations ``[size, num_tiles]`` chosen by Noroozi & Favaro's greedy algorithm: a first one
    uniformly at random (``numpy.random.default_rng(seed)``), then each time the permutation with the
    largest summed Hamming distance to the chosen ones (the first in lexicographic order on ties)."""
    candidates = all_permutations(num_tiles)
    if not 1 <= size <= len(candidates):
        raise ValueError(f"a set of {size} permutations of {num_tiles} tiles: must be between 1 and "
                         f"{len(candidates)}")
    columns = np.ascontiguousarray(candidates.T)  # [num_tiles, n!]: one position of every candidate per row
    dtype = np.int16 if size * num_tiles < 2**15 else np.int64  # the sums stay below size * num_tiles
    chosen = [int(np.random.default_rng(seed).integers(len(candidates)))]
    total = np.zeros(len(candidates), dtype=dtype)  # summed Hamming distance of every candidate to the chosen set
    for _ in range(size - 1):
        newest = candidates[chosen[-1]]
        for t in range(num_tiles):
            total += columns[t] != newest[t]
        masked = total.copy()
        masked[chosen] = -1  # chosen ones are out
        chosen.append(int(np.argmax(masked)))
    return candidates[chosen].astype(np.int64)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "selfsup" / "jigsaw"


def permutation_set(size: int, num_tiles: int = 9, seed: int = 0, cache_dir: str | Path | None = None) -> torch.Tensor:
    """``maximal_hamming_permutations(size, num_tiles, seed)`` as a long tensor, computed once and cached."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"hamming-{num_tiles}tiles-{size}-seed{seed}.npy"
    if path.exists():
        try:
            perms = np.load(path)
            if perms.shape == (size, num_tiles):
                return torch.from_numpy(perms.astype(np.int64))
        except (OSError, ValueError):
            pass  # unreadable: computed again and rewritten
    perms = maximal_hamming_permutations(size, num_tiles, seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, perms)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the set is recomputed next time
    return torch.from_numpy(perms)


def min_hamming_distance(perms: torch.Tensor | np.ndarray) -> int:
    """The smallest Hamming distance between two permutations of the set."""
    p = torch.as_tensor(np.asarray(perms))
    d = (p[:, None, :] != p[None, :, :]).sum(-1)
    d.fill_diagonal_(p.shape[1] + 1)
    return int(d.min()) if len(p) > 1 else 0


def mean_hamming_distance(perms: torch.Tensor | np.ndarray) -> float:
    """The mean Hamming distance over the pairs of the set (the paper's "average Hamming distance")."""
    p = torch.as_tensor(np.asarray(perms))
    n = len(p)
    d = (p[:, None, :] != p[None, :, :]).sum(-1)
    return float(d.sum()) / max(n * (n - 1), 1)
