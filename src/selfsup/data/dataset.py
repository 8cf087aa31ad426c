"""The in-memory image dataset every data source returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """Images as uint8 ``[N, C, H, W]`` with optional integer labels.

    ``labels`` is ``None`` for unlabeled data; otherwise an int64 tensor ``[N]`` whose values
    index ``classes``. ``paths`` names the source file of each image when there is one.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"{self.name}: images must be uint8 [N, C, H, W], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def select(self, index: torch.Tensor) -> "ImageDataset":
        """A new dataset holding the rows ``index`` (a 1-D long tensor), in that order."""
        index = index.long()
        return ImageDataset(
            name=self.name,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            classes=list(self.classes),
            paths=None if self.paths is None else [self.paths[i] for i in index.tolist()],
        )


@dataclass
class DataSplit:
    """A deterministic train/test pair from one source."""

    train: ImageDataset
    test: ImageDataset
    source: str  # human-readable: where the data came from (file path, package, download)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unusable files
