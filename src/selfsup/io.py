"""Atomic file writes: a crash or kill at any moment leaves the old file or the new one, never a part."""

from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def atomic_write(path: str | Path, write: Callable[[str], None], durable: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    ``durable`` also fsyncs the file and its folder (checkpoints: the rename survives a power cut).
    The temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would have given, not mkstemp's 0600
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not err.filename:  # name the file the caller asked for
            raise OSError(err.errno, err.strerror, str(path)) from err
        if isinstance(err, Exception) and not isinstance(err, OSError) and _disk_full(path.parent):
            # writers that hide the cause (torch.save: "unexpected pos ..."; safetensors, onnx)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
    if durable:
        _fsync(path.parent)
    return path


def _disk_full(folder: Path, least_bytes: int = 2**20) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < least_bytes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, content: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(content, indent=indent) + "\n")


def write_yaml_atomic(path: str | Path, content: dict[str, Any]) -> Path:
    plain = json.loads(json.dumps(content))  # tuples -> lists, str subclasses -> str
    return write_text_atomic(path, yaml.safe_dump(plain, sort_keys=False))


def read_yaml(path: str | Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of :func:`atomic_write` for ``path`` left behind by a killed writer."""
    path = Path(path)
    return list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
