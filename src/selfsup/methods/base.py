"""The interface between a self-supervised method and the generic training loop.

A method owns its networks and its loss. The loop hands it a list of augmented views and
calls its hooks (``on_epoch_start``, ``on_batch_start``, ``before_optimizer_step``,
``on_step_end``); it knows nothing else about the method. ``step`` counts optimiser steps done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.data.views import ViewSpec, byol_views
from selfsup.errors import ConfigError


@dataclass
class StepOutput:
    """What ``Method.training_step`` returns.

    ``loss`` is the scalar to minimise. ``embeddings`` holds two views' outputs (for the
    collapse monitors), ``features`` the backbone features of the first view (for an online
    probe); both detached. ``metrics`` are extra scalar tensors to log (not synchronised).
    """

    loss: torch.Tensor
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    features: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: subclasses set ``name`` and ``Config`` and implement ``training_step``.

    ``Config`` is a dataclass of the method's hyperparameters with the paper's defaults;
    ``SMALL_IMAGE_RECIPE`` overrides some of them (and the optimiser settings in
    ``OPTIMIZER`` / ``SMALL_IMAGE_OPTIMIZER``) for small images, measured in BENCHMARKS.md.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    OPTIMIZER: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6,
                                           "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE: ClassVar[dict[str, Any]] = {}
    SMALL_IMAGE_OPTIMIZER: ClassVar[dict[str, Any]] = {}
    # True: ResNet blocks start as their shortcuts (last norm scale 0), as in the official code of BYOL,
    # SimCLR, SimSiam, Barlow Twins and VICReg; --[no-]zero-init-residual overrides.
    ZERO_INIT_RESIDUAL: ClassVar[bool] = False
    # The small-image recipe's choice where it was measured to differ from the paper's (None: the same).
    SMALL_IMAGE_ZERO_INIT_RESIDUAL: ClassVar[bool | None] = None
    # BatchNorm statistics over the global batch when training on several processes (SyncBatchNorm),
    # as the papers of SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, NNCLR, SwAV and DINO do; the
    # N-process run then computes what one process computes on the global batch. A method whose
    # paper normalises per GPU sets False (MoCo v2). ``--sync-bn/--no-sync-bn`` overrides it.
    sync_batchnorm: ClassVar[bool] = True

    def __init__(self, encoder: nn.Module, config: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """The augmented views this method trains on (default: BYOL's two asymmetric views)."""
        return byol_views(size, crop_scale)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        """``method(views)`` is ``training_step`` (so DDP and torch.compile see a forward)."""
        return self.training_step(views)

    def on_epoch_start(self, epoch: int, steps_per_epoch: int) -> None:
        """Called before the first step of each epoch (e.g. DeepCluster's k-means)."""

    def on_batch_start(self, indices: torch.Tensor) -> None:
        """Called with the dataset indices of the coming batch (for memory banks)."""

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called between backward and the optimiser step (e.g. freezing prototypes early on)."""

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after each optimiser step; returns scalars to log (e.g. the EMA rate)."""
        return {}

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, as optimiser groups; a group may set ``lr_multiplier``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @torch.no_grad()
    def preview_panels(self, views: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """What the network is shown beyond the augmented ``views`` (un-normalised [0, 1] floats
        ``[N, C, H, W]``): ``(caption, images [N, C', H', W'] in [0, 1])`` columns for the preview,
        e.g. jigsaw tiles in their permuted order or a masked image. Default: nothing more."""
        return []


def bias_lr_groups(method: nn.Module, bias_lr_multiplier: float) -> list[dict[str, Any]]:
    """Two optimiser groups: the weights (``ndim > 1``), then the biases and norm parameters at
    ``bias_lr_multiplier`` times the lr (Barlow Twins' and VICReg's official optimiser setup)."""
    params = [p for p in method.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "lr_multiplier": bias_lr_multiplier}]


def predictor_lr_groups(method: nn.Module, predictor: nn.Module | None,
                        predictor_lr_multiplier: float) -> list[dict[str, Any]]:
    """Two optimiser groups: every trainable parameter outside ``predictor``, then the predictor's at
    ``predictor_lr_multiplier`` times the lr (BYOL's and SimSiam's predictor lr); one without a predictor."""
    predictor_params = list(predictor.parameters()) if predictor is not None else []
    in_predictor = set(predictor_params)
    rest = [p for p in method.parameters() if p.requires_grad and p not in in_predictor]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if predictor_params:
        groups.append({"params": predictor_params, "lr_multiplier": predictor_lr_multiplier})
    return groups


# How a method that reads another trained run (BoWNet's teacher) loads that run's encoder. Set by
# selfsup.runs, the layer that knows run folders, so that methods never import it.
_RUN_ENCODER_LOADER: list[Callable[[str], nn.Module]] = []


def set_run_encoder_loader(loader: Callable[[str], nn.Module]) -> None:
    _RUN_ENCODER_LOADER[:] = [loader]


def load_run_encoder(run_dir: str) -> nn.Module:
    """The trained backbone of the run folder ``run_dir`` (through the loader ``selfsup.runs`` sets)."""
    if not _RUN_ENCODER_LOADER:
        raise ConfigError(f"{run_dir}: loading a run folder needs selfsup.runs (import selfsup.runs first)")
    return _RUN_ENCODER_LOADER[0](run_dir)
