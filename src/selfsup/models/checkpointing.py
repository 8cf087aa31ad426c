"""Gradient checkpointing of backbone stages: trade compute for activation memory.

With checkpointing on, a stage (a ResNet ``layerN``, a ViT encoder block) keeps only its input
during the forward pass and runs its forward again during the backward pass to rebuild what the
gradient needs: activation memory drops to about one stage's worth, for roughly one extra forward
pass of compute. It applies only where it matters -- in training mode with gradients enabled -- so
evaluation and no-grad (momentum target) forwards are unchanged.

The recomputed forward must not count twice in BatchNorm's running statistics: the buffers of a
stage's BatchNorm layers are saved before it is recomputed and put back afterwards. The
recomputation sees the same input and weights, so its activations are bit-identical to the first
pass; gradients, outputs and BatchNorm buffers equal those of the same model without
checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _keep_running_stats(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the BatchNorm buffers of ``module`` as they were on entry."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(norms, saved):
                buffers = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                torch._foreach_copy_(buffers, values)


def run_checkpointed(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``stage(x)``, checkpointed when training with gradients enabled, plain otherwise."""
    if not (stage.training and torch.is_grad_enabled()):
        return stage(x)
    return checkpoint(stage, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _keep_running_stats(stage)))
