"""A large synthetic image folder for tests and benchmarks of the on-disk store, without downloads.

Each image pastes one Fashion-MNIST item (scikit-learn's digits when Fashion-MNIST is not installed)
at a random position and scale, in a random colour, on a noisy colour canvas whose short side is
``size`` and whose width is up to 4/3 of it, and is saved as a JPEG in its class sub-folder
(``OUT/<class>/<number>.jpg``). Image ``i`` depends only on ``(seed, i)``: the same flags give the
same files, whatever the number of workers.

Run as ``python -m selfsup.data.synthetic --out DIR --n N --size S``.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from selfsup.data.dataset import ImageDataset
from selfsup.data.sources import fashion_mnist_available, load_digits_split, load_fashion_mnist
from selfsup.seeds import derived_seed

ITEM_SCALE = (0.25, 0.8)  # item side as a fraction of the canvas short side
MAX_ASPECT = 4 / 3
NOISE_STD = 24.0


def _items() -> ImageDataset:
    """The small labeled items pasted on the canvases."""
    return (load_fashion_mnist() if fashion_mnist_available() else load_digits_split()).train


def _class_folder(name: str) -> str:
    return name.replace("/", "-").replace(" ", "_")


def synthetic_image(items: ImageDataset, index: int, size: int, seed: int) -> tuple[np.ndarray, int]:
    """Image ``index``: uint8 ``[size, width, 3]`` and the class of its pasted item."""
    rng = np.random.default_rng(derived_seed(seed, "synthetic", index))
    k = int(rng.integers(len(items)))
    width = int(round(size * rng.uniform(1.0, MAX_ASPECT)))
    background = rng.uniform(0, 255, size=3)
    canvas = background + rng.normal(0.0, NOISE_STD, size=(size, width, 3))
    side = max(4, int(round(size * rng.uniform(*ITEM_SCALE))))
    item = Image.fromarray(items.images[k, 0].numpy()).resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(item, dtype=np.float64)[..., None] / 255.0
    top, left = int(rng.integers(size - side + 1)), int(rng.integers(width - side + 1))
    colour = rng.uniform(0, 255, size=3)
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = (1 - alpha) * patch + alpha * colour
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), int(items.labels[k])


def make_synthetic_folder(out: str | Path, n: int, size: int = 256, seed: int = 0, quality: int = 90,
                          workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n`` synthetic JPEGs under ``out/<class>/`` (module docstring); returns ``out``."""
    if n <= 0 or size < 8:
        raise ValueError(f"need n > 0 images of size >= 8, got n={n}, size={size}")
    out = Path(out).expanduser()
    items = _items()
    names = [_class_folder(c) for c in items.classes]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        pixels, label = synthetic_image(items, i, size, seed)
        Image.fromarray(pixels).save(out / names[label] / f"{i:07d}.jpg", quality=quality)

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=n, desc=f"writing {out}", unit="img", disable=not progress) as bar:
        for _ in pool.map(write, range(n)):
            bar.update(1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selfsup.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (class sub-folders of JPEGs)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=256, help="short side of the images in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: the usable cores)")
    args = parser.parse_args(argv)
    make_synthetic_folder(args.out, args.n, args.size, args.seed, args.quality, args.workers)


if __name__ == "__main__":
    main()
