"""Embeddings of a whole dataset with a trained encoder, written to ``.npy``, ``.npz`` or ``.parquet``.

One row per image: the train split first, then the test split (or only the chosen split), each
in dataset order. Columns: ``split`` ("train"/"test"), ``index`` (row within its split), ``label``
(-1 when the data has none), ``class`` (its name, "" when none), ``path`` (the source file for
``folder:`` data, else ""), ``embedding`` (float32 ``[D]``, the frozen backbone's pooled features,
computed exactly as the kNN/linear evaluation computes them).

- ``.npy``: one structured array; ``a = np.load(f)``, ``a["embedding"]`` is ``[N, D]``,
  ``a["label"]`` ``[N]`` ... (no pickle needed).
- ``.npz``: ``embeddings`` ``[N, D]``, ``labels``, ``indices``, ``splits``, ``classes``, ``paths``
  and ``metadata`` (a JSON string: encoder settings, data source).
- ``.parquet`` (needs pyarrow): the same columns, ``embedding`` a fixed-size list; the JSON
  metadata under the schema key ``selfsup``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.data.dataset import ImageDataset
from selfsup.data.sources import data_slug, load_data
from selfsup.evaluation.features import extract_features
from selfsup.handoff.formats import ExportError, _load_source
from selfsup.io import atomic_write
from selfsup.models import encoder_at_stage
from selfsup.runs import stored_config
from selfsup.train.distributed import pick_device

EMBED_FORMATS = (".npy", ".npz", ".parquet")
SPLITS = ("all", "train", "test")


def default_embed_out(run_dir: str | Path, data: str) -> Path:
    base = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    return base / "embeddings" / f"{data_slug(data).strip('_')}.npy"


def embed_dataset(source: str | Path, data: str | None = None, out: str | Path | None = None,
                  split: str = "all", batch_size: int = 256, device: str = "auto",
                  data_root: str | None = None, progress: bool = True, layer: int | None = None) -> dict[str, Any]:
    """Embed every image of ``data`` (default: the run's data, without its ``--subset``); ``layer``
    (1-4): the pooled features of that ResNet stage.

    ``source`` is a run folder (or a ``.safetensors``/torchvision ``.pt`` export, then ``data`` is
    required). ``split``: ``all`` (train then test), ``train`` or ``test``. Returns a summary
    dict (``path``, ``rows``, ``dim``, ``data``, ``data_source``, ``seconds``, ...).
    """
    out_path = _checked_options(split, batch_size, out)
    dev = pick_device(device)
    encoder, info = _load_source(source, device=str(dev))
    try:
        encoder = encoder_at_stage(encoder, layer)
    except ValueError as e:
        raise ExportError(str(e)) from e
    data, image_size, root = _data_to_embed(source, data, data_root)
    out_path = out_path or default_embed_out(source, data)
    start = time.perf_counter()
    loaded = load_data(data, root=root, image_size=image_size, progress=progress)
    parts = [(name, getattr(loaded, name)) for name in ("train", "test") if split in ("all", name)]
    if parts[0][1].channels != info.in_channels:
        raise ExportError(f"--data: {data} has {parts[0][1].channels}-channel images, but the encoder takes "
                          f"{info.in_channels} channel(s)")
    embeddings, columns = _embed_parts(encoder, info.preprocess(), parts, batch_size, dev, progress)
    meta = {"encoder": info.to_dict(), "run": str(source), "data": data, "data_source": loaded.source,
            "split": split, "layer": layer, "preprocess": f"uint8/255, resize to {info.image_size}, (x - mean) / std"}
    _write(out_path, embeddings, columns, meta)
    return {"path": str(out_path), "rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]),
            "data": data, "data_source": loaded.source, "split": split,
            "splits": {name: len(ds) for name, ds in parts}, "seconds": time.perf_counter() - start}


def _checked_options(split: str, batch_size: int, out: str | Path | None) -> Path | None:
    if split not in SPLITS:
        raise ExportError(f"--split: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if batch_size < 1:
        raise ExportError(f"--batch-size: must be >= 1, got {batch_size}")
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.suffix.lower() not in EMBED_FORMATS:
        raise ExportError(f"--out: {out_path} must end in {', '.join(EMBED_FORMATS)}")
    if out_path is not None and out_path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ExportError("--out .parquet needs pyarrow: pip install 'selfsup[export]' (or write .npy)") from e
    return out_path


def _data_to_embed(source: str | Path, data: str | None, data_root: str | None) -> tuple[str, int | None, str | None]:
    """``(data, image_size, root)``: a run folder's data as `selfsup eval` loads it, unless ``data`` is given."""
    if Path(source).is_dir():
        cfg = stored_config(source)
        return data or cfg.data, cfg.image_size, data_root or cfg.data_root
    if data is None:
        raise ExportError("--data: required when embedding with an exported file (no run settings to default to)")
    return data, None, data_root


def _embed_parts(encoder: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 parts: list[tuple[str, ImageDataset]], batch_size: int, device: torch.device,
                 progress: bool) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Embeddings ``[N, D]`` of every part, in order, and the per-row columns."""
    columns: dict[str, list[Any]] = {"split": [], "index": [], "label": [], "class": [], "path": []}
    chunks = []
    for name, ds in parts:
        feats = extract_features(encoder, ds.images, preprocess, batch_size=batch_size, device=device,
                                 progress=progress)
        n = len(ds)
        labels = ds.labels.tolist() if ds.labels is not None else [-1] * n
        columns["split"] += [name] * n
        columns["index"] += list(range(n))
        columns["label"] += labels
        columns["class"] += [ds.classes[y] if 0 <= y < len(ds.classes) else "" for y in labels]
        columns["path"] += list(ds.paths) if ds.paths is not None else [""] * n
        chunks.append(feats.numpy().astype(np.float32, copy=False))
    return np.concatenate(chunks, axis=0), columns


def _text(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=f"U{max([1, *map(len, values)])}")


def _write(path: Path, emb: np.ndarray, cols: dict[str, list[Any]], meta: dict[str, Any]) -> None:
    suffix = path.suffix.lower()
    n, d = emb.shape
    if suffix == ".npy":
        text = {k: _text(cols[k]) for k in ("split", "class", "path")}
        dtype = np.dtype([("split", text["split"].dtype), ("index", np.int64), ("label", np.int64),
                          ("class", text["class"].dtype), ("path", text["path"].dtype),
                          ("embedding", np.float32, (d,))])
        arr = np.empty(n, dtype=dtype)
        for k, v in text.items():
            arr[k] = v
        arr["index"], arr["label"], arr["embedding"] = cols["index"], cols["label"], emb

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    elif suffix == ".npz":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=emb, labels=np.asarray(cols["label"], dtype=np.int64),
                         indices=np.asarray(cols["index"], dtype=np.int64), splits=_text(cols["split"]),
                         classes=_text(cols["class"]), paths=_text(cols["path"]),
                         metadata=np.array(json.dumps(meta)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "split": pa.array(cols["split"], pa.string()), "index": pa.array(cols["index"], pa.int64()),
            "label": pa.array(cols["label"], pa.int64()), "class": pa.array(cols["class"], pa.string()),
            "path": pa.array(cols["path"], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d)})
        table = table.replace_schema_metadata({"selfsup": json.dumps(meta)})

        def write(tmp: str) -> None:
            pq.write_table(table, tmp)
    atomic_write(path, write)


__all__ = ["EMBED_FORMATS", "SPLITS", "embed_dataset", "default_embed_out"]
