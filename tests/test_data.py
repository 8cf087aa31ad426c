"""Data sources: idx parsing, Fashion-MNIST lookup, digits, subsets, and image folders."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import folder as folder_mod
from selfsup.data import sources
from selfsup.data.sources import (
    DATA_SPECS,
    DataSpecError,
    IdxFormatError,
    fashion_mnist_available,
    load_data,
    read_idx,
)

# ---------------------------------------------------------------------------------------------
# helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_fashion_tree(base: Path, n_train: int = 20, n_test: int = 6) -> Path:
    raw = base / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz=True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz",
                  (np.arange(n) % 10).astype(np.uint8), gz=True)
    return raw


def solid(path: Path, color: tuple[int, ...] | int, size: tuple[int, int] = (12, 10),
          mode: str = "RGB", **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def noise(path: Path, size: int = 48) -> Path:
    arr = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def by_name(split) -> dict[str, torch.Tensor]:
    """File name -> image [C, H, W] over train and test."""
    out: dict[str, torch.Tensor] = {}
    for ds in (split.train, split.test):
        for p, img in zip(ds.paths, ds.images):
            out[Path(p).name] = img
    return out


# ---------------------------------------------------------------------------------------------
# idx files


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "imgs-idx3-ubyte", images, gz=gz))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)
    ints = np.array([1, -2, 70000], dtype=">i4")
    got = read_idx(write_idx(tmp_path / "ints", ints, gz=gz))
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, [1, -2, 70000])


def test_read_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic.gz"
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[0] = 7
    bad.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(IdxFormatError, match="bad-magic.gz.*magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((5, 4), np.uint8))[:-3])
    with pytest.raises(IdxFormatError, match="short.*17"):
        read_idx(short)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8)))[:30])
    with pytest.raises(DataSpecError, match="broken.gz"):
        read_idx(broken_gz)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_from_root(tmp_path: Path) -> None:
    raw = fake_fashion_tree(tmp_path / "fm")
    assert fashion_mnist_available(tmp_path / "fm")
    split = load_data("fashion-mnist", root=tmp_path / "fm")
    assert split.train.images.shape == (20, 1, 28, 28) and split.test.images.shape == (6, 1, 28, 28)
    assert split.train.images.dtype == torch.uint8 and split.train.labels.dtype == torch.int64
    assert split.train.labels.tolist() == [i % 10 for i in range(20)]
    assert split.train.classes[0] == "T-shirt/top" and len(split.train.classes) == 10
    assert str(raw) in split.source
    expected = read_idx(raw / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(split.test.images[:, 0].numpy(), expected)

    # the real data set, where the Debian package dataset-fashion-mnist is installed
    if (sources.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        full = load_data("fashion-mnist", root=tmp_path / "nothing-here")
        assert full.train.images.shape == (60000, 1, 28, 28)
        assert full.test.images.shape == (10000, 1, 28, 28)
        assert full.train.images.dtype == torch.uint8
        assert full.train.labels.min() == 0 and full.train.labels.max() == 9
        assert torch.bincount(full.test.labels).tolist() == [1000] * 10
        assert str(sources.DEBIAN_FASHION_MNIST) in full.source


def test_fashion_mnist_missing_labels_corrupt(tmp_path: Path) -> None:
    raw = fake_fashion_tree(tmp_path / "fm")
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8), gz=True)
    with pytest.raises(IdxFormatError, match="train-labels.*out of range"):
        load_data("fashion-mnist", root=tmp_path / "fm")


def test_fashion_mnist_not_found_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    def no_network() -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "_download_fashion_mnist", no_network)
    assert not fashion_mnist_available()
    with pytest.raises(DataSpecError) as info:
        load_data("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "no-debian" in message
    assert "network unreachable" in message

    # the environment variable is searched
    fake_fashion_tree(tmp_path / "env")
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path / "env"))
    assert len(load_data("fashion-mnist").train) == 20


# ---------------------------------------------------------------------------------------------
# digits, subsets, specs


def test_digits_split() -> None:
    from sklearn.datasets import load_digits

    a, b = load_data("digits"), load_data("digits", seed=123)
    assert a.train.images.shape == (1438, 1, 8, 8) and a.test.images.shape == (359, 1, 8, 8)
    assert a.train.images.dtype == torch.uint8 and int(a.train.images.max()) == 255
    assert a.train.classes == [str(d) for d in range(10)]
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    # train + test is a partition of the full set (as a multiset of (image, label) rows)
    full = load_digits()
    want = np.rint(full.images * 255 / 16).astype(np.uint8).reshape(len(full.target), -1)
    rows = sorted(r.tobytes() for r in np.concatenate([want, full.target[:, None]], 1)
                  .astype(np.int64))
    got = torch.cat([torch.cat([ds.images.reshape(len(ds), -1).long(), ds.labels[:, None]], 1)
                     for ds in (a.train, a.test)]).numpy()
    assert sorted(r.tobytes() for r in got) == rows
    # stratified: every class has about 20% in test
    frac = torch.bincount(a.test.labels, minlength=10).float() / torch.bincount(
        torch.cat([a.train.labels, a.test.labels]), minlength=10).float()
    assert torch.all((frac - 0.2).abs() < 0.01)


def test_subset() -> None:
    full = load_data("digits")
    s0, s0b, s1 = (load_data("digits", subset=100, seed=s) for s in (0, 0, 1))
    assert len(s0.train) == 100 and torch.equal(s0.train.images, s0b.train.images)
    assert not torch.equal(s0.train.images, s1.train.images)
    assert torch.equal(s0.test.images, full.test.images)
    assert "subset" in s0.source
    with pytest.raises(DataSpecError, match="--subset 5000.*1438"):
        load_data("digits", subset=5000)
    for bad in (0, -3):
        with pytest.raises(DataSpecError, match="--subset"):
            load_data("digits", subset=bad)


def test_unknown_spec_and_image_size() -> None:
    for bad in ("imagenet", "digits:3", "folder:", ""):
        with pytest.raises(DataSpecError) as info:
            load_data(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(DataSpecError, match="fashion-mnist, digits, .*folder:PATH, store:PATH"):
        load_data("cifar10")
    assert "folder:PATH" in DATA_SPECS
    big = load_data("digits", image_size=16)
    assert big.train.images.shape[1:] == (1, 16, 16) and big.train.images.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# folders


def test_folder_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i in range(6):
        solid(root / "dog" / f"d{i}.png", (200, 10, 10))
        solid(root / "cat" / f"c{i}.jpg", (10, 10, 200))
    solid(root / "stray.png", (0, 0, 0))
    split = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", image_size=16,
                      progress=False)
    assert split.train.classes == ["cat", "dog"]
    assert len(split.train) + len(split.test) == 12
    for ds in (split.train, split.test):
        assert ds.images.shape[1:] == (3, 16, 16) and ds.labels.dtype == torch.int64
        for p, y in zip(ds.paths, ds.labels.tolist()):
            assert Path(p).parent.name == ds.classes[y]
    assert [Path(p).name for p, _ in split.skipped] == ["stray.png"]
    assert "class" in split.skipped[0][1]


def test_folder_unlabeled_hash_split_is_stable(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(60):
        solid(root / f"img{i:02d}.png", (i, i, i), mode="RGB")
    first = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", progress=False)
    assert first.train.labels is None and first.test.labels is None
    assert first.train.images.shape[1:] == (3, 64, 64)  # default size; RGB mode stays RGB
    assert 0 < len(first.test) < 20
    for i in range(60, 90):
        solid(root / f"img{i:02d}.png", (i, i, i))
    second = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", progress=False)
    assert len(second.train) + len(second.test) == 90
    assert set(first.test.paths) <= set(second.test.paths)
    assert set(first.train.paths) <= set(second.train.paths)


def test_folder_train_test_dirs(tmp_path: Path) -> None:
    for test_name in ("test", "val"):
        root = tmp_path / test_name
        for i in range(3):
            solid(root / "train" / "a" / f"a{i}.png", 30, mode="L")
            solid(root / "train" / "b" / f"b{i}.png", 90, mode="L")
        solid(root / test_name / "a" / "ta.png", 30, mode="L")
        solid(root / test_name / "c" / "tc.png", 150, mode="L")
        split = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", image_size=8,
                          progress=False)
        assert len(split.train) == 6 and len(split.test) == 2
        assert all(f"{os.sep}train{os.sep}" in p for p in split.train.paths)
        assert all(f"{os.sep}{test_name}{os.sep}" in p for p in split.test.paths)
        assert split.train.classes == ["a", "b", "c"]
        assert split.test.labels.tolist() == [0, 2]
        assert split.train.images.shape[1:] == (1, 8, 8)  # all grayscale -> one channel
        assert split.test.images[1].unique().tolist() == [150]


def test_folder_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    for i in range(8):
        solid(root / f"x{i}.png", (i * 30, 0, 0))
    cache = tmp_path / "cache"
    first = load_data(f"folder:{root}", cache_dir=cache, image_size=8, progress=False)
    assert len(list(cache.glob("*.pt"))) == 1

    calls: list[str] = []

    def no_decode(path: str, size: int):
        calls.append(path)
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folder_mod, "decode_image", no_decode)
    second = load_data(f"folder:{root}", cache_dir=cache, image_size=8, progress=False)
    assert calls == []
    assert torch.equal(first.train.images, second.train.images)
    assert first.train.paths == second.train.paths and "cache" in second.source
    # a changed file list invalidates the cache
    solid(root / "new.png", (1, 2, 3))
    with pytest.raises(DataSpecError, match="no usable image"):
        load_data(f"folder:{root}", cache_dir=cache, image_size=8, progress=False)
    assert len(calls) == 9
    # another size is another cache entry
    calls.clear()
    monkeypatch.undo()
    third = load_data(f"folder:{root}", cache_dir=cache, image_size=4, progress=False)
    assert third.train.images.shape[-1] == 4


def test_folder_odd_and_broken_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    root = tmp_path / "odd"
    root.mkdir()
    # good but unusual
    solid(root / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK", quality=95)  # red
    Image.fromarray(np.full((6, 6), 0x4000, np.uint16)).save(root / "sixteen.png")  # I;16
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (5, 0, 10, 10))  # right half: palette index 1 (blue); left: index 0
    pal.save(root / "palette.png", transparency=0)  # index 0 is transparent
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (0, 5, 10, 10))  # bottom half opaque green
    rgba.save(root / "rgba.png")
    photo = Image.new("RGB", (40, 20), (255, 0, 0))  # stored: left red, right blue
    photo.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    photo.save(root / "rotated.jpg", exif=exif, quality=95)
    solid(root / "one.png", (10, 20, 30), size=(1, 1))
    solid(root / "with space é.png", (0, 128, 0))
    solid(root / "日本語.png", (0, 0, 128))
    # broken
    noise(root / "cut.jpg")
    noise(root / "cut.png")
    for name in ("cut.jpg", "cut.png"):
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n")
    solid(root / "large.png", (5, 5, 5), size=(60, 60))  # > MAX_IMAGE_PIXELS: warning range
    solid(root / "huge.png", (5, 5, 5), size=(200, 200))  # > 2x: DecompressionBombError
    # ignored
    solid(root / ".hidden.png", (1, 1, 1))
    solid(root / ".thumbs" / "t.png", (1, 1, 1))
    (root / "notes.txt").write_text("not an image")
    os.symlink(root, root / "loop")  # a symlink loop back to the root

    split = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", image_size=16,
                      progress=False)
    images = by_name(split)
    assert sorted(images) == sorted(["cmyk.jpg", "sixteen.png", "palette.png", "rgba.png",
                                     "rotated.jpg", "one.png", "with space é.png", "日本語.png"])
    assert len(split.train) + len(split.test) == len(images) == 8  # nothing twice via the loop
    assert split.train.labels is None and split.train.images.shape[1:] == (3, 16, 16)
    skipped = {Path(p).name: reason for p, reason in split.skipped}
    assert sorted(skipped) == ["cut.jpg", "cut.png", "empty.png", "huge.png", "large.png",
                               "text.jpg"]
    assert "empty" in skipped["empty.png"]
    assert "truncated" in skipped["cut.jpg"] and "truncated" in skipped["cut.png"]
    assert "not a readable image" in skipped["text.jpg"]
    assert "too large" in skipped["large.png"] and "too large" in skipped["huge.png"]

    def close(img: torch.Tensor, rgb: tuple[int, int, int], tol: int = 12) -> bool:
        want = torch.tensor(rgb, dtype=torch.int16)[:, None, None]
        return bool((img.to(torch.int16) - want).abs().max() <= tol)

    assert close(images["cmyk.jpg"][:, 4:12, 4:12], (255, 0, 0), tol=20)
    assert close(images["sixteen.png"], (64, 64, 64), tol=0)  # 16384 >> 8, not clipped to 255
    assert close(images["palette.png"][:, :, :6], (255, 255, 255), tol=0)  # transparent: white
    assert close(images["palette.png"][:, :, 10:], (0, 0, 255), tol=0)
    assert close(images["rgba.png"][:, :6], (255, 255, 255), tol=0)
    assert close(images["rgba.png"][:, 10:], (0, 255, 0), tol=0)
    # EXIF orientation applied: the stored left half (red) is now on top
    assert close(images["rotated.jpg"][:, :6], (255, 0, 0), tol=20)
    assert close(images["rotated.jpg"][:, 10:], (0, 0, 255), tol=20)
    assert close(images["one.png"], (10, 20, 30), tol=0)
    assert close(images["with space é.png"], (0, 128, 0), tol=0)


def test_folder_gray_and_unusable(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    solid(root / "g.png", 77, mode="L")
    Image.fromarray(np.full((5, 7), 0xFF00, np.uint16)).save(root / "s.png")
    split = load_data(f"folder:{root}", cache_dir=tmp_path / "cache", image_size=4,
                      progress=False)
    imgs = by_name(split)
    assert imgs["g.png"].shape == (1, 4, 4) and imgs["g.png"].unique().tolist() == [77]
    assert imgs["s.png"].unique().tolist() == [255]

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("nothing")
    with pytest.raises(DataSpecError, match="no usable image"):
        load_data(f"folder:{empty}", cache_dir=tmp_path / "cache")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    with pytest.raises(DataSpecError, match=r"no usable image.*2 file\(s\) skipped"):
        load_data(f"folder:{bad}", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DataSpecError, match="not an existing folder"):
        load_data(f"folder:{tmp_path / 'missing'}", cache_dir=tmp_path / "cache")
