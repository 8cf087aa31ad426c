"""Tests for the batched augmentation pipeline (selfsup.data.augment) and the preview grid."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from selfsup.data import augment as A
from selfsup.data.dataset import ImageDataset
from selfsup.data.views import ViewSpec, byol_views
from selfsup.reporting.preview import save_preview

# Everything off: an identity view at the input size (override fields per test).
OFF = ViewSpec(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
               grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_uint8(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, h if w is None else w), dtype=torch.uint8,
                         generator=gen(seed))


# ----------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("c,h,w,size", [(1, 28, 28, 28), (1, 28, 28, 16), (3, 32, 32, 32),
                                        (3, 32, 32, 48), (3, 20, 24, 18), (4, 16, 16, 12)])
def test_output_shape_dtype_range(c, h, w, size):
    images = rand_uint8(6, c, h, w)
    for spec in byol_views(size):
        spec = replace(spec, solarize_p=0.5, grayscale_p=0.5)
        out = A.augment(images, spec, gen(1))
        assert out.shape == (6, c, size, size)
        assert out.dtype == torch.float32
        assert out.device == images.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.isfinite(out).all()


def test_augment_views_returns_one_view_per_spec_and_views_differ():
    images = rand_uint8(8, 3, 32)
    views = A.augment_views(images, byol_views(24), gen(0))
    assert len(views) == 2 and all(v.shape == (8, 3, 24, 24) for v in views)
    assert not torch.allclose(views[0], views[1])


# ----------------------------------------------------------------------------------- crops

def test_crop_params_per_image_within_scale_and_ratio():
    spec = ViewSpec(size=32, crop_scale=(0.2, 0.9), crop_ratio=(3 / 4, 4 / 3))
    side = 224
    p = A.sample_params(512, spec, gen(0), side)
    top, left, h, w = p.crop.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= side).all() and (left + w <= side).all()
    scale = (h * w).double() / side**2
    ratio = w.double() / h.double()
    # integer rounding of h and w (<= 0.5 px each) allows a small slack
    assert scale.min() >= 0.2 - 0.01 and scale.max() <= 0.9 + 0.01
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    # independent per image: many distinct boxes, spread over the range, positions vary
    assert len(set(map(tuple, p.crop.tolist()))) > 500
    assert scale.min() < 0.25 and scale.max() > 0.85
    assert len(set(top.tolist())) > 50 and len(set(left.tolist())) > 50


def test_crop_distribution_matches_torchvision():
    """Mean area fraction and aspect ratio agree with RandomResizedCrop.get_params."""
    torch.manual_seed(0)
    n, side, scale, ratio = 3000, 64, (0.08, 1.0), (3 / 4, 4 / 3)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, side, side), scale, ratio)
                        for _ in range(n)], dtype=torch.float64)  # (top, left, h, w)
    ours = A.sample_params(n, ViewSpec(crop_scale=scale, crop_ratio=ratio), gen(0),
                           side).crop.double()
    def area(boxes):
        return boxes[:, 2] * boxes[:, 3] / side**2

    def log_ratio(boxes):
        return (boxes[:, 3] / boxes[:, 2]).log()

    assert abs(area(ref).mean() - area(ours).mean()) < 0.02
    assert abs(area(ref).std() - area(ours).std()) < 0.02
    assert abs(log_ratio(ref).mean() - log_ratio(ours).mean()) < 0.02
    # centre of the crop spread uniformly: mean near the image centre for both
    assert abs((ours[:, 0] + ours[:, 2] / 2).mean() - side / 2) < 1.5


def test_crop_fallback_is_centre_crop_clipped_to_ratio():
    # A 10x40 image cannot hold a 90-100% crop with ratio in [0.9, 1.1]: fallback for all images.
    spec = ViewSpec(size=8, crop_scale=(0.9, 1.0), crop_ratio=(0.9, 1.1))
    p = A.sample_params(16, spec, gen(0), (10, 40))
    expected_w = round(10 * 1.1)  # in_ratio 4 > max ratio: h = H, w = round(H * max_ratio)
    assert (p.crop == torch.tensor([0, (40 - expected_w) // 2, 10, expected_w])).all()


def test_crop_flip_extracts_the_box_exactly():
    x = torch.rand(2, 3, 20, 20, generator=gen(0))
    crop = torch.tensor([[3, 5, 8, 8], [0, 12, 8, 8]])
    out = A.crop_flip(x, crop, torch.tensor([False, True]), size=8)
    torch.testing.assert_close(out[0], x[0, :, 3:11, 5:13], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 0:8, 12:20].flip(-1), atol=1e-5, rtol=0)


def test_identity_spec_equals_to_float():
    for c in (1, 3):
        images = rand_uint8(10, c, 16)
        out = A.augment(images, OFF, gen(3))
        assert torch.equal(out, A.to_float(images))
        # the grid_sample path with the same whole-image box is an identity up to float rounding
        params = A.sample_params(10, OFF, gen(3), 16)
        resampled = A.crop_flip(A.to_float(images), params.crop, params.flip, 16)
        torch.testing.assert_close(resampled, A.to_float(images), atol=1e-5, rtol=0)


def test_flip_p1_with_identity_crop_flips_exactly():
    images = rand_uint8(10, 3, 16)
    out = A.augment(images, replace(OFF, flip_p=1.0), gen(0))
    assert torch.equal(out, A.to_float(images).flip(-1))
    half = A.sample_params(10, replace(OFF, flip_p=0.5), gen(0), 16)
    out = A.apply_params(images, OFF, half)
    assert 0 < int(half.flip.sum()) < 10
    assert torch.equal(out[half.flip], A.to_float(images)[half.flip].flip(-1))
    assert torch.equal(out[~half.flip], A.to_float(images)[~half.flip])


# ----------------------------------------------------------------------------------- colour ops

def test_solarize_p1_matches_formula():
    images = rand_uint8(8, 3, 16)
    out = A.augment(images, replace(OFF, solarize_p=1.0, solarize_threshold=0.4), gen(0))
    x = A.to_float(images)
    torch.testing.assert_close(out, torch.where(x >= 0.4, 1 - x, x), atol=1e-5, rtol=0)
    # also after a real crop (threshold not exactly on a uint8 level: no float-rounding ties)
    spec = replace(OFF, size=12, crop_scale=(0.3, 0.8), solarize_p=1.0, solarize_threshold=0.45)
    params = A.sample_params(8, spec, gen(1), 16)
    plain = A.apply_params(images, replace(spec, solarize_p=0.0), params)
    out = A.apply_params(images, replace(spec, solarize_p=1.0), params)
    torch.testing.assert_close(out, torch.where(plain >= 0.45, 1 - plain, plain), atol=1e-6, rtol=0)


def test_grayscale_p1_equal_channels_with_luma_weights():
    images = rand_uint8(8, 3, 16)
    out = A.augment(images, replace(OFF, grayscale_p=1.0), gen(0))
    x = A.to_float(images)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for ch in range(3):
        torch.testing.assert_close(out[:, ch], luma, atol=1e-5, rtol=0)


FACTORS = torch.tensor([0.0, 0.55, 1.0, 1.37, 1.8])
HUES = torch.tensor([-0.5, -0.13, 0.0, 0.21, 0.5])


@pytest.mark.parametrize("ours,theirs,factors,atol", [
    (A.adjust_brightness, TF.adjust_brightness, FACTORS, 1e-6),
    # torchvision's luma uses 0.2989 instead of 0.299: differences of order 1e-4
    (A.adjust_contrast, TF.adjust_contrast, FACTORS, 5e-4),
    (A.adjust_saturation, TF.adjust_saturation, FACTORS, 5e-4),
    (A.adjust_hue, TF.adjust_hue, HUES, 1e-5),
])
def test_colour_ops_match_torchvision(ours, theirs, factors, atol):
    x = torch.rand(len(factors), 3, 12, 13, generator=gen(0))
    x[0, :, :2] = 0.5  # gray pixels (zero saturation) exercise the hue edge case
    out = ours(x, factors)
    ref = torch.stack([theirs(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)


def test_brightness_contrast_on_one_channel_match_torchvision():
    x = torch.rand(len(FACTORS), 1, 10, 10, generator=gen(0))
    for ours, theirs in ((A.adjust_brightness, TF.adjust_brightness),
                         (A.adjust_contrast, TF.adjust_contrast)):
        ref = torch.stack([theirs(x[i], float(f)) for i, f in enumerate(FACTORS)])
        torch.testing.assert_close(ours(x, FACTORS), ref, atol=1e-6, rtol=0)


def test_jitter_pipeline_uses_per_image_order_and_factors():
    """The full jitter step equals torchvision's ops applied one image at a time in its order."""
    spec = replace(OFF, jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    images = rand_uint8(24, 3, 16)
    params = A.sample_params(24, spec, gen(5), 16)
    assert len(set(map(tuple, params.order.tolist()))) > 5  # orders differ across images
    assert params.brightness.unique().numel() == 24  # factors differ across images
    out = A.apply_params(images, spec, params)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    factors = [params.brightness, params.contrast, params.saturation, params.hue]
    x = A.to_float(images)
    for i in range(24):
        ref = x[i]
        for op in params.order[i].tolist():
            ref = fns[op](ref, float(factors[op][i]))
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=0)


