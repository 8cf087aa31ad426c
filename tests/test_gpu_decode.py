"""The GPU JPEG first pass of image folders, exercised on the CPU (torchvision's CPU decoder) and its fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.folder import decode_image, load_folder
from selfsup.data.gpu_decode import decode_jpegs, gpu_decode_enabled


def _smooth(h: int, w: int, rgb: bool = True) -> np.ndarray:
    """A smooth, asymmetric picture (a gradient plus a bright top-left block) so orientation shows."""
    y, x = np.mgrid[0:h, 0:w]
    base = (40 + 120 * x / w + 60 * y / h).astype(np.float64)
    base[: h // 3, : w // 4] = 240
    if not rgb:
        return base.astype(np.uint8)
    return np.stack([base, base * 0.6 + 50, 255 - base], axis=-1).clip(0, 255).astype(np.uint8)


def _save_jpeg(path, arr, orientation: int | None = None) -> str:
    img = Image.fromarray(arr)
    kwargs = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, **kwargs)
    return str(path)


def test_jpegs_decoded_by_the_gpu_path_match_the_cpu_path(tmp_path):
    paths = [_save_jpeg(tmp_path / "rgb.jpg", _smooth(48, 64)),
             _save_jpeg(tmp_path / "gray.jpg", _smooth(40, 30, rgb=False)),
             *[_save_jpeg(tmp_path / f"exif{o}.jpg", _smooth(36, 60), o) for o in range(2, 9)]]
    Image.fromarray(_smooth(32, 32)).save(tmp_path / "plain.png")
    Image.new("CMYK", (32, 32), (10, 20, 30, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    others = [str(tmp_path / n) for n in ("plain.png", "cmyk.jpg", "broken.jpg")]
    done = decode_jpegs(paths + others, 16, device="cpu")
    assert sorted(done) == list(range(len(paths)))  # PNG, CMYK and broken files are left to the CPU path
    for i, path in enumerate(paths):
        expected, expected_gray = decode_image(path, 16)
        arr, gray = done[i]
        assert gray == expected_gray and arr.shape == expected.shape and arr.dtype == np.uint8, path
        diff = np.abs(arr.astype(int) - expected.astype(int)).mean()
        assert diff < 3, (path, diff)  # ~0.7 here; a wrong EXIF orientation gives >= 9


def test_gpu_decode_is_tried_only_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not gpu_decode_enabled("auto")
    assert not gpu_decode_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_decode_enabled("auto")
    monkeypatch.setenv("SELFSUP_GPU_DECODE", "0")
    assert not gpu_decode_enabled("auto")


def test_folder_falls_back_to_the_cpu_when_the_gpu_decoder_fails(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(3):
            _save_jpeg(root / c / f"{k}.jpg", _smooth(20 + k, 24))
    reference = load_folder(root, image_size=8, cache_dir=tmp_path / "c1", progress=False, decode_device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" now tries the GPU, which fails here
    with pytest.warns(UserWarning, match="GPU JPEG decoding"):
        fallback = load_folder(root, image_size=8, cache_dir=tmp_path / "c2", progress=False)
    assert torch.equal(reference.train.images, fallback.train.images)
    assert torch.equal(reference.test.images, fallback.test.images)


def test_folder_uses_the_gpu_pass_results(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(4):
        _save_jpeg(root / f"{k}.jpg", _smooth(20, 26 + k))
    Image.fromarray(_smooth(20, 20)).save(root / "x.png")
    calls = []

    def fake_gpu(paths, size, device, pool=None, on_done=None):  # the real function, on the CPU decoder
        calls.append(device)
        return decode_jpegs(paths, size, device="cpu", pool=pool, on_done=on_done)

    monkeypatch.setattr("selfsup.data.gpu_decode.decode_jpegs", fake_gpu)
    split = load_folder(root, image_size=8, cache_dir=tmp_path / "c", progress=False, decode_device="cuda")
    assert calls == ["cuda"]
    assert len(split.train) + len(split.test) == 5 and not split.skipped
