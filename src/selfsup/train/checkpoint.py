"""Checkpoints written atomically (temp file, fsync, rename) and loaded without running code."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from selfsup.io import atomic_write, stale_temporaries


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt (one-line message naming the file)."""


class UnsafeCheckpointError(CheckpointError):
    """A file whose pickle would import or call code: refused, nothing in it is run."""


class NonFiniteState(ValueError):
    """A state about to be saved holds NaN or Inf values; the message names the first tensor."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync it, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a partial file; temp
    files left behind by a killed writer are removed by the next successful save.
    """
    def write(tmp: str) -> None:
        buffer = io.BytesIO()  # serialise first: a full disk then fails in f.write, as an OSError naming it
        torch.save(obj, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())

    path = atomic_write(path, write, durable=True)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    return path


def check_finite_state(state: Any, what: str = "state") -> None:
    """Raise :class:`NonFiniteState` if any floating tensor in ``state`` (nested dicts, lists,
    tuples) holds NaN or Inf. One device sync in all."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []

    def visit(obj: Any, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() or obj.is_complex():
                names.append(name)
                tensors.append(obj.detach())
        elif isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{name}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                visit(value, f"{name}[{i}]")

    visit(state, what)
    if not tensors:
        return
    finite = torch.stack([t.isfinite().all().to(tensors[0].device) for t in tensors]).cpu()
    if not bool(finite.all()):
        bad = [names[i] for i in (~finite).nonzero().flatten().tolist()]
        more = f" and {len(bad) - 1} more tensors hold" if len(bad) > 1 else " holds"
        raise NonFiniteState(f"{bad[0]}{more} NaN or Inf")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _unpickling_detail(err: Exception) -> str:
    """The useful line of torch's weights-only error (without its advice to turn the check off)."""
    for line in str(err).splitlines():
        if re.search(r"GLOBAL|[Uu]nsupported|not an allowed global", line):
            return _one_line(line)
    return type(err).__name__


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code.

    Raises :class:`UnsafeCheckpointError` for a pickle that would import or call anything else
    (nothing in it is run) and :class:`CheckpointError` for a missing, truncated or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} is not a safe checkpoint: it holds objects other than tensors and plain containers "
            f"({_unpickling_detail(err)}); refused, nothing in it was run") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        detail = _one_line(err)[:200] or type(err).__name__
        raise CheckpointError(f"{path}: cannot load checkpoint ({detail}); the file may be truncated "
                              "or corrupt") from err
