"""Crops drawn on the full stored image: decode, crop, resize (antialiased) to a view's size.

Training views follow the random-resized crop of the papers (SimCLR, Chen et al. 2020, appendix A;
BYOL, Grill et al. 2020, Table 6): a box whose area fraction is uniform in the view's ``crop_scale``
and whose aspect ratio is log-uniform in ``crop_ratio``, drawn on the image's real size, then
resized to ``size x size``. Evaluation uses the standard resize + centre crop (short side to
``size / crop_fraction``, centre ``size x size``; 256 -> 224 for ``crop_fraction=0.875``), done
here as one resampling of the centre box. Flip and colour are left to the batched on-device
augmentation (:mod:`selfsup.data.augment`).

Two decoders give the same crops: Pillow (DataLoader workers, CPU) and ``torchvision.io.decode_jpeg``
in batches on a device (nvJPEG on CUDA). Their pixels differ by a few levels, as in
:mod:`selfsup.data.gpu_decode`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from selfsup.data.augment import _sample_crops
from selfsup.data.folder import _to_l_or_rgb
from selfsup.data.gpu_decode import apply_orientation

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels of the upright image
EVAL_CROP_FRACTION = 0.875  # 224 / 256


def random_resized_crop_params(height: int, width: int, scale: tuple[float, float],
                               ratio: tuple[float, float], generator: torch.Generator) -> Box:
    """One random-resized crop box on a ``height x width`` image (``RandomResizedCrop.get_params``:
    up to 10 attempts, then the centre crop clipped to ``ratio``); the draw of :mod:`augment`."""
    top, left, h, w = _sample_crops(1, int(height), int(width), scale, ratio, generator)[0].tolist()
    return top, left, h, w


def center_box(height: int, width: int, crop_fraction: float = EVAL_CROP_FRACTION) -> tuple[float, float, float, float]:
    """The centre square that resize-short-side-then-centre-crop keeps: ``crop_fraction`` of the short side."""
    side = min(height, width) * crop_fraction
    return (height - side) / 2, (width - side) / 2, side, side


def open_upright(data: bytes, channels: int) -> Image.Image:
    """Decode stored bytes as :func:`selfsup.data.folder.decode_image` does (EXIF rotation applied,
    transparency on white, 16-bit to 8-bit) to mode ``L`` (``channels == 1``) or ``RGB``."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # a malformed EXIF block: the image as stored, as the folder loader does
            upright = im
        flat, _ = _to_l_or_rgb(upright)
    return flat if channels == 1 or flat.mode == "RGB" else flat.convert("RGB")


def crop_resize(image: Image.Image, box: Sequence[float], size: int) -> torch.Tensor:
    """The box ``(top, left, height, width)`` of ``image`` resized to uint8 ``[C, size, size]``
    (bilinear, antialiased: Pillow averages over every source pixel a target pixel covers)."""
    top, left, h, w = box
    pixels = torch.from_numpy(np.array(image.resize((size, size), Image.Resampling.BILINEAR,
                                                     box=(left, top, left + w, top + h))))
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


def decode_crops(data: bytes, channels: int, boxes: Sequence[Sequence[float]],
                 sizes: Sequence[int]) -> list[torch.Tensor]:
    """Decode once on the CPU, then one ``[C, size, size]`` crop per (box, size)."""
    image = open_upright(data, channels)
    return [crop_resize(image, box, size) for box, size in zip(boxes, sizes)]


def decode_crops_batched(data: Sequence[torch.Tensor], orientations: Sequence[int], channels: int,
                         boxes: Sequence[Sequence[Sequence[float]]], sizes: Sequence[int],
                         device: str | torch.device) -> list[list[torch.Tensor]]:
    """Plain JPEGs (L or RGB) decoded together by ``torchvision.io.decode_jpeg`` on ``device``.

    ``data[i]`` is the uint8 byte tensor of image ``i``, ``boxes[i][v]`` its box for view ``v``;
    returns ``crops[i][v]``, uint8 ``[channels, sizes[v], sizes[v]]`` on ``device``. Raises when
    the decoder cannot run there (no CUDA, a file it rejects): the caller decodes on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        images = decode_jpeg(list(data), mode=ImageReadMode.UNCHANGED, device=device)
    crops = []
    for image, orientation, image_boxes in zip(images, orientations, boxes):
        upright = apply_orientation(image, orientation)
        if upright.shape[0] != channels:
            upright = upright.expand(channels, -1, -1)  # a gray JPEG in a colour store
        crops.append([_resize_box(upright, box, size) for box, size in zip(image_boxes, sizes)])
    return crops


def _resize_box(image: torch.Tensor, box: Sequence[float], size: int) -> torch.Tensor:
    """Integer box of uint8 ``[C, H, W]`` to ``[C, size, size]``: bilinear, antialiased, rounded."""
    top, left, h, w = (int(round(v)) for v in box)
    crop = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
