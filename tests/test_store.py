"""The on-disk store (WebDataset shards + index), crops from full images, and streaming under DDP."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data.stream as stream
from selfsup.data.crops import decode_crops, decode_crops_batched, random_resized_crop_params
from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.data.store import Store, StoreError, build_store
from selfsup.data.stream import StreamSource, center_crop_batches
from selfsup.data.synthetic import make_synthetic_folder
from selfsup.data.views import ViewSpec

VIEWS = [ViewSpec(size=8), ViewSpec(size=6, crop_scale=(0.2, 0.5))]


def _memory_split(n: int, height: int = 12, width: int = 16, seed: int = 0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=g)
    train = ImageDataset("mem", images, torch.arange(n) % 3, ["a", "b", "c"])
    test = ImageDataset("mem", images[:0], torch.zeros(0, dtype=torch.int64), ["a", "b", "c"])
    return DataSplit(train=train, test=test, source="test")


def _store(tmp_path: Path, n: int = 48, shard_size: int = 6, **kw) -> Path:
    build_store(_memory_split(n, **kw), tmp_path / "store", shard_size=shard_size, workers=2, progress=False)
    return tmp_path / "store"


def _epoch(source: StreamSource, epoch: int) -> list:
    return list(source.batches(epoch * source.steps_per_epoch))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.step == y.step and torch.equal(x.index, y.index) and all(torch.equal(u, v) for u, v in zip(x.views, y.views))
        for x, y in zip(a, b))


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 40 + 120 * x / w + 60 * y / h + rng.normal(0, 8, (h, w))
    return np.stack([base, base * 0.6 + 50, 255 - base], axis=-1).clip(0, 255).astype(np.uint8)


def _read_tars(store: Path, split: str) -> dict[str, tuple[bytes, int]]:
    """{original path: (image bytes, class)} read with the standard tarfile module alone."""
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted(store.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                members.setdefault(f"{shard.name}/{key}", {})[ext] = tar.extractfile(m).read()
    out = {}
    for sample in members.values():
        image = next(v for k, v in sample.items() if k in ("jpg", "png", "webp"))
        out[json.loads(sample["json"])["path"]] = (image, int(sample["cls"]))
    return out


def test_a_store_from_a_folder_gives_back_every_usable_image_and_lists_the_bad_files(tmp_path):
    root = tmp_path / "photos"
    good: dict[str, int] = {}
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for k in range(4):
                path = root / split / name / f"{k}.{'jpg' if k % 2 else 'png'}"
                Image.fromarray(_picture(10 + k, 14, len(good))).save(path)  # all different
                good[str(path)] = label
    truncated = root / "train" / "cat" / "truncated.jpg"
    Image.fromarray(_picture(40, 40, 9)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    text = root / "train" / "dog" / "notes.jpg"
    text.write_text("not an image")

    info = build_store(f"folder:{root}", tmp_path / "store", shard_size=3, workers=2, progress=False)

    assert {p for p, _ in info.skipped} == {str(truncated), str(text)}
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert {p for p, _ in manifest["skipped"]} == {str(truncated), str(text)}
    assert info.images == {"train": 8, "test": 8} and info.classes == ["cat", "dog"] and info.channels == 3
    for split in ("train", "test"):
        stored = _read_tars(tmp_path / "store", split)
        assert set(stored) == {p for p in good if f"/{split}/" in p}
        for path, (data, label) in stored.items():
            assert data == Path(path).read_bytes() and label == good[path]
        store = Store(tmp_path / "store", split)
        assert sorted(store.read(row) for row in range(len(store))) == sorted(d for d, _ in stored.values())
        by_bytes = {d: label for d, label in stored.values()}
        assert [by_bytes[store.read(row)] for row in range(len(store))] == store.labels().tolist()
    with pytest.raises(StoreError, match="not an empty folder"):
        build_store(f"folder:{root}", tmp_path / "store", progress=False)


def test_short_side_reencodes_larger_images_keeping_the_aspect_ratio(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(_picture(40, 80, 0)).save(root / "wide.png")
    Image.fromarray(_picture(12, 30, 1)).save(root / "small.jpg")
    build_store(root, tmp_path / "store", short_side=20, progress=False)
    sizes = set()
    for split in ("train", "test"):
        store = Store(tmp_path / "store", split)
        for row in range(len(store)):
            with Image.open(io.BytesIO(store.read(row))) as im:
                sizes.add((im.format, im.size, (int(store.index[row]["width"]), int(store.index[row]["height"]))))
    assert sizes == {("JPEG", (40, 20), (40, 20)), ("JPEG", (30, 12), (30, 12))}


def test_crops_are_drawn_on_the_full_stored_image_and_not_flipped(tmp_path):
    h, w = 48, 96  # a centre square (columns 24..71) would hold no corner block
    picture = np.zeros((h, w, 3), dtype=np.uint8)
    picture[..., 0] = np.round(np.arange(w) * 255 / (w - 1))  # a left-to-right ramp: flips would show
    picture[..., 1] = 128
    corners = {(0, 0): 10, (0, 72): 60, (32, 0): 180, (32, 72): 240}  # 16 x 24 blocks: (top, left) -> value
    for (top, left), value in corners.items():
        picture[top:top + 16, left:left + 24, 1] = value
    images = torch.from_numpy(picture).permute(2, 0, 1).unsqueeze(0).repeat(32, 1, 1, 1)
    split = DataSplit(ImageDataset("corners", images), ImageDataset("corners", images[:0]), "test")
    build_store(split, tmp_path / "store", shard_size=8, progress=False)
    source = StreamSource(tmp_path / "store", [ViewSpec(size=16, crop_scale=(0.05, 0.2))] * 2, batch_size=8,
                          seed=0, workers=0)
    crops = torch.cat([view for batch in source.batches(0) for view in batch.views])
    assert crops.shape == (64, 3, 16, 16)
    shown = set(crops[:, 1].flatten().tolist())
    assert set(corners.values()) <= shown
    assert (crops[:, 0].int().diff(dim=-1) >= -1).all()  # the ramp still rises left to right


def test_two_ranks_read_disjoint_shards_covering_every_image_once_per_epoch(tmp_path):
    store = Store(_store(tmp_path, n=48, shard_size=6))  # 8 shards of 6
    shard_of = torch.from_numpy(np.array(store.index["shard"]))
    for epoch in (0, 1):
        ranks = [_epoch(StreamSource(store.path, VIEWS, batch_size=8, seed=3, rank=r, world_size=2, workers=0), epoch)
                 for r in (0, 1)]
        rows = [torch.cat([b.index for b in batches]) for batches in ranks]
        assert [len(batches) for batches in ranks] == [6, 6]
        assert sorted(torch.cat(rows).tolist()) == list(range(48))
        shards = [set(shard_of[r].tolist()) for r in rows]
        assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 4
    first, second = (StreamSource(store.path, VIEWS, 8, seed=3, rank=0, world_size=2).epoch_rows(e) for e in (0, 1))
    assert not torch.equal(first, second)  # each epoch its own order


def test_uneven_shards_give_every_rank_the_same_steps_and_never_repeat_an_image(tmp_path):
    path = _store(tmp_path, n=47, shard_size=5)  # 9 shards of 5 and one of 2
    sources = [StreamSource(path, VIEWS, batch_size=6, seed=1, rank=r, world_size=3, workers=0) for r in range(3)]
    assert {s.steps_per_epoch for s in sources} == {6}  # the 3 smallest shards (2 + 5 + 5) over 2 per process
    for epoch in range(3):
        rows = torch.cat([s.epoch_rows(epoch) for s in sources])
        assert len(rows) == 3 * 6 * 2 and len(set(rows.tolist())) == len(rows)


def test_the_same_seed_gives_the_same_order_and_crops_another_seed_does_not(tmp_path):
    path = _store(tmp_path, n=24)
    a, b = (_epoch(StreamSource(path, VIEWS, batch_size=6, seed=5, workers=0), 1) for _ in range(2))
    c = _epoch(StreamSource(path, VIEWS, batch_size=6, seed=6, workers=0), 1)
    assert _same(a, b) and not _same(a, c)
    assert not torch.equal(torch.cat([x.index for x in a]), torch.cat([x.index for x in c]))


def test_a_fresh_iterator_from_step_k_gives_what_the_uninterrupted_one_gives(tmp_path):
    path = _store(tmp_path, n=30, shard_size=4)
    source = StreamSource(path, VIEWS, batch_size=4, seed=2, workers=0)
    spe = source.steps_per_epoch
    whole = list(source.batches(spe))  # epoch 1
    for k in (spe + 1, spe + spe // 2, 2 * spe - 1):
        assert _same(list(StreamSource(path, VIEWS, batch_size=4, seed=2, workers=0).batches(k)), whole[k - spe:])
    with_workers = list(StreamSource(path, VIEWS, batch_size=4, seed=2, workers=2, prefetch=2).batches(spe + 2))
    assert _same(with_workers, whole[2:])  # nothing depends on which worker decoded a batch


def _jpeg_folder(root: Path) -> Path:
    for k in range(12):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x0112] = 6 if k % 3 == 0 else 1  # some rotated by EXIF
        Image.fromarray(_picture(24 + k, 32, k)).save(root / f"c{k % 2}" / f"{k}.jpg", quality=95, exif=exif.tobytes())
    return root


def test_batched_jpeg_decoding_matches_the_worker_decoding(tmp_path):
    build_store(_jpeg_folder(tmp_path / "photos"), tmp_path / "store", progress=False)
    store = Store(tmp_path / "store")
    g = torch.Generator().manual_seed(0)
    rows = list(range(len(store)))
    boxes = [[random_resized_crop_params(int(store.index[r]["height"]), int(store.index[r]["width"]), (0.3, 1.0),
                                         (0.75, 1.33), g)] for r in rows]
    assert all(bool(store.index[r]["plain_jpeg"]) for r in rows)
    data = [torch.frombuffer(bytearray(store.read(r)), dtype=torch.uint8) for r in rows]
    orientation = [int(store.index[r]["orientation"]) for r in rows]
    batched = decode_crops_batched(data, orientation, 3, boxes, [16], device="cpu")
    for r, crops in zip(rows, batched):
        reference = decode_crops(store.read(r), 3, boxes[r], [16])[0]
        assert (crops[0].float() - reference.float()).abs().mean() < 4, r  # a wrong EXIF rotation gives > 15


def test_a_failing_device_decoder_falls_back_to_the_cpu_with_the_same_batches(tmp_path, monkeypatch):
    build_store(_jpeg_folder(tmp_path / "photos"), tmp_path / "store", shard_size=4, progress=False)
    reference = list(StreamSource(tmp_path / "store", VIEWS, batch_size=4, seed=0, workers=0,
                                  decode_device="cpu").batches(0))
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no nvJPEG here")

    monkeypatch.setattr(stream, "decode_crops_batched", broken)
    source = StreamSource(tmp_path / "store", VIEWS, batch_size=4, seed=0, workers=0, decode_device="cuda")
    with pytest.warns(UserWarning, match="decoding on the CPU"):
        fallback = list(source.batches(0))
    assert _same(fallback, reference) and len(calls) == 1  # tried once, then the workers decode


def test_evaluation_batches_resize_and_centre_crop_every_image_in_order(tmp_path):
    path = _store(tmp_path, n=10, height=16, width=32, shard_size=4)
    batches = list(center_crop_batches(path, 8, 4, split="train", crop_fraction=1.0, workers=0))
    assert [len(rows) for rows, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([rows for rows, _ in batches]), torch.arange(10))
    store = Store(path)
    with Image.open(io.BytesIO(store.read(3))) as im:
        expected = np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR, box=(8, 0, 24, 16)))
    assert torch.equal(batches[0][1][3], torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_stream_source_refuses_more_processes_than_shards(tmp_path):
    path = _store(tmp_path, n=12, shard_size=6)
    with pytest.raises(StoreError, match="smaller shard size"):
        StreamSource(path, VIEWS, batch_size=6, seed=0, world_size=3)


def test_the_synthetic_folder_is_reproducible_from_the_seed(tmp_path):
    a = make_synthetic_folder(tmp_path / "a", 6, size=32, seed=4, progress=False)
    b = make_synthetic_folder(tmp_path / "b", 6, size=32, seed=4, workers=1, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 6 and files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with Image.open(a / files[0]) as im:
        assert im.size[1] == 32 and 32 <= im.size[0] <= 43
