"""selfsup: self-supervised visual representation learning, BYOL first.

The public API (``train``, ``evaluate``, ``preview``, ``load_run``, ``export``, ``embed``,
``load_encoder``, ``TrainConfig``) is imported lazily, so ``import selfsup.methods`` does not
pull in the whole package.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {"train": "selfsup.api", "evaluate": "selfsup.api", "preview": "selfsup.api", "demo": "selfsup.api",
        "load_run": "selfsup.api", "TrainConfig": "selfsup.config",
        "export": "selfsup.api", "embed": "selfsup.api", "load_encoder": "selfsup.api",
        "report": "selfsup.api", "compare": "selfsup.api", "convert": "selfsup.api",
        "load_config": "selfsup.api"}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
