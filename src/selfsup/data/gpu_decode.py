"""JPEG decoding on the GPU (nvJPEG) for the first, decode-once pass over an image folder.

Used by :func:`selfsup.data.folder.load_folder` when CUDA is available (``decode_device="auto"``,
unless ``SELFSUP_GPU_DECODE=0``). Only plain JPEGs go this way: files whose header says JPEG in
mode ``L`` or ``RGB`` within the pixel limit. Headers (size, mode, EXIF orientation) are read on the
CPU with Pillow, the compressed bytes are decoded in batches by ``torchvision.io.decode_jpeg(...,
device="cuda")``, then the EXIF rotation, the centre square crop and the bicubic antialiased resize
run on the GPU. Everything else -- other formats, CMYK/progressive files nvJPEG rejects, a batch that
fails for any reason -- is left to the CPU path, which also reports unusable files.

The pixels are close to, not bit-identical with, the CPU path's (Pillow's draft-mode JPEG decode
and resampling differ from nvJPEG + ``torch.nn.functional.interpolate`` by a few levels).
``decode_jpegs`` also runs with ``device="cpu"`` (torchvision's CPU decoder), which is how it is
tested on machines without a GPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
BATCH = 64  # files per decode_jpeg call
_EXIF_ORIENTATION = 0x0112


def gpu_decode_enabled(decode_device: str) -> bool:
    """Whether ``load_folder`` should try the GPU: ``"auto"`` with CUDA present (and not switched off)."""
    if decode_device == "cpu" or os.environ.get("SELFSUP_GPU_DECODE", "1") == "0":
        return False
    return decode_device != "auto" or torch.cuda.is_available()


def _candidate(path: str) -> tuple[torch.Tensor, bool, int] | None:
    """(raw bytes, is_gray, EXIF orientation) of a plain JPEG the GPU can take; None otherwise."""
    try:
        if os.path.splitext(path)[1].lower() not in JPEG_EXTENSIONS or os.path.getsize(path) == 0:
            return None
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if im.format != "JPEG" or im.mode not in ("L", "RGB") or (limit and w * h > limit):
                return None
            gray = im.mode == "L"
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        with open(path, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        return data, gray, orientation if 1 <= orientation <= 8 else 1
    except Exception:  # anything odd: the CPU path decides (and reports) what is wrong
        return None


def apply_orientation(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """``PIL.ImageOps.exif_transpose`` for a ``[C, H, W]`` tensor and an EXIF orientation 1..8."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))  # 90 degrees clockwise
    if orientation == 7:
        return x.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))  # 90 degrees counter-clockwise
    return x


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop (shorter side) of uint8 ``[C, H, W]``, bicubic antialiased resize to ``size``."""
    _, h, w = x.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = x[:, top:top + side, left:left + side].unsqueeze(0).float()
    if side != size:
        crop = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return crop.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def decode_jpegs(paths: Sequence[str], size: int, device: str | torch.device = "cuda",
                 pool: Executor | None = None, on_done: Callable[[int], None] | None = None,
                 batch: int = BATCH) -> dict[int, tuple[np.ndarray, bool]]:
    """Decode the plain JPEGs among ``paths`` on ``device`` to ``size x size`` uint8 arrays.

    Returns ``{index: (array, is_gray)}`` -- ``[size, size]`` for gray, ``[size, size, 3]`` for RGB,
    as :func:`selfsup.data.folder.decode_image` -- for the files decoded here; files left out (not
    a plain JPEG, or in a batch the decoder rejected) are for the caller's CPU path. ``on_done(k)``
    reports progress.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    mapper: Callable[..., Iterable] = pool.map if pool is not None else map
    found = [(i, c) for i, c in enumerate(mapper(_candidate, list(paths))) if c is not None]
    out: dict[int, tuple[np.ndarray, bool]] = {}
    failures: list[str] = []
    for start in range(0, len(found), batch):
        chunk = found[start:start + batch]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
                decoded = decode_jpeg([c[0] for _, c in chunk], mode=ImageReadMode.UNCHANGED, device=device)
            results = []
            for (i, (_, gray, orientation)), image in zip(chunk, decoded):
                if image.shape[0] != (1 if gray else 3):
                    continue  # header and decoder disagree: let the CPU path decide
                pixels = square_resize(apply_orientation(image, orientation), size)
                results.append((i, pixels, gray))
            host = [p.cpu() for _, p, _ in results]  # one wait per batch, after all its work is queued
        except Exception as e:  # nvJPEG refused the batch (progressive/odd files, out of memory): CPU path
            failures.append(f"{type(e).__name__}: {e}")
            continue
        for (i, _, gray), pixels in zip(results, host):
            out[i] = (pixels[0].numpy() if gray else pixels.permute(1, 2, 0).contiguous().numpy(), gray)
        if on_done is not None:
            on_done(len(results))
    if failures:
        warnings.warn(f"GPU JPEG decoding failed for {len(failures)} of {-(-len(found) // batch)} batches "
                      f"(first: {failures[0]}); those files were decoded on the CPU", stacklevel=2)
    return out
