"""Load any folder of images into a cached, fixed-size uint8 :class:`DataSplit`.

Layout: ``PATH/train`` + ``PATH/test`` (or ``PATH/val``) give the split; otherwise each file goes
to test when a hash of its relative path falls in the last 10% (stable as files are added). Images
in first-level sub-folders are labeled by that folder's name; with no sub-folder images the data
is unlabeled. Every image is decoded once (EXIF rotation applied, transparency composited on
white, 16-bit scaled to 8-bit), resized (shorter side) and centre-cropped to a square, and cached
under ``~/.cache/selfsup/folders``. Files that cannot be used are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.io import atomic_write

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
DEFAULT_IMAGE_SIZE = 64
TEST_FRACTION = 0.1
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
CACHE_VERSION = 1
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class FolderError(ValueError):
    """The folder is missing or holds no usable image."""


class UnusableImage(ValueError):
    """A file that is skipped for a known reason (empty, too large); the message is the reason."""


class ImageTooLarge(UnusableImage):
    """The image has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression-bomb guard)."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "selfsup" / "folders"


# ---------------------------------------------------------------------------------------------
# Decoding one file


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """Integer/float single-channel modes (16-bit PNG, 32-bit TIFF) -> 8-bit ``L``."""
    arr = np.asarray(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    else:
        arr = arr.astype(np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0 and hi <= 1:
            arr = arr * 255
        elif lo >= 0 and hi <= 255:
            pass
        elif im.mode == "I" and lo >= 0 and hi <= 65535:
            arr = arr / 257
        else:  # unknown range: stretch to 0..255
            arr = (arr - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        out = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(out)  # 2-D uint8 -> mode L


def _has_alpha(im: Image.Image) -> bool:
    if hasattr(im, "has_transparency_data"):
        return bool(im.has_transparency_data)
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_l_or_rgb(im: Image.Image) -> tuple[Image.Image, bool]:
    """Convert to ``L`` (grayscale source) or ``RGB``; returns the image and whether it is gray."""
    gray = im.mode in _GRAY_MODES
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return _to_8bit_gray(im), True
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
        return flat.convert("L" if gray else "RGB"), gray
    if gray:
        return im.convert("L"), True
    return (im if im.mode == "RGB" else im.convert("RGB")), False


def _square(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size`` (one resampling)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return im.resize((size, size), Image.Resampling.BICUBIC,
                     box=(left, top, left + side, top + side), reducing_gap=3.0)


def decode_image(path: str, size: int) -> tuple[np.ndarray, bool]:
    """Decode ``path`` to a ``[size, size]`` (gray) or ``[size, size, 3]`` uint8 array.

    Returns ``(array, is_gray)``. Raises on any unusable file (see :func:`_decode_or_reason`).
    """
    if os.path.getsize(path) == 0:
        raise UnusableImage("empty file")
    with Image.open(path) as im:
        max_pixels = Image.MAX_IMAGE_PIXELS
        w, h = im.size
        if max_pixels and w * h > max_pixels:
            raise ImageTooLarge(f"image too large: {w}x{h} = {w * h} pixels > "
                                f"Image.MAX_IMAGE_PIXELS ({max_pixels})")
        if im.format == "JPEG":
            im.draft(None, (size, size))  # let libjpeg decode at a reduced scale (>= size)
        im.load()  # truncated files raise here (LOAD_TRUNCATED_IMAGES is left off)
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # a malformed EXIF block should not cost the image
            upright = im
        flat, gray = _to_l_or_rgb(upright)
        out = np.array(_square(flat, size), dtype=np.uint8)
    return out, gray


def _decode_or_reason(path: str, size: int) -> tuple[np.ndarray | None, bool, str]:
    """Like :func:`decode_image` but returns ``(None, False, reason)`` instead of raising."""
    try:
        arr, gray = decode_image(path, size)
        return arr, gray, ""
    except UnusableImage as e:
        return None, False, str(e)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, False, f"image too large: {e}"
    except UnidentifiedImageError:
        return None, False, "not a readable image (unknown or invalid format)"
    except FileNotFoundError:
        return None, False, "unreadable: file vanished or broken symlink"
    except OSError as e:
        if e.errno is not None:  # a system error (permission, I/O), not bad image data
            return None, False, f"unreadable: {e.strerror or e}"
        return None, False, f"truncated or corrupt image: {e}"
    except Exception as e:  # corrupt data: SyntaxError, EOFError, ValueError, struct.error, ...
        return None, False, f"truncated or corrupt image: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Scanning the tree


def _walk_images(top: Path) -> Iterator[Path]:
    """Image files under ``top`` (sorted, dot-names ignored, symlinks followed without loops)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath, name)


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) from ``text``."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    if not (root / "train").is_dir():
        return None
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / "train", root / name
    return None


def _class_of(file: Path, split_root: Path) -> str | None:
    parts = file.relative_to(split_root).parts
    return parts[0] if len(parts) > 1 else None


def _fingerprint(root: Path, files: list[Path], size: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}\0{root}\0{size}\0{Image.MAX_IMAGE_PIXELS}\0".encode())
    for f in files:
        try:
            st = f.stat()
            stamp = f"{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            stamp = "missing"
        h.update(f"{f.relative_to(root).as_posix()}\0{stamp}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Loading


def _decode_all(files: list[Path], size: int, progress: bool, workers: int | None,
                desc: str, decode_device: str = "auto") -> tuple[list[np.ndarray | None], list[bool], list[str]]:
    """Decode in a thread pool (Pillow releases the GIL while decoding and resizing).

    With CUDA (``decode_device="auto"``), plain JPEGs are first decoded on the GPU in batches
    (:mod:`selfsup.data.gpu_decode`); whatever that does not take, or any error there, goes through
    the CPU path. Returns per file: the pixels (``None`` when skipped), whether it is gray, the skip
    reason.
    """
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    arrays: list[np.ndarray | None] = [None] * len(files)
    gray: list[bool] = [False] * len(files)
    reasons: list[str] = [""] * len(files)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(files), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        # decode_image's own pixel-count check reports bombs; keep PIL's warning quiet
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        on_gpu = _decode_on_gpu(files, size, decode_device, pool, bar)
        for i, (arr, is_gray) in on_gpu.items():
            arrays[i], gray[i] = arr, is_gray
        rest = [i for i in range(len(files)) if i not in on_gpu]
        for i, (arr, is_gray, reason) in zip(rest, pool.map(lambda i: _decode_or_reason(str(files[i]), size), rest)):
            arrays[i], gray[i], reasons[i] = arr, is_gray, reason
            bar.update(1)
    return arrays, gray, reasons


def _decode_on_gpu(files: list[Path], size: int, decode_device: str, pool: ThreadPoolExecutor,
                   bar: tqdm) -> dict[int, tuple[np.ndarray, bool]]:
    """The GPU first pass (CUDA only); an empty result -- everything to the CPU -- on any error."""
    from selfsup.data.gpu_decode import decode_jpegs, gpu_decode_enabled

    if not gpu_decode_enabled(decode_device):
        return {}
    device = "cuda" if decode_device == "auto" else decode_device
    try:
        return decode_jpegs([str(f) for f in files], size, device=device, pool=pool, on_done=bar.update)
    except Exception as e:  # no usable GPU decoder after all: the CPU path decodes everything
        warnings.warn(f"GPU JPEG decoding unavailable ({type(e).__name__}: {e}); decoding on the CPU", stacklevel=3)
        bar.reset(total=len(files))
        return {}


def _build(root: Path, size: int, progress: bool, workers: int | None, files: list[Path],
           split_dirs: tuple[Path, Path] | None, decode_device: str = "auto") -> dict:
    """Decode ``files`` and assemble the cache record (plain tensors, lists and strings)."""
    skipped: list[tuple[str, str]] = []
    in_test: list[bool] = []
    class_of: list[str | None] = []
    for f in files:
        if split_dirs is not None:
            test = f.is_relative_to(split_dirs[1])
            class_of.append(_class_of(f, split_dirs[1] if test else split_dirs[0]))
        else:
            test = _hash_unit(f.relative_to(root).as_posix()) >= 1 - TEST_FRACTION
            class_of.append(_class_of(f, root))
        in_test.append(test)

    arrays, gray, reasons = _decode_all(files, size, progress, workers, f"decoding {root.name}", decode_device)
    usable = [i for i in range(len(files)) if not reasons[i]]
    labeled = any(class_of[i] is not None for i in usable)
    classes = sorted({class_of[i] for i in usable if class_of[i] is not None})
    keep: list[int] = []
    for i, f in enumerate(files):
        if reasons[i]:
            skipped.append((str(f), reasons[i]))
        elif labeled and class_of[i] is None:
            skipped.append((str(f), "outside any class sub-folder (the other images are labeled)"))
        else:
            keep.append(i)
    if not keep:
        raise FolderError(f"no usable image found in {root} ({len(skipped)} file(s) skipped, "
                          f"{len(files)} image file(s) seen)")
    all_gray = all(gray[i] for i in keep)
    test_idx = [i for i in keep if in_test[i]]
    train_idx = [i for i in keep if not in_test[i]]
    if split_dirs is None and not train_idx:  # tiny folder whose every hash fell in test
        train_idx, test_idx = test_idx, []

    def part(idx: list[int]) -> dict:
        channels = 1 if all_gray else 3
        images = torch.empty((len(idx), channels, size, size), dtype=torch.uint8)
        for row, i in enumerate(idx):
            arr = torch.from_numpy(arrays[i])
            images[row] = arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1)
        labels = torch.tensor([classes.index(class_of[i]) for i in idx], dtype=torch.int64) \
            if labeled else None
        return {"images": images, "labels": labels,
                "paths": [str(files[i]) for i in idx]}

    layout = (f"{split_dirs[0].name}/ and {split_dirs[1].name}/ folders" if split_dirs
              else f"hashed {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split")
    return {"version": CACHE_VERSION, "root": str(root), "image_size": size, "layout": layout,
            "classes": classes if labeled else [], "train": part(train_idx),
            "test": part(test_idx), "skipped": [[p, r] for p, r in skipped]}


def _to_split(record: dict, name: str, note: str) -> DataSplit:
    def ds(part: dict) -> ImageDataset:
        return ImageDataset(name=name, images=part["images"], labels=part["labels"],
                            classes=list(record["classes"]), paths=list(part["paths"]))
    train, test = ds(record["train"]), ds(record["test"])
    source = (f"folder {record['root']} ({record['layout']}, {len(train)} train / {len(test)} "
              f"test images at {record['image_size']}px; {note})")
    return DataSplit(train=train, test=test, source=source,
                     skipped=[(p, r) for p, r in record["skipped"]])


def load_folder(path: str | Path, *, image_size: int | None = None,
                cache_dir: str | Path | None = None, progress: bool = True,
                workers: int | None = None, decode_device: str = "auto") -> DataSplit:
    """Load the image tree at ``path`` (see the module docstring); unusable files go to ``skipped``.

    ``decode_device``: ``"auto"`` decodes plain JPEGs on the GPU when CUDA is available (the rest,
    and everything on any GPU error, on the CPU; ``SELFSUP_GPU_DECODE=0`` switches it off),
    ``"cpu"`` never uses the GPU, ``"cuda:N"`` names the GPU. Only the first pass decodes; the
    cache key does not depend on the decoder (GPU-decoded pixels differ from the CPU decode by a
    few levels).

    Raises :class:`FolderError` when the folder is missing or holds no usable image.
    """
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size <= 0:
        raise FolderError(f"image size must be positive, got {size}")
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise FolderError(f"{root} is not an existing folder")
    split_dirs = _split_dirs(root)
    tops = split_dirs if split_dirs is not None else (root,)
    files = [f for top in tops for f in _walk_images(top)]
    if not files:
        raise FolderError(f"no usable image found in {root} (0 image files; extensions: "
                          f"{' '.join(sorted(IMAGE_EXTENSIONS))})")

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_file = cache_root / f"{_fingerprint(root, files, size)}.pt"
    name = f"folder:{root.name}"
    if cache_file.is_file():
        try:
            record = torch.load(cache_file, weights_only=True)
            if record.get("version") == CACHE_VERSION:
                return _to_split(record, name, f"cache {cache_file}")
        except Exception as e:  # corrupt or foreign cache: rebuild it
            warnings.warn(f"ignoring unreadable cache {cache_file}: {e}", stacklevel=2)

    record = _build(root, size, progress, workers, files, split_dirs, decode_device)
    try:
        atomic_write(cache_file, lambda tmp: torch.save(record, tmp))
        note = f"decoded, cached at {cache_file}"
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache_file}: {e}", stacklevel=2)
        note = "decoded, not cached"
    return _to_split(record, name, note)
