"""``photos``: colour crops of the ten photographs that scikit-learn and scikit-image ship, labelled by photo.

A small real colour source that needs no download, for colorization, tests and demos; it is what it
is: 32-px crops of ten photographs, not a benchmark. The photographs (each in its package, no network):

    scikit-learn  ``load_sample_images``: china, flower
    scikit-image  ``skimage.data``: astronaut, chelsea (a cat), coffee, rocket, immunohistochemistry,
                  hubble_deep_field, retina, motorcycle (the left image of ``stereo_motorcycle``)

Each photograph is resized (antialiased) to a height of ``PHOTO_HEIGHT`` = 192 px and cut into blocks of
64 x 64 px (the remainder on the right and bottom is dropped). Inside each block, 32-px crops start
every 8 px (5 x 5 = 25 crops per block). Block (row i, column j) belongs to the test split when
``(i + j) % 4 == 3`` (a quarter of the blocks, on diagonals, at least two per photograph), to the
training split otherwise, so no training crop shares a pixel with a test crop. The label of a crop is
its photograph (10 classes). About 2,000 training and 675 test crops; the split is fixed.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.data.dataset import DataSplit, ImageDataset

PHOTO_HEIGHT = 192
BLOCK = 64
CROP = 32
STRIDE = 8
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "retina", "motorcycle")
PHOTO_NAMES: tuple[str, ...] = ("china", "flower", *SKIMAGE_PHOTOS)
INSTALL_HINT = "pip install 'selfsup[photos]'"


class PhotosUnavailable(ImportError):
    """scikit-image (or scikit-learn) is not installed."""


def load_photographs() -> tuple[list[np.ndarray], str]:
    """The ten photographs as uint8 ``[H, W, 3]`` arrays in ``PHOTO_NAMES`` order, and where they came from.

    scikit-learn's two JPEGs are read from its package folder with Pillow (what ``load_sample_images``
    does, without importing scikit-learn and SciPy: seconds on a busy machine)."""
    spec = importlib.util.find_spec("sklearn")
    try:
        from skimage import data as skdata
    except ImportError as e:
        raise PhotosUnavailable(f"the photos source needs scikit-image ({INSTALL_HINT})") from e
    if spec is None or not spec.submodule_search_locations:
        raise PhotosUnavailable(f"the photos source needs scikit-learn ({INSTALL_HINT})")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "images"
    photos = [np.array(Image.open(folder / f"{name}.jpg").convert("RGB")) for name in ("china", "flower")]
    for name in SKIMAGE_PHOTOS:
        image = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
        photos.append(np.array(image)[..., :3])
    versions = f"scikit-learn {metadata.version('scikit-learn')} and scikit-image {metadata.version('scikit-image')}"
    return photos, versions


def _resized(photo: np.ndarray) -> torch.Tensor:
    """``[3, PHOTO_HEIGHT, W']`` uint8, the aspect ratio kept (bilinear, antialiased)."""
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    width = round(photo.shape[1] * PHOTO_HEIGHT / photo.shape[0])
    x = F.interpolate(x, size=(PHOTO_HEIGHT, width), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def is_test_block(row: int, column: int) -> bool:
    return (row + column) % 4 == 3


def photo_crops(photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and test crops ``[N, 3, CROP, CROP]`` of one resized photograph ``[3, H, W]``."""
    offsets = range(0, BLOCK - CROP + 1, STRIDE)
    parts: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    for i in range(photo.shape[1] // BLOCK):
        for j in range(photo.shape[2] // BLOCK):
            block = photo[:, i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            parts[is_test_block(i, j)] += [block[:, r:r + CROP, c:c + CROP] for r in offsets for c in offsets]
    return torch.stack(parts[False]), torch.stack(parts[True])


def load_photos_split() -> DataSplit:
    """The ``photos`` source: crops of ten photographs, labelled by photograph, with a fixed block split."""
    photos, packages = load_photographs()
    train: list[torch.Tensor] = []
    test: list[torch.Tensor] = []
    train_labels: list[torch.Tensor] = []
    test_labels: list[torch.Tensor] = []
    for label, photo in enumerate(photos):
        tr, te = photo_crops(_resized(photo))
        train.append(tr)
        test.append(te)
        train_labels.append(torch.full((len(tr),), label, dtype=torch.long))
        test_labels.append(torch.full((len(te),), label, dtype=torch.long))

    def dataset(images: list[torch.Tensor], labels: list[torch.Tensor]) -> ImageDataset:
        return ImageDataset(name="photos", images=torch.cat(images), labels=torch.cat(labels),
                            classes=list(PHOTO_NAMES))

    return DataSplit(train=dataset(train, train_labels), test=dataset(test, test_labels),
                     source=f"photos: {CROP}-px crops of the ten photographs of {packages} (bundled), "
                            f"{PHOTO_HEIGHT}-px high, test = a quarter of the {BLOCK}-px blocks")


__all__ = ["PHOTO_NAMES", "PhotosUnavailable", "load_photographs", "load_photos_split", "photo_crops"]
