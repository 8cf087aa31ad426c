"""Other data than the run's, made fit for its encoder: the run's image size and channel count.

Images are resized to the run's size (antialiased bilinear) and their channels adapted to the
encoder's: 1-channel images are repeated to 3 channels, 3-channel images averaged to 1 (equal
weights). Normalisation (with the *run's* channel mean/std) happens later, as for the run's data.
"""

from __future__ import annotations

import torch

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.resize import resize_uint8
from selfsup.evaluation.options import ProtocolError

__all__ = ["adapt_images", "adapt_split"]


def adapt_images(images: torch.Tensor, channels: int, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[N, channels, size, size]``; ``images`` itself when it fits.

    Channels: equal -> unchanged; 1 -> ``channels`` by repetition; ``C`` -> 1 by averaging;
    anything else is a :class:`ProtocolError`. Size: antialiased bilinear resize when it differs.
    """
    c = images.shape[1]
    if c != channels and c != 1 and channels != 1:
        raise ProtocolError(f"cannot adapt {c}-channel images to a {channels}-channel encoder")
    return resize_uint8(images, size, channels, chunk)


def _adapt_part(ds: ImageDataset, channels: int, size: int) -> ImageDataset:
    images = adapt_images(ds.images, channels, size)
    if images is ds.images:
        return ds
    return ImageDataset(name=ds.name, images=images, labels=ds.labels, classes=ds.classes, paths=ds.paths)


def adapt_split(split: DataSplit, channels: int, size: int) -> tuple[DataSplit, str]:
    """``split`` with images adapted to the encoder (see :func:`adapt_images`) and a note of what changed."""
    c, s = split.train.channels, split.train.image_size
    notes = []
    if c != channels:
        notes.append(f"channels {c} -> {channels} ({'repeated' if c == 1 else 'averaged'})")
    if s != size:
        notes.append(f"resized {s} -> {size} px")
    if not notes:
        return split, "unchanged"
    return DataSplit(train=_adapt_part(split.train, channels, size), test=_adapt_part(split.test, channels, size),
                     source=split.source, skipped=split.skipped), ", ".join(notes)
