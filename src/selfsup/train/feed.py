"""Where a training step's images come from: a uint8 tensor in memory, or a store streamed from disk.

Both feeds give, for every global step, this process's dataset indices and the step's views as
float tensors on the training device, augmented with the step's generator, so the loop knows
neither where the images live nor who cropped them. The in-memory feed crops on the device (the
whole batch at once); the stream feed receives crops of the full stored images from its
:class:`~selfsup.data.stream.StreamSource` workers and does the rest (flip, colour, blur,
solarisation) on the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from selfsup.data.augment import augment, augment_views
from selfsup.data.stream import StreamSource
from selfsup.data.transfer import to_device
from selfsup.data.views import ViewSpec
from selfsup.seeds import derived_seed


class MemoryFeed:
    """Batches of an in-memory uint8 ``[N, C, H, W]`` tensor (moved to the device when it fits).

    Every process draws the same per-epoch permutation and takes its contiguous slice of each
    global batch; the last partial batch of an epoch is dropped.
    """

    def __init__(self, images: torch.Tensor, views: Sequence[ViewSpec], batch_size: int, seed: int,
                 rank: int, world_size: int, device: torch.device) -> None:
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} (the global batch) does not split evenly over "
                             f"{world_size} processes")
        self.num_images = images.shape[0]
        self.steps_per_epoch = self.num_images // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"--batch-size {batch_size} is larger than the {self.num_images} training images")
        self.views, self.batch_size, self.seed = list(views), batch_size, seed
        self.rank, self.local_batch, self.device = rank, batch_size // world_size, device
        self.world_size = world_size
        self.data = images.to(device) if device.type == "cpu" or images.numel() < 2**32 else images.pin_memory()

    def batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(dataset indices, uint8 images on the device)`` from ``start_step`` to the end of its epoch."""
        b = self.batch_size
        epoch, position = divmod(start_step, self.steps_per_epoch)
        for index in epoch_order(self.num_images, self.seed, epoch)[position * b:self.steps_per_epoch * b].split(b):
            if self.world_size > 1:  # this process's contiguous share of the global batch
                index = index[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
            # to_device: asynchronous copies (pinned on CUDA), so the host never waits for the GPU here
            yield index, to_device(self.data[to_device(index, self.data.device)], self.device)

    def augmented(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        return augment_views(images, self.views, generator)


class StreamFeed:
    """Batches of a :class:`StreamSource` (crops already drawn on the full stored images)."""

    def __init__(self, source: StreamSource, device: torch.device) -> None:
        self.source, self.device = source, device
        self.num_images, self.steps_per_epoch = source.num_images, source.steps_per_epoch
        # the crop is done: the device pass keeps the whole view (an exact copy) and does the rest
        self.views = [dataclasses.replace(v, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)) for v in source.views]

    def batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for batch in self.source.batches(start_step):
            yield batch.index, [to_device(v, self.device) for v in batch.views]

    def augmented(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        return [augment(v, spec, generator) for v, spec in zip(views, self.views)]


Feed = MemoryFeed | StreamFeed


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the dataset used in ``epoch``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch)))
