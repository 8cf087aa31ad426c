"""Named data sources: ``load_data("fashion-mnist" | "digits" | "folder:PATH")`` -> ``DataSplit``.

Every source gives a deterministic train/test split; ``subset`` draws a seeded part of train.
Fashion-MNIST is read from local idx files (Debian's ``dataset-fashion-mnist`` package, an
explicit root, ``$SELFSUP_FASHION_MNIST``, torchvision-style folders) and downloaded only as a
last resort.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.folder import DEFAULT_IMAGE_SIZE, FolderError, load_folder
from selfsup.data.resize import resize_uint8
from selfsup.data.store import StoreError, is_store
from selfsup.data.stream import decoded_split

DATA_SPECS: tuple[str, ...] = ("fashion-mnist", "digits", "photos", "folder:PATH", "store:PATH")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_ENV = "SELFSUP_FASHION_MNIST"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
DIGITS_SPLIT_SEED = 0  # fixed: the digits test set never changes
DIGITS_TEST_FRACTION = 0.2

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def data_slug(spec: str) -> str:
    """A data spec as part of a file or folder name (``folder:/a/b`` -> ``folder__a_b``)."""
    return spec.strip().replace(":", "_").replace("/", "_")


class DataSpecError(ValueError):
    """A data spec that is unknown, malformed, or whose data cannot be loaded (one-line message)."""


class IdxFormatError(DataSpecError):
    """An idx file (MNIST format) is corrupt; the message names the file."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _choices() -> str:
    return ", ".join(DATA_SPECS)