def test_jitter_factor_ranges():
    spec = ViewSpec(brightness=0.4, contrast=0.8, saturation=1.5, hue=0.1)
    p = A.sample_params(2000, spec, gen(0), 32)
    for f, s in ((p.brightness, 0.4), (p.contrast, 0.8), (p.saturation, 1.5)):
        assert f.min() >= max(0, 1 - s) and f.max() <= 1 + s
        assert f.min() < max(0, 1 - s) + 0.05 and f.max() > 1 + s - 0.05
    assert p.hue.abs().max() <= 0.1 and p.hue.min() < -0.09 and p.hue.max() > 0.09
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()  # permutations


def test_one_channel_colour_ops_are_noops():
    images = rand_uint8(8, 1, 16)
    spec = replace(OFF, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.5, hue=0.3,
                   grayscale_p=1.0)
    assert torch.equal(A.augment(images, spec, gen(0)), A.to_float(images))
    # brightness does apply to 1-channel images
    out = A.augment(images, replace(spec, brightness=0.5), gen(0))
    assert not torch.allclose(out, A.to_float(images))


# ----------------------------------------------------------------------------------- blur

def test_blur_kernel_size():
    assert A.blur_kernel_size(0.1, 224) == 23  # BYOL
    assert A.blur_kernel_size(0.1, 32) == 3
    assert A.blur_kernel_size(0.1, 28) == 3
    assert A.blur_kernel_size(0.1, 96) == 9
    assert A.blur_kernel_size(0.1, 64) == 7
    assert A.blur_kernel_size(ViewSpec(size=224)) == 23


