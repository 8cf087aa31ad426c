"""Training batches streamed from a store (:mod:`selfsup.data.store`) under DDP, with exact resume.

Each epoch the shards are permuted from ``(seed, epoch)`` and dealt to the processes (shard ``k``
of the permutation to rank ``k mod world_size``), so each process reads a disjoint set of shards
and one epoch shows every image at most once across processes; a process shuffles the images of
its shards from ``(seed, epoch, rank)``. Every crop box is drawn from ``(seed, step, rank)`` and the
row's position in the batch -- never from a worker's identity or timing -- so a step's batch is a
function of the step alone: ``batches(k)`` started fresh gives exactly what an uninterrupted
iterator gives from step ``k`` on, which is how a killed run resumes bit-identically.

Images are decoded and cropped in DataLoader worker processes (Pillow, CPU) while the step runs,
``prefetch`` batches ahead per worker. With a CUDA decode device plain JPEGs are instead decoded in
batches by nvJPEG (``torchvision.io.decode_jpeg``) in the training process; if that fails, the
batch is decoded on the CPU, a warning says why, and the workers decode from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from selfsup.data.crops import (
    EVAL_CROP_FRACTION,
    center_box,
    decode_crops,
    decode_crops_batched,
    random_resized_crop_params,
)
from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.gpu_decode import gpu_decode_enabled
from selfsup.data.store import Store, StoreError
from selfsup.data.views import ViewSpec
from selfsup.seeds import derived_seed


@dataclass
class StreamBatch:
    """One step's rows on this process: dataset ``index`` ``[b]`` and one uint8 ``[b, C, size, size]``
    tensor per view (random-resized crops of the full images; not flipped, colours untouched)."""

    step: int
    index: torch.Tensor
    views: list[torch.Tensor]


@dataclass
class _Loaded:
    """A worker's output: the batch, plus the plain JPEGs left for the batched device decoder."""

    batch: StreamBatch
    pending_rows: list[int]
    pending_data: list[torch.Tensor]
    pending_orientations: list[int]
    pending_boxes: list[list[tuple[int, int, int, int]]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class _Plan:
    """Which rows of the store a process reads at each step (needs only the shard sizes)."""

    shard_counts: tuple[int, ...]
    seed: int
    rank: int
    world_size: int
    local_batch: int
    steps_per_epoch: int

    def epoch_rows(self, epoch: int) -> torch.Tensor:
        """This process's rows of ``epoch`` in reading order: ``steps_per_epoch * local_batch`` of them."""
        starts = torch.tensor((0,) + self.shard_counts).cumsum(0)
        shards = torch.randperm(len(self.shard_counts), generator=_generator(derived_seed(self.seed, "shards", epoch)))
        mine = shards[self.rank::self.world_size].tolist()
        rows = torch.cat([torch.arange(int(starts[s]), int(starts[s + 1])) for s in mine])
        order = torch.randperm(len(rows), generator=_generator(derived_seed(self.seed, "images", epoch, self.rank)))
        return rows[order][: self.steps_per_epoch * self.local_batch]


def common_steps_per_epoch(shard_counts: Sequence[int], batch_size: int, world_size: int) -> int:
    """Steps every process can take in any epoch: the fewest images a process can be dealt (its
    ``len // world_size`` shards the smallest ones) over the per-process batch, rounded down."""
    fewest = sum(sorted(shard_counts)[: len(shard_counts) // world_size])
    return fewest // (batch_size // world_size)


class _TrainSteps(Dataset):
    """Map-style dataset whose item ``step`` is that step's whole batch (decoded in a worker)."""

    def __init__(self, store: Path, split: str, plan: _Plan, views: Sequence[ViewSpec], leave_jpegs: bool) -> None:
        self.store_path, self.split, self.plan, self.views = store, split, plan, list(views)
        self.leave_jpegs = leave_jpegs  # plain JPEGs go undecoded to the batched device decoder
        self._store: Store | None = None
        self._epoch: tuple[int, torch.Tensor] | None = None

    def _rows(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.plan.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.plan.epoch_rows(epoch))
        b = self.plan.local_batch
        return self._epoch[1][position * b:(position + 1) * b].clone()  # not a view of the epoch's rows

    def __getitem__(self, step: int) -> _Loaded:
        if self._store is None:  # opened in the process that reads (each worker its own files)
            self._store = Store(self.store_path, self.split)
        store, rows = self._store, self._rows(step)
        generator = _generator(derived_seed(self.plan.seed, "crops", step, self.plan.rank))
        sizes = [v.size for v in self.views]
        views = [torch.zeros((len(rows), store.channels, s, s), dtype=torch.uint8) for s in sizes]
        loaded = _Loaded(StreamBatch(step, rows, views), [], [], [], [])
        for i, row in enumerate(rows.tolist()):
            record = store.index[row]
            boxes = [random_resized_crop_params(int(record["height"]), int(record["width"]), v.crop_scale,
                                                v.crop_ratio, generator) for v in self.views]
            data = store.read(row)
            if self.leave_jpegs and bool(record["plain_jpeg"]):
                loaded.pending_rows.append(i)
                loaded.pending_data.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                loaded.pending_orientations.append(int(record["orientation"]))
                loaded.pending_boxes.append(boxes)
                continue
            for view, crop in zip(views, decode_crops(data, store.channels, boxes, sizes)):
                view[i] = crop
        return loaded


class StreamSource:
    """Batches of random-resized crops streamed from the ``split`` of ``store`` for one process.

    ``batch_size`` is the global batch (split evenly over ``world_size`` processes). Every process
    takes the same ``steps_per_epoch`` steps: the fewest images any process can be dealt in an
    epoch, over its batch, rounded down; the rest of its images that epoch (at most about one
    shard and one batch per process, a different random part each epoch) are dropped.
    ``decode_device``: ``"cpu"`` decodes in the workers; ``"auto"`` (CUDA when present, unless
    ``SELFSUP_GPU_DECODE=0``) or ``"cuda[:N]"`` decode plain JPEGs in batches on that device.

    Attributes: ``num_images`` (of the split, all processes), ``channels``, ``classes``, ``labels``
    (int64 ``[num_images]`` indexed by ``StreamBatch.index``, or None), ``steps_per_epoch``.
    """

    def __init__(self, store: str | Path, views: Sequence[ViewSpec], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 2, prefetch: int = 2, *, split: str = "train",
                 decode_device: str = "auto") -> None:
        if not views:
            raise ValueError("StreamSource needs at least one view")
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(f"batch size {batch_size} (the global batch) does not split evenly over "
                             f"{world_size} processes")
        reader = Store(store, split)
        self.store, self.split, self.views = reader.path, split, list(views)
        self.num_images, self.channels, self.classes = len(reader), reader.channels, reader.classes
        self.labels: torch.Tensor | None = reader.labels()
        counts = tuple(reader.shard_counts)
        if len(counts) < world_size:
            raise StoreError(f"{reader.path} has {len(counts)} {split} shard(s) for {world_size} processes; "
                             "rebuild it with a smaller shard size")
        self.steps_per_epoch = common_steps_per_epoch(counts, batch_size, world_size)
        if self.steps_per_epoch == 0:
            raise StoreError(f"batch size {batch_size} is larger than the images a process is sure to get in an "
                             f"epoch from {reader.path} ({len(counts)} shards over {world_size} processes)")
        self._plan = _Plan(counts, seed, rank, world_size, batch_size // world_size, self.steps_per_epoch)
        self.workers, self.prefetch = workers, prefetch
        self._device = _decode_device(decode_device)

    def epoch_rows(self, epoch: int) -> torch.Tensor:
        """This process's dataset indices of ``epoch``, in the order its batches take them."""
        return self._plan.epoch_rows(epoch)

    def batches(self, start_step: int) -> Iterator[StreamBatch]:
        """Batches from global step ``start_step`` to the last step of that step's epoch."""
        step, end = start_step, (start_step // self.steps_per_epoch + 1) * self.steps_per_epoch
        while step < end:
            batched = self._device is not None
            steps = _TrainSteps(self.store, self.split, self._plan, self.views, leave_jpegs=batched)
            for loaded in _loader(steps, range(step, end), self.workers, self.prefetch):
                yield self._finish(loaded)
                step += 1
                if batched and self._device is None:  # the device decoder failed: the workers decode from here
                    break

    def _finish(self, loaded: _Loaded) -> StreamBatch:
        """Decode the plain JPEGs left by the worker on the device (on the CPU if that fails)."""
        batch = loaded.batch
        if not loaded.pending_rows:
            return batch
        sizes = [v.size for v in self.views]
        try:
            crops = decode_crops_batched(loaded.pending_data, loaded.pending_orientations, self.channels,
                                         loaded.pending_boxes, sizes, self._device)
            batch.views = [view.to(self._device) for view in batch.views]
        except Exception as e:  # no usable device decoder: decode on the CPU, now and from here on
            warnings.warn(f"batched JPEG decoding on {self._device} failed ({type(e).__name__}: {e}); "
                          "decoding on the CPU", stacklevel=3)
            self._device = None
            crops = [decode_crops(bytes(data.numpy()), self.channels, boxes, sizes)
                     for data, boxes in zip(loaded.pending_data, loaded.pending_boxes)]
        for i, row_crops in zip(loaded.pending_rows, crops):
            for view, crop in zip(batch.views, row_crops):
                view[i] = crop
        return batch


def _decode_device(decode_device: str) -> torch.device | None:
    """None for the workers' Pillow decode; else the device of the batched JPEG decoder."""
    if not gpu_decode_enabled(decode_device):
        return None
    return torch.device("cuda") if decode_device == "auto" else torch.device(decode_device)


def _loader(dataset: Dataset, steps: Sequence[int], workers: int, prefetch: int) -> DataLoader:
    """Items in ``steps`` order, decoded by ``workers`` processes ``prefetch`` items ahead each."""
    return DataLoader(dataset, batch_size=None, sampler=steps, num_workers=workers,
                      prefetch_factor=prefetch if workers else None, collate_fn=_identity)


def _identity(item):
    return item


class _EvalBatches(Dataset):
    """Item ``k``: rows ``[k * batch, (k + 1) * batch)`` of a split, resized + centre-cropped."""

    def __init__(self, store: Path, split: str, size: int, batch_size: int, crop_fraction: float,
                 count: int) -> None:
        self.store_path, self.split, self.size = store, split, size
        self.batch_size, self.crop_fraction, self.count = batch_size, crop_fraction, count
        self._store: Store | None = None

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._store is None:
            self._store = Store(self.store_path, self.split)
        store = self._store
        rows = torch.arange(k * self.batch_size, min((k + 1) * self.batch_size, self.count))
        images = torch.empty((len(rows), store.channels, self.size, self.size), dtype=torch.uint8)
        for i, row in enumerate(rows.tolist()):
            record = store.index[row]
            box = center_box(int(record["height"]), int(record["width"]), self.crop_fraction)
            images[i] = decode_crops(store.read(row), store.channels, [box], [self.size])[0]
        return rows, images


def center_crop_batches(store: str | Path, size: int, batch_size: int, *, split: str = "test",
                        crop_fraction: float = EVAL_CROP_FRACTION, workers: int = 2,
                        prefetch: int = 2, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation view of every image of ``split`` in store order (the first ``limit`` when given):
    ``(index [b], uint8 [b, C, size, size])`` per batch, the short side resized to ``size /
    crop_fraction`` and the centre kept."""
    path = Path(store).expanduser()
    count = len(Store(path, split))
    count = count if limit is None else min(count, limit)
    dataset = _EvalBatches(path, split, size, batch_size, crop_fraction, count)
    yield from _loader(dataset, range(-(-count // batch_size)), workers, prefetch)


def decoded_split(store: str | Path, size: int, *, max_train: int | None = None, workers: int = 2,
                  progress: bool = True) -> DataSplit:
    """A store decoded into memory at ``size`` (resize + centre crop, the evaluation view): every test
    image and the first ``max_train`` training rows (store rows are shuffled, so a random sample)."""
    path = Path(store).expanduser()
    parts = {}
    for split in ("train", "test"):
        reader = Store(path, split)
        count = len(reader) if split == "test" or max_train is None else min(max_train, len(reader))
        images = torch.empty((count, reader.channels, size, size), dtype=torch.uint8)
        batches = center_crop_batches(path, size, 256, split=split, workers=workers, limit=count)
        for index, batch in tqdm(batches, total=-(-count // 256), desc=f"decoding {split}", unit="batch",
                                 leave=False, disable=not progress):
            images[index] = batch
        labels = reader.labels()
        parts[split] = ImageDataset(f"store:{path.name}/{split}", images,
                                    None if labels is None else labels[:count], reader.classes)
    manifest = Store(path, "train").manifest
    total = len(Store(path, "train"))
    kept = f", {len(parts['train'])} of {total} training images" if len(parts["train"]) < total else ""
    return DataSplit(train=parts["train"], test=parts["test"],
                     source=f"store:{path} ({manifest['source']}; decoded at {size}px{kept})",
                     skipped=[tuple(item) for item in manifest.get("skipped", [])])