# ---------------------------------------------------------------------------------------------
# idx files


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzip-compressed or raw) into a native-endian numpy array."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(f"{path}: cannot read idx file ({_one_line(e)})") from e
    if len(data) < 4:
        raise IdxFormatError(f"{path}: not an idx file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise IdxFormatError(f"{path}: bad idx magic number 0x{magic:08x} "
                             "(expected 0x0000TTDD: type code TT, DD dimensions)")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(f"{path}: corrupt idx file: shape {shape} needs {expected} data "
                             f"bytes, found {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _fashion_search_dirs(root: str | Path | None) -> list[tuple[Path, str]]:
    """Candidate directories, in search order, each with a short description."""
    out: list[tuple[Path, str]] = []
    for base, what in ((root, "root"), (os.environ.get(FASHION_MNIST_ENV) or None,
                                        f"${FASHION_MNIST_ENV}")):
        if base is not None:
            base = Path(base).expanduser()
            out += [(base, what), (base / "FashionMNIST" / "raw", what)]
    out += [(DEBIAN_FASHION_MNIST, "Debian package dataset-fashion-mnist"),
            (Path("data") / "FashionMNIST" / "raw", "./data"),
            (_selfsup_cache() / "FashionMNIST" / "raw", "selfsup cache")]
    return out


def _selfsup_cache() -> Path:
    return Path.home() / ".cache" / "selfsup"


def _idx_files(directory: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in ``directory`` (raw preferred over .gz), or None."""
    found: dict[str, Path] = {}
    for key, stem in FASHION_MNIST_FILES.items():
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def find_fashion_mnist(root: str | Path | None = None) -> tuple[dict[str, Path], str] | None:
    """The first local copy of the Fashion-MNIST files: ``(files, description)``, or None."""
    for directory, what in _fashion_search_dirs(root):
        files = _idx_files(directory)
        if files is not None:
            return files, what
    return None


def fashion_mnist_available(root: str | Path | None = None) -> bool:
    """Whether Fashion-MNIST can be loaded without a download."""
    return find_fashion_mnist(root) is not None


def _download_fashion_mnist() -> None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.FashionMNIST(root=str(_selfsup_cache()), train=train, download=True)


def _fashion_part(images_path: Path, labels_path: Path, name: str) -> ImageDataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{images_path}: expected uint8 images [N, H, W], got "
                             f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxFormatError(f"{labels_path}: expected {len(images)} labels, got shape "
                             f"{labels.shape}")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return ImageDataset(name=name, images=torch.from_numpy(images).unsqueeze(1),
                        labels=torch.from_numpy(labels.astype(np.int64)),
                        classes=list(FASHION_MNIST_CLASSES), paths=None)


def load_fashion_mnist(root: str | Path | None = None) -> DataSplit:
    """The official 60k/10k Fashion-MNIST split as ``[N, 1, 28, 28]`` uint8."""
    found = find_fashion_mnist(root)
    if found is None:
        looked = ", ".join(str(d) for d, _ in _fashion_search_dirs(root))
        try:
            _download_fashion_mnist()
        except Exception as e:
            raise DataSpecError(
                f"fashion-mnist: idx files not found (looked in {looked}) and the download "
                f"failed ({_one_line(e)}); `apt-get install dataset-fashion-mnist` provides "
                f"them, or point ${FASHION_MNIST_ENV} at a folder holding them") from e
        found = find_fashion_mnist(root)
        if found is None:
            raise DataSpecError(f"fashion-mnist: download finished but no idx files found in "
                                f"{_selfsup_cache() / 'FashionMNIST' / 'raw'}")
        found = (found[0], "downloaded by torchvision")
    files, what = found
    train = _fashion_part(files["train_images"], files["train_labels"], "fashion-mnist")
    test = _fashion_part(files["test_images"], files["test_labels"], "fashion-mnist")
    directory = files["train_images"].parent
    return DataSplit(train=train, test=test,
                     source=f"Fashion-MNIST idx files in {directory} ({what})")


# ---------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits_split() -> DataSplit:
    """scikit-learn's 8x8 digits (1797 images) with a fixed stratified 80/20 split."""
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test_idx: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[: int(round(len(idx) * DIGITS_TEST_FRACTION))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    full = ImageDataset(name="digits", images=torch.from_numpy(images).unsqueeze(1),
                        labels=torch.from_numpy(labels), classes=[str(d) for d in range(10)])
    return DataSplit(
        train=full.select(torch.from_numpy(np.flatnonzero(~is_test))),
        test=full.select(torch.from_numpy(np.flatnonzero(is_test))),
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn_version}, bundled)")


# ---------------------------------------------------------------------------------------------
# Entry point


def _resize(ds: ImageDataset, size: int) -> ImageDataset:
    """``ds`` with its images resized to ``size x size`` (:func:`selfsup.data.resize.resize_uint8`)."""
    images = resize_uint8(ds.images, size)
    if images is ds.images:
        return ds
    return ImageDataset(name=ds.name, images=images, labels=ds.labels, classes=ds.classes, paths=ds.paths)


def parse_class_list(text: str) -> list[int]:
    """``"7,8,9"`` or ``"5-9"`` (or a mix, ``"0,5-7"``) -> sorted distinct class indices."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad class list {text!r}: use indices and ranges such as '7,8,9' or '5-9'")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"bad class range {part!r} in {text!r}")
        out.update(range(first, last + 1))
    if not out:
        raise ValueError(f"empty class list {text!r}")
    return sorted(out)


def exclude_classes(split: DataSplit, classes: list[int] | str, spec: str) -> DataSplit:
    """Remove every training image of ``classes`` (indices); the test split is left whole."""
    held = parse_class_list(classes) if isinstance(classes, str) else sorted(set(int(c) for c in classes))
    if split.train.labels is None:
        raise DataSpecError(f"--holdout-classes: data {spec!r} has no labels")
    n_classes = len(split.train.classes) or int(split.train.labels.max()) + 1
    bad = [c for c in held if c < 0 or c >= n_classes]
    if bad:
        raise DataSpecError(f"--holdout-classes: {bad} out of range; data {spec!r} has classes 0..{n_classes - 1}")
    keep = ~torch.isin(split.train.labels, torch.tensor(held, dtype=split.train.labels.dtype))
    if not bool(keep.any()):
        raise DataSpecError(f"--holdout-classes: holding out {held} leaves no training image in {spec!r}")
    names = [split.train.classes[c] if c < len(split.train.classes) else str(c) for c in held]
    return DataSplit(train=split.train.select(keep.nonzero().squeeze(1)), test=split.test,
                     source=f"{split.source}; train without held-out classes {held} ({', '.join(names)})",
                     skipped=split.skipped)


def _take_subset(split: DataSplit, subset: int, seed: int, spec: str) -> DataSplit:
    n = len(split.train)
    if isinstance(subset, bool) or not isinstance(subset, int) or subset <= 0:
        raise DataSpecError(f"--subset must be a positive number of training images, got "
                            f"{subset!r} (data {spec!r} has {n} training images)")
    if subset > n:
        raise DataSpecError(f"--subset {subset} is larger than the {spec!r} train split "
                            f"({n} images available)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    index = perm[:subset].sort().values  # a seeded sample, kept in dataset order
    return DataSplit(train=split.train.select(index), test=split.test,
                     source=f"{split.source}; train subset of {subset}/{n} (seed {seed})",
                     skipped=split.skipped)


def store_path(spec: str) -> Path | None:
    """The store a data spec names: ``store:PATH``, or a ``folder:PATH`` that holds a store; else None."""
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if sep and kind == "store":
        return Path(arg.strip()).expanduser()
    if sep and kind == "folder" and arg.strip() and is_store(arg.strip()):
        return Path(arg.strip()).expanduser()
    return None


def load_data(spec: str, *, subset: int | None = None, seed: int = 0,
              root: str | Path | None = None, cache_dir: str | Path | None = None,
              image_size: int | None = None, progress: bool = True,
              holdout_classes: list[int] | str | None = None, max_train: int | None = None) -> DataSplit:
    """Load the data named by ``spec`` (one of :data:`DATA_SPECS`).

    ``root``: where Fashion-MNIST is looked for first. ``cache_dir``: the decoded-image cache of
    ``folder:`` sources (default ``~/.cache/selfsup/folders``). ``image_size``: square output size
    (``folder:`` and ``store:`` default 64; built-in datasets keep their native size unless given).
    A ``store:`` (see :mod:`selfsup.data.store`) is decoded at that size, resize + centre crop;
    ``max_train``: only its first ``max_train`` training rows (a random sample: rows are shuffled).
    ``subset``: keep a ``seed``-drawn sample of that many training images (test untouched).
    ``holdout_classes``: class indices (or ``"7,8,9"``, ``"5-9"``) whose images are removed from
    the training split *before* ``subset`` is drawn -- pretraining never sees them, and the
    few-shot protocol evaluates on exactly them (test split untouched).
    Raises :class:`DataSpecError` with a one-line message on any bad spec or unusable data.
    """
    text = spec.strip() if isinstance(spec, str) else ""
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) <= 0):
        raise DataSpecError(f"image size must be a positive integer, got {image_size!r}")
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    store = store_path(text)
    if store is not None:
        try:
            split = decoded_split(store, DEFAULT_IMAGE_SIZE if image_size is None else int(image_size),
                                  max_train=max_train, progress=progress)
        except StoreError as e:
            raise DataSpecError(f"data spec {spec!r}: {_one_line(e)}") from e
    elif kind == "folder" and sep:
        if not arg.strip():
            raise DataSpecError(f"data spec {spec!r}: folder: needs a path, e.g. folder:~/photos")
        try:
            split = load_folder(arg.strip(), image_size=image_size, cache_dir=cache_dir,
                                progress=progress)
        except FolderError as e:
            raise DataSpecError(f"data spec {spec!r}: {_one_line(e)}") from e
    elif kind == "fashion-mnist" and not sep:
        split = load_fashion_mnist(root)
    elif kind == "digits" and not sep:
        split = load_digits_split()
    elif kind == "photos" and not sep:  # colour crops of the photographs scikit-learn and scikit-image ship
        from selfsup.data.photos import PhotosUnavailable, load_photos_split

        try:
            split = load_photos_split()
        except PhotosUnavailable as e:
            raise DataSpecError(f"data spec {spec!r}: {e}") from e
    else:
        raise DataSpecError(f"unknown data spec {spec!r}; valid choices: {_choices()}")
    if image_size is not None and kind not in ("folder", "store"):
        size = int(image_size)
        split = DataSplit(train=_resize(split.train, size), test=_resize(split.test, size),
                          source=f"{split.source}; resized to {size}px", skipped=split.skipped)
    if holdout_classes is not None:
        try:
            split = exclude_classes(split, holdout_classes, text)
        except ValueError as e:
            if isinstance(e, DataSpecError):
                raise
            raise DataSpecError(f"--holdout-classes: {e}") from e
    if subset is not None:
        split = _take_subset(split, subset, seed, text)
    return split
