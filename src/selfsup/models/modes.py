"""Train/eval mode handling: run a module in a mode and give every submodule its own flag back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def keep_modes(module: nn.Module, training: bool | None = False) -> Iterator[nn.Module]:
    """Within the block ``module`` is in eval mode (``training=True``: train mode; ``None``: as it is);
    afterwards every submodule's previous ``training`` flag is restored, even after an exception."""
    modes = [(m, m.training) for m in module.modules()]
    if training is not None:
        module.train(training)
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode
