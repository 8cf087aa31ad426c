"""Batched, on-device image augmentation for self-supervised learning.

The pipeline is the one used by SimCLR (Chen et al. 2020, appendix A: "Data augmentation
details") and BYOL (Grill et al. 2020, Table 6 / appendix B), applied in this order:

1. random resized crop + horizontal flip (one ``F.affine_grid`` + ``F.grid_sample`` for the batch),
2. colour jitter (brightness, contrast, saturation, hue) in a random order, with probability
   ``jitter_p``,
3. grayscale with probability ``grayscale_p``,
4. Gaussian blur with probability ``blur_p``,
5. solarisation with probability ``solarize_p``.

All random parameters are drawn independently per image from an explicit **CPU**
``torch.Generator`` (so a seed gives the same numbers whether the images live on CPU or CUDA, and a
saved generator state resumes the exact stream), then the small parameter tensors are moved to the
images' device and the whole batch is transformed at once -- there are no Python loops over
images. The number of values drawn depends only on the batch size, never on the spec or on the
outcome of a coin flip.

``augment(images, spec, generator)`` is ``apply_params(images, spec, sample_params(...))``; use the
two halves directly to inspect or replay the drawn parameters.

Semantics and deviations from torchvision:

* Crops follow ``torchvision.transforms.RandomResizedCrop.get_params``: area fraction uniform in
  ``crop_scale``, log-uniform aspect ratio in ``crop_ratio``, integer boxes, up to 10 attempts and
  then a centre crop fallback. The 10 attempts are drawn at once for every image and the first
  valid one is taken, so the random stream differs from torchvision's but the distribution is
  the same.
* Resizing is bilinear ``grid_sample`` (``align_corners=False``) **without antialiasing**: a crop
  that is downscaled a lot (e.g. a full 224 px image to 32 px) aliases. Upscaling, and crops
  of roughly the output size -- the usual case for the small images this library trains on -- are
  unaffected. When every crop of the batch is the whole image and the output size equals the
  input size, the crop is skipped and the (optional) flip is an exact copy.
* Colour jitter factors follow ``ColorJitter``: brightness/contrast/saturation factors uniform in
  ``[max(0, 1 - s), 1 + s]``, hue shift uniform in ``[-h, h]`` of a full turn; the four ops run
  in a random order drawn per image and the result is clamped to [0, 1] after each op. An op
  whose strength is 0 is skipped.
* Grayscale (and the grayscale used by contrast and saturation) uses the ITU-R 601-2 luma weights
  0.299, 0.587, 0.114 (torchvision uses 0.2989), repeated over the 3 channels.
* Blur: sigma uniform in ``blur_sigma`` per image, kernel size the odd number nearest
  ``blur_kernel_fraction * size`` (at least 3), separable, reflect padding.
* Solarise: pixels ``>= solarize_threshold`` become ``1 - x``.

Channel counts: for 1-channel (grayscale) images brightness and contrast apply (contrast blends
towards the image mean) while saturation, hue and grayscale are no-ops. For channel counts other
than 1 and 3 only the geometric ops, brightness, contrast (towards the mean over all channels),
blur and solarisation apply.

Images for which an op is not selected are left bit-identical by that op.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from selfsup.data.transfer import to_device
from selfsup.data.views import ViewSpec

__all__ = [
    "AugmentParams",
    "sample_params",
    "apply_params",
    "augment",
    "augment_views",
    "normalize",
    "to_float",
    "crop_flip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_grayscale",
    "gaussian_blur",
    "solarize",
    "blur_kernel_size",
    "LUMA_WEIGHTS",
    "JITTER_OPS",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # order indices refer to this tuple
_CROP_ATTEMPTS = 10


@dataclass
class AugmentParams:
    """Per-image random parameters for one view of a batch of ``B`` images.

    ``crop`` is ``[B, 4]`` int64 ``(top, left, height, width)`` in input pixels; ``order`` is
    ``[B, 4]`` int64, a permutation of ``range(4)`` per image, ``order[b, k]`` being the index in
    ``JITTER_OPS`` of the op applied at position ``k``. Boolean ``[B]`` masks say whether each op is
    applied; factors are float32 ``[B]`` (drawn for every image, used only where applied).
    """

    crop: torch.Tensor
    flip: torch.Tensor
    jitter_apply: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur_apply: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.crop.shape[0]

    def to(self, device: torch.device | str) -> "AugmentParams":
        """The same parameters on ``device``, copied without a host-device synchronisation."""
        return AugmentParams(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError("the augmentation generator must live on the CPU (parameters are drawn "
                         "on CPU and moved to the images' device)")


def _uniform(n: int, low: float, high: float, generator: torch.Generator, shape=None) -> torch.Tensor:
    shape = (n,) if shape is None else shape
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    # u in [0, 1): p = 0 -> never, p = 1 -> always.
    return torch.rand(n, generator=generator, dtype=torch.float64) < p


def _sample_crops(n: int, height: int, width: int, scale: tuple[float, float],
                  ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Vectorised ``RandomResizedCrop.get_params`` for ``n`` images: ``[n, 4]`` (top, left, h, w)."""
    area = float(height * width)
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target_area = area * _uniform(n, scale[0], scale[1], generator, (n, _CROP_ATTEMPTS))
    aspect = torch.exp(_uniform(n, float(log_ratio[0]), float(log_ratio[1]), generator,
                                (n, _CROP_ATTEMPTS)))
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.long().argmax(dim=1, keepdim=True)  # index of first valid attempt (0 if none)
    any_valid = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Offsets: integer uniform in [0, H - h] and [0, W - w] (drawn for every image).
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64)

    # Fallback: centre crop, clipped to the ratio range (as torchvision does).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    w = torch.where(any_valid, w, torch.full_like(w, fw))
    h = torch.where(any_valid, h, torch.full_like(h, fh))
    top = torch.floor(u[:, 0] * (height - h + 1).double()).long().clamp_(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1).double()).long().clamp_(max=width - w)
    top = torch.where(any_valid, top, (height - h) // 2)
    left = torch.where(any_valid, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def sample_params(batch_size: int, spec: ViewSpec, generator: torch.Generator,
                  image_size: int | tuple[int, int]) -> AugmentParams:
    """Draw the random parameters of one view for ``batch_size`` images of ``image_size`` (CPU).

    ``image_size`` is the input side length or ``(height, width)``. The number of values drawn
    depends only on ``batch_size``, so streams stay aligned across specs.
    """
    _check_generator(generator)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = int(batch_size)
    crop = _sample_crops(n, int(height), int(width), spec.crop_scale, spec.crop_ratio, generator)
    flip = _coin(n, spec.flip_p, generator)
    jitter_apply = _coin(n, spec.jitter_p, generator)

    def factor(strength: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator).float()

    brightness = factor(spec.brightness)
    contrast = factor(spec.contrast)
    saturation = factor(spec.saturation)
    hue = _uniform(n, -spec.hue, spec.hue, generator).float()
    order = torch.argsort(torch.rand((n, 4), generator=generator), dim=1)
    gray = _coin(n, spec.grayscale_p, generator)
    blur_apply = _coin(n, spec.blur_p, generator)
    sigma = _uniform(n, spec.blur_sigma[0], spec.blur_sigma[1], generator).float()
    solar = _coin(n, spec.solarize_p, generator)
    return AugmentParams(crop=crop, flip=flip, jitter_apply=jitter_apply, brightness=brightness,
                         contrast=contrast, saturation=saturation, hue=hue, order=order, gray=gray,
                         blur_apply=blur_apply, sigma=sigma, solarize=solar)


# --------------------------------------------------------------------------------------------
# Individual ops. Each takes float images [B, C, H, W] in [0, 1] and per-image tensors [B].
# --------------------------------------------------------------------------------------------

def crop_flip(x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes ``[B, 4]`` (top, left, h, w) resized to ``size`` x ``size``, flipped where ``flip``.

    One bilinear ``grid_sample`` (align_corners=False, no antialiasing) for the whole batch.
    """
    b, _, height, width = x.shape
    crop = crop.to(device=x.device, dtype=x.dtype)
    top, left, h, w = crop.unbind(1)
    sx = w / width
    sy = h / height
    tx = (2 * left + w) / width - 1
    ty = (2 * top + h) / height - 1
    sign = 1 - 2 * flip.to(device=x.device, dtype=x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sx * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of RGB ``[..., 3, H, W]`` -> ``[..., 1, H, W]``."""
    r, g, b = x.unbind(-3)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(-3)


def _per_image(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1 - ratio) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x * factor`` clamped to [0, 1] (any channel count)."""
    return (x * _per_image(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grayscale value of each image (mean over all channels unless RGB)."""
    gray = rgb_to_grayscale(x) if x.shape[1] == 3 else x
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend RGB images with their grayscale version; identity for other channel counts."""
    if x.shape[1] != 3:
        return x
    return _blend(x, rgb_to_grayscale(x), _per_image(factor, x))


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                    torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc = (maxc - r) / safe
    gc = (maxc - g) / safe
    bc = (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    h6 = h.unsqueeze(1) * 6.0
    n = torch.arange(5.0, 0.0, -2.0, device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + h6, 6.0)
    mix = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * mix)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images by ``shift`` turns (in [-0.5, 0.5]); identity otherwise."""
    if x.shape[1] != 3:
        return x
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def blur_kernel_size(spec_or_fraction: ViewSpec | float, size: int | None = None) -> int:
    """Odd kernel size nearest ``fraction * size``, at least 3."""
    if isinstance(spec_or_fraction, ViewSpec):
        fraction, size = spec_or_fraction.blur_kernel_fraction, spec_or_fraction.size
    else:
        fraction = float(spec_or_fraction)
    if size is None:
        raise ValueError("size is required with a fraction")
    k = 2 * int((fraction * size - 1) / 2 + 0.5) + 1
    return max(3, k)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image, reflect padding, one grouped conv per axis."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    # Reflect padding needs pad < side; shrink the kernel for tiny images.
    kernel_size = min(kernel_size, 2 * min(h, w) - 1)
    if kernel_size < 3:
        return x
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    s = sigma.to(device=x.device, dtype=x.dtype).view(-1, 1)
    k1d = torch.exp(-0.5 * (t / s) ** 2)
    k1d = k1d / k1d.sum(dim=1, keepdim=True)  # [B, K]
    k1d = k1d.repeat_interleave(c, dim=0)  # [B*C, K]
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, k1d.view(b * c, 1, kernel_size, 1), groups=b * c)
    y = F.conv2d(y, k1d.view(b * c, 1, 1, kernel_size), groups=b * c)
    return y.reshape(b, c, h, w)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where ``apply``, pixels ``>= threshold`` become ``1 - x``."""
    mask = apply.to(x.device).view(-1, 1, 1, 1) & (x >= threshold)
    return torch.where(mask, 1.0 - x, x)


def _apply_subset(x: torch.Tensor, mask: torch.Tensor, fn, *per_image: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to the images selected by ``mask`` only; the others stay bit-identical.

    ``mask`` should live on the CPU (it is drawn there): the selected indices are then found
    without a device synchronisation and copied to the images' device asynchronously.
    """
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    idx = to_device(idx, x.device)
    out = fn(x.index_select(0, idx), *(p.index_select(0, idx) for p in per_image))
    return x.index_copy(0, idx, out)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------

def apply_params(images: torch.Tensor, spec: ViewSpec, params: AugmentParams) -> torch.Tensor:
    """Apply one view's drawn ``params`` to uint8 (or [0, 1] float) ``[B, C, H, W]`` images."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if params.batch_size != images.shape[0]:
        raise ValueError(f"params for {params.batch_size} images, batch has {images.shape[0]}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    height, width = x.shape[-2:]
    full = torch.tensor([0, 0, height, width])
    # Checked on the CPU params (no device sync): whole-image crops at the same size are an exact
    # copy/flip instead of a resampling that would differ from the input by float rounding.
    identity_geometry = height == width == spec.size and bool((params.crop.cpu() == full).all())
    p = params.to(x.device)
    # Which images each op selects is read from the CPU copy of the parameters, so finding them
    # never waits for the device (a ``nonzero`` on a CUDA mask would stall the host every op).
    host = params if params.crop.device.type == "cpu" else params.to("cpu")
    channels = x.shape[1]

    if identity_geometry:
        x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(-1), x)
    else:
        x = crop_flip(x, p.crop, p.flip, spec.size)

    ops = {
        0: (adjust_brightness, p.brightness, spec.brightness > 0),
        1: (adjust_contrast, p.contrast, spec.contrast > 0),
        2: (adjust_saturation, p.saturation, spec.saturation > 0 and channels == 3),
        3: (adjust_hue, p.hue, spec.hue > 0 and channels == 3),
    }
    if spec.jitter_p > 0 and any(enabled for _, _, enabled in ops.values()):
        for position in range(4):
            at = host.order[:, position]
            for op_index, (fn, factor, enabled) in ops.items():
                if enabled:
                    x = _apply_subset(x, host.jitter_apply & (at == op_index), fn, factor)

    if channels == 3 and spec.grayscale_p > 0:
        x = _apply_subset(x, host.gray, lambda y: rgb_to_grayscale(y).expand(-1, 3, -1, -1))

    if spec.blur_p > 0:
        k = blur_kernel_size(spec)
        x = _apply_subset(x, host.blur_apply, lambda y, s: gaussian_blur(y, s, k), p.sigma)

    if spec.solarize_p > 0:
        x = solarize(x, p.solarize, spec.solarize_threshold)
    return x.contiguous()


def augment(images: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B,C,H,W] (any device) -> float32 [B,C,spec.size,spec.size] in [0,1], not normalised."""
    params = sample_params(images.shape[0], spec, generator, (images.shape[-2], images.shape[-1]))
    return apply_params(images, spec, params)


def augment_views(images: torch.Tensor, specs: Sequence[ViewSpec],
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One augmented view per spec, drawn in order from the same generator."""
    return [augment(images, spec, generator) for spec in specs]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for ``[B, C, H, W]`` (or ``[C, H, W]``) float images."""
    c = x.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    m, s = _channel_constants(tuple(float(v) for v in mean), tuple(float(v) for v in std), x.device, x.dtype)
    return (x - m) / s


@functools.lru_cache(maxsize=32)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``[C, 1, 1]`` tensors on ``device``, copied there once (not every step)."""
    c = len(mean)
    m = to_device(torch.tensor(mean, dtype=dtype), device).view(c, 1, 1)
    s = to_device(torch.tensor(std, dtype=dtype), device).view(c, 1, 1)
    return m, s


def to_float(images_uint8: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 in [0, 1], resized to ``size`` x ``size`` if given.

    Resizing is bilinear with antialiasing (evaluation path, no augmentation).
    """
    x = images_uint8.float() / 255.0 if images_uint8.dtype == torch.uint8 else images_uint8.float()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0.0, 1.0)
    return x
