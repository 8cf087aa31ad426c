"""An image store on disk for data bigger than memory: WebDataset tar shards plus an index.

Layout of a store folder (see docs/data-store.md for the format choice)::

    manifest.json              format version, source, channels, classes, shards, skipped files
    train-000000.tar ...       WebDataset shards: per sample KEY.jpg|png|webp, KEY.cls, KEY.json
    test-000000.tar ...
    index-train.npy            one row per image: shard, byte offset and size, label, size, EXIF
    index-test.npy

The shards are plain tar files that ``tar``, ``webdataset`` and ``wids`` read; the index gives
random access to any image (one ``pread``) without scanning them. Images keep their encoded bytes
(JPEG, PNG, WebP as they are) unless ``short_side`` is given, which re-encodes the larger ones
(JPEG) with the short side at that size; other formats (BMP, GIF, TIFF, ...) are stored as PNG.

Built from ``folder:PATH`` with the rules of :mod:`selfsup.data.folder` (train/test or val
sub-folders, else a stable hashed 10% test split; first-level sub-folders are the classes; unusable
files skipped, listed in the manifest and returned, never fatal), or from an in-memory
:class:`DataSplit` (stored losslessly as PNG, for tests).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.folder import (
    TEST_FRACTION,
    ImageTooLarge,
    UnusableImage,
    _class_of,
    _hash_unit,
    _split_dirs,
    _to_l_or_rgb,
    _walk_images,
)
from selfsup.io import atomic_write, write_json_atomic

STORE_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 2000
DEFAULT_QUALITY = 95
SHARD_ORDER_SEED = 0
SPLITS = ("train", "test")
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
INDEX_DTYPE = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i8"),
                        ("height", "<i4"), ("width", "<i4"), ("orientation", "u1"), ("plain_jpeg", "?")])
_EXIF_ORIENTATION = 0x0112
_BLOCK = 512  # tar block size


class StoreError(ValueError):
    """A store that cannot be built or read (one-line message)."""


@dataclass
class StoreInfo:
    """What :func:`build_store` wrote: images per split, shards per split, channels, classes, skipped files."""

    path: Path
    images: dict[str, int]
    shards: dict[str, int]
    channels: int
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Encoded:
    """One image as stored: bytes, extension, upright size, EXIF orientation of the bytes, gray or not."""

    data: bytes
    ext: str
    height: int
    width: int
    orientation: int
    gray: bool
    plain_jpeg: bool  # JPEG in mode L/RGB: the batched device decoder takes it


@dataclass
class _Item:
    """A sample to store: where its bytes come from, its class index (-1: none) and its name."""

    load: Callable[[], _Encoded]
    label: int
    path: str


# ---------------------------------------------------------------------------------------------
# Encoding one image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _encode_file(path: str, short_side: int | None, quality: int) -> _Encoded:
    """Check ``path`` fully (a truncated file raises), keep or re-encode its bytes (module docstring)."""
    data = Path(path).read_bytes()
    if not data:
        raise UnusableImage("empty file")
    with Image.open(io.BytesIO(data)) as im:
        limit, (w, h) = Image.MAX_IMAGE_PIXELS, im.size
        if limit and w * h > limit:
            raise ImageTooLarge(f"image too large: {w}x{h} = {w * h} pixels > Image.MAX_IMAGE_PIXELS ({limit})")
        fmt, mode = im.format, im.mode
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        im.load()  # truncated files raise here
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # read back the same way (selfsup.data.crops.open_upright)
            upright, orientation = im, 1
        flat, gray = _to_l_or_rgb(upright)
    width, height = flat.size
    if short_side is not None and min(width, height) > short_side:
        scale = short_side / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        small = flat.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=quality)
        return _Encoded(buffer.getvalue(), "jpg", height, width, 1, gray, True)
    if fmt in KEPT_FORMATS:
        orientation = orientation if 1 <= orientation <= 8 else 1
        return _Encoded(data, KEPT_FORMATS[fmt], height, width, orientation, gray,
                        fmt == "JPEG" and mode in ("L", "RGB"))
    return _Encoded(_png(flat), "png", height, width, 1, gray, False)


def _encode_array(image: torch.Tensor) -> _Encoded:
    """uint8 ``[1 or 3, H, W]`` -> lossless PNG."""
    channels, height, width = image.shape
    if channels not in (1, 3):
        raise StoreError(f"in-memory images must have 1 or 3 channels, got {channels}")
    pixels = image[0].numpy() if channels == 1 else image.permute(1, 2, 0).contiguous().numpy()
    return _Encoded(_png(Image.fromarray(pixels)), "png", height, width, 1, channels == 1, False)


def _skip_reason(error: Exception) -> str:
    """Why a file is skipped, in the words of :mod:`selfsup.data.folder`."""
    if isinstance(error, UnusableImage):
        return str(error)
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large: {error}"
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image (unknown or invalid format)"
    if isinstance(error, FileNotFoundError):
        return "unreadable: file vanished or broken symlink"
    if isinstance(error, OSError) and error.errno is not None:
        return f"unreadable: {error.strerror or error}"
    if isinstance(error, OSError):
        return f"truncated or corrupt image: {error}"
    return f"truncated or corrupt image: {type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------
# Sources


def _folder_items(root: Path, short_side: int | None, quality: int
                  ) -> tuple[dict[str, list[_Item]], list[str], str, list[tuple[str, str]]]:
    """Items per split, classes, layout and the files skipped before decoding (folder.py's rules).

    Classes are the first-level sub-folders holding image files (decided from the paths, before
    decoding: a class whose every file is unusable keeps its index, with no image).
    """
    split_dirs = _split_dirs(root)
    files = [f for top in (split_dirs or (root,)) for f in _walk_images(top)]
    if not files:
        raise StoreError(f"no image file found in {root}")
    if split_dirs is not None:
        in_test = [f.is_relative_to(split_dirs[1]) for f in files]
        class_of = [_class_of(f, split_dirs[1] if test else split_dirs[0]) for f, test in zip(files, in_test)]
    else:
        in_test = [_hash_unit(f.relative_to(root).as_posix()) >= 1 - TEST_FRACTION for f in files]
        class_of = [_class_of(f, root) for f in files]
    classes = sorted({c for c in class_of if c is not None})
    if split_dirs is None and all(in_test):  # tiny folder whose every hash fell in test
        in_test = [False] * len(files)
    items: dict[str, list[_Item]] = {name: [] for name in SPLITS}
    skipped: list[tuple[str, str]] = []
    for f, test, name in zip(files, in_test, class_of):
        if classes and name is None:
            skipped.append((str(f), "outside any class sub-folder (the other images are labeled)"))
            continue
        load = (lambda p=str(f): _encode_file(p, short_side, quality))
        items["test" if test else "train"].append(_Item(load, classes.index(name) if classes else -1, str(f)))
    layout = (f"{split_dirs[0].name}/ and {split_dirs[1].name}/ folders" if split_dirs
              else f"hashed {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split")
    return items, classes, layout, skipped


def _memory_items(split: DataSplit) -> tuple[dict[str, list[_Item]], list[str]]:
    def items(ds: ImageDataset) -> list[_Item]:
        labels = ds.labels.tolist() if ds.labels is not None else [-1] * len(ds)
        return [_Item(lambda i=i: _encode_array(ds.images[i]), int(labels[i]), f"{ds.name}[{i}]")
                for i in range(len(ds))]
    classes = list(split.train.classes)
    if split.train.labels is not None and not classes:
        top = max(int(ds.labels.max()) for ds in (split.train, split.test) if ds.labels is not None and len(ds))
        classes = [str(c) for c in range(top + 1)]
    return {"train": items(split.train), "test": items(split.test)}, classes


# ---------------------------------------------------------------------------------------------
# Writing


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append ``name`` holding ``data``; returns the byte offset of the data in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // _BLOCK) * _BLOCK


def _write_shard(path: Path, shard: int, items: Sequence[_Item], classes: list[str],
                 on_done: Callable[[int], None]) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Write one shard; returns (index row, gray) per stored image and the skipped files."""
    rows: list[tuple] = []
    skipped: list[tuple[str, str]] = []
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for item in items:
            try:
                enc = item.load()
            except Exception as e:  # every unusable file is reported, none is fatal
                skipped.append((item.path, _skip_reason(e)))
                on_done(1)
                continue
            key = f"{shard:06d}_{len(rows):06d}"
            offset = _add(tar, f"{key}.{enc.ext}", enc.data)
            meta = {"path": item.path, "class": classes[item.label] if item.label >= 0 else None}
            if item.label >= 0:
                _add(tar, f"{key}.cls", str(item.label).encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            rows.append(((shard, offset, len(enc.data), item.label, enc.height, enc.width, enc.orientation,
                          enc.plain_jpeg), enc.gray))
            on_done(1)
    os.replace(tmp, path)
    return rows, skipped


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _write_split(out: Path, split: str, items: list[_Item], classes: list[str], shard_size: int,
                 pool: ThreadPoolExecutor, bar: tqdm
                 ) -> tuple[np.ndarray, list[bool], list[dict], list[tuple[str, str]]]:
    """Write the shards of one split in parallel; returns its index, gray flags, shard list, skipped files.

    The items are shuffled (a fixed seed) before being cut into shards, so each shard mixes the
    classes instead of holding one folder: a process reading a few shards still sees every class.
    """
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(SHARD_ORDER_SEED)).tolist()
    items = [items[i] for i in order]
    chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    paths = [out / f"{split}-{k:06d}.tar" for k in range(len(chunks))]
    results = list(pool.map(lambda k: _write_shard(paths[k], k, chunks[k], classes, bar.update), range(len(chunks))))
    rows = [row for shard_rows, _ in results for row, _ in shard_rows]
    gray = [g for shard_rows, _ in results for _, g in shard_rows]
    shards = [{"file": p.name, "images": len(r)} for p, (r, _) in zip(paths, results)]
    skipped = [s for _, shard_skipped in results for s in shard_skipped]
    return np.array(rows, dtype=INDEX_DTYPE), gray, shards, skipped


def build_store(source: str | Path | DataSplit, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                short_side: int | None = None, quality: int = DEFAULT_QUALITY, workers: int | None = None,
                progress: bool = True) -> StoreInfo:
    """Write the store of ``source`` (``"folder:PATH"``, a folder path or a :class:`DataSplit`) to the
    empty or new folder ``out``; see the module docstring. ``short_side``: re-encode (JPEG at
    ``quality``) images whose short side is larger, down to that side, aspect ratio kept.
    ``workers``: threads writing shards in parallel (default: the usable cores).

    Raises :class:`StoreError` when the source holds no usable image or ``out`` is not empty.
    """
    if shard_size <= 0 or (short_side is not None and short_side <= 0):
        raise StoreError(f"shard_size and short_side must be positive, got {shard_size} and {short_side}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} exists and is not an empty folder; choose a new one")
    if isinstance(source, DataSplit):
        items, classes = _memory_items(source)
        name, layout, skipped = f"memory:{source.train.name}", "in-memory train/test", []
    else:
        text = str(source)
        root = Path(text.removeprefix("folder:")).expanduser().absolute()
        if not root.is_dir():
            raise StoreError(f"{root} is not an existing folder")
        items, classes, layout, skipped = _folder_items(root, short_side, quality)
        name = f"folder:{root}"
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    total = sum(len(v) for v in items.values())
    splits, gray = {}, []
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=total, desc=f"storing {name}", unit="img", disable=not progress) as bar:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel check reports bombs
        for split in SPLITS:
            index, split_gray, shards, split_skipped = _write_split(out, split, items[split], classes, shard_size,
                                                                    pool, bar)
            atomic_write(out / f"index-{split}.npy", lambda tmp, a=index: _save_npy(tmp, a))
            splits[split] = {"images": len(index), "index": f"index-{split}.npy", "shards": shards}
            gray += split_gray
            skipped += split_skipped
    if not gray:
        raise StoreError(f"no usable image in {name} ({len(skipped)} file(s) skipped); {out} is not a store")
    channels = 1 if all(gray) else 3
    write_json_atomic(out / MANIFEST, {
        "format": "webdataset", "store_version": STORE_VERSION, "source": name, "layout": layout,
        "short_side": short_side, "channels": channels, "classes": classes, "splits": splits,
        "skipped": [[p, r] for p, r in skipped]})
    return StoreInfo(path=out, images={s: splits[s]["images"] for s in SPLITS},
                     shards={s: len(splits[s]["shards"]) for s in SPLITS}, channels=channels,
                     classes=classes, skipped=skipped)