def test_blur_constant_stays_constant_and_noise_variance_drops():
    spec = replace(OFF, size=32, blur_p=1.0, blur_sigma=(0.5, 2.0), blur_kernel_fraction=0.2)
    const = torch.full((4, 3, 32, 32), 77, dtype=torch.uint8)
    out = A.augment(const, spec, gen(0))
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), atol=1e-6, rtol=0)
    noise = rand_uint8(4, 3, 32)
    blurred = A.augment(noise, spec, gen(0))
    assert (blurred.var(dim=(1, 2, 3)) < 0.5 * A.to_float(noise).var(dim=(1, 2, 3))).all()


def test_blur_matches_torchvision_per_image_sigma():
    x = torch.rand(4, 3, 20, 20, generator=gen(0))
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = A.gaussian_blur(x, sigma, 7)
    ref = torch.stack([TF.gaussian_blur(x[i], [7, 7], [float(s), float(s)])
                       for i, s in enumerate(sigma)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_blur_sigma_drawn_per_image_in_range():
    p = A.sample_params(500, ViewSpec(blur_sigma=(0.1, 2.0)), gen(0), 32)
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
    assert p.sigma.unique().numel() == 500


# ----------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("field,mask", [("jitter_p", "jitter_apply"), ("grayscale_p", "gray"),
                                        ("blur_p", "blur_apply"), ("solarize_p", "solarize")])
def test_unselected_images_are_bit_identical(field, mask):
    spec = replace(OFF, size=16, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.33), flip_p=0.5,
                   blur_kernel_fraction=0.3, solarize_threshold=0.3, **{field: 0.5})
    images = rand_uint8(32, 3, 24)
    params = A.sample_params(32, spec, gen(2), 24)
    on = A.apply_params(images, spec, params)
    off = A.apply_params(images, replace(spec, **{field: 0.0}), params)
    selected = getattr(params, mask)
    assert 5 < int(selected.sum()) < 27
    assert torch.equal(on[~selected], off[~selected])
    assert not torch.allclose(on[selected], off[selected])