# ---------------------------------------------------------------------------------------------
# Reading


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a store manifest."""
    return (Path(path).expanduser() / MANIFEST).is_file()


class Store:
    """Random access to one split of a store: ``read(row)`` gives the encoded bytes of image ``row``.

    The index is memory-mapped (its pages are shared and evicted like the shards'), and shard files
    are opened on first use in the process that reads them (DataLoader workers each open their own).
    """

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path = Path(path).expanduser()
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.path} is not a readable store (no valid {MANIFEST}: {e})") from e
        if self.manifest.get("store_version") != STORE_VERSION:
            raise StoreError(f"{self.path}: store version {self.manifest.get('store_version')!r}, "
                             f"this selfsup reads version {STORE_VERSION}; rebuild the store")
        if split not in self.manifest["splits"]:
            raise StoreError(f"{self.path} has no split {split!r} (it has {', '.join(self.manifest['splits'])})")
        self.split = split
        entry = self.manifest["splits"][split]
        self.channels: int = int(self.manifest["channels"])
        self.classes: list[str] = list(self.manifest["classes"])
        self.shard_files: list[str] = [s["file"] for s in entry["shards"]]
        self.shard_counts: list[int] = [int(s["images"]) for s in entry["shards"]]
        self.index: np.ndarray = np.load(self.path / entry["index"], mmap_mode="r") if entry["images"] else \
            np.zeros(0, dtype=INDEX_DTYPE)
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def labels(self) -> torch.Tensor | None:
        """int64 ``[N]`` labels of the split, or None when the store is unlabeled."""
        return torch.from_numpy(np.array(self.index["label"], dtype=np.int64)) if self.classes else None

    def read(self, row: int) -> bytes:
        """The encoded bytes of image ``row`` (one positioned read)."""
        shard, offset, size = (int(self.index[row][k]) for k in ("shard", "offset", "size"))
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.path / self.shard_files[shard], os.O_RDONLY)
        return os.pread(fd, size, offset)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