def test_probability_half_applies_to_about_half_of_2000():
    n = 2000
    low, high = n / 2 - 4.5 * math.sqrt(n / 4), n / 2 + 4.5 * math.sqrt(n / 4)
    spec = replace(OFF, size=4, flip_p=0.5, jitter_p=0.5, grayscale_p=0.5, blur_p=0.5,
                   solarize_p=0.5, solarize_threshold=0.5)
    p = A.sample_params(n, spec, gen(0), 4)
    for m in (p.flip, p.jitter_apply, p.gray, p.blur_apply, p.solarize):
        assert low < int(m.sum()) < high
    # the coins are independent of each other
    assert low / 2 < int((p.flip & p.solarize).sum()) < high / 2
    # end to end: solarising white images turns them black for about half of the batch
    white = torch.full((n, 1, 4, 4), 255, dtype=torch.uint8)
    out = A.augment(white, replace(OFF, size=4, solarize_p=0.5), gen(0))
    assert low < int((out.amax(dim=(1, 2, 3)) < 1e-6).sum()) < high


def test_probabilities_zero_and_one():
    p0 = A.sample_params(500, replace(OFF, flip_p=0.0, blur_p=0.0), gen(0), 8)
    p1 = A.sample_params(500, replace(OFF, flip_p=1.0, blur_p=1.0), gen(0), 8)
    assert not p0.flip.any() and not p0.blur_apply.any()
    assert p1.flip.all() and p1.blur_apply.all()


# ----------------------------------------------------------------------------------- determinism

def test_same_seed_same_output_different_seed_different():
    images = rand_uint8(16, 3, 32)
    specs = byol_views(32)
    a = A.augment_views(images, specs, gen(7))
    b = A.augment_views(images, specs, gen(7))
    c = A.augment_views(images, specs, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], c[0])


def test_generator_state_resumes_exact_stream():
    images = rand_uint8(8, 3, 16)
    spec = byol_views(16)[1]
    g = gen(11)
    A.augment(images, spec, g)
    state = g.get_state()
    expected = A.augment(images, spec, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(A.augment(images, spec, g2), expected)


def test_draw_count_independent_of_spec():
    """Streams stay aligned whatever the probabilities: same number of values drawn."""
    g1, g2 = gen(4), gen(4)
    A.sample_params(10, ViewSpec(), g1, 32)
    A.sample_params(10, OFF, g2, 32)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_rejects_non_generator():
    with pytest.raises(TypeError):
        A.augment(rand_uint8(2, 3, 8), OFF, 0)


# ----------------------------------------------------------------------------------- helpers

def test_normalize_per_channel():
    x = torch.rand(4, 3, 5, 5, generator=gen(0))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = A.normalize(x, mean, std)
    for ch in range(3):
        torch.testing.assert_close(out[:, ch], (x[:, ch] - mean[ch]) / std[ch])
    with pytest.raises(ValueError):
        A.normalize(x, (0.5,), (0.5,))


def test_to_float_range_and_resize():
    images = rand_uint8(3, 3, 32)
    x = A.to_float(images)
    assert x.dtype == torch.float32 and torch.equal(x * 255, images.float())
    small = A.to_float(images, 16)
    assert small.shape == (3, 3, 16, 16) and small.min() >= 0 and small.max() <= 1
    # antialiased: a 2x downscale of a checkerboard averages to gray
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 255).to(torch.uint8)
    down = A.to_float(board.expand(1, 1, 32, 32), 16)
    torch.testing.assert_close(down, torch.full_like(down, 0.5), atol=0.02, rtol=0)


# ----------------------------------------------------------------------------------- preview

@pytest.mark.parametrize("channels", [1, 3])
def test_preview_writes_png(tmp_path, channels):
    data = ImageDataset(name="toy", images=rand_uint8(5, channels, 12),
                        labels=torch.arange(5) % 2, classes=["a", "b"])
    path = save_preview(data, byol_views(12), tmp_path / "sub" / "preview.png", n=4, seed=0)
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
