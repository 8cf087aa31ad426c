"""Any `timm <https://github.com/huggingface/pytorch-image-models>`_ model as the encoder: ``timm:NAME``.

``build_timm_backbone("timm:resnet10t", in_channels=1, small_stem=True)`` returns timm's own module
(its ``state_dict`` keys are timm's, so the weights load into ``timm.create_model(NAME, ...)``), built
with ``pretrained=False`` (the architecture only: nothing is ever downloaded), ``num_classes=0`` (its
``forward`` returns pooled features ``[B, D]``) and ``in_chans`` = the data's channels. Two attributes
are added: ``feature_dim`` (``D``: timm's ``head_hidden_size``, else ``num_features``) and
``timm_name`` (``"timm:NAME"``).

Small-image adaptation (``small_stem``, on by default for images <= 64 px): every supported family's
stem downsamples 4x less, as selfsup's own ResNets (3x3 stride-1 stem, no max-pool) and ViTs (patch 4
instead of 16) do:

* ResNet-like models (a ``conv1`` stem, its norm ``bn1`` and a ``maxpool``: timm's ``ResNet`` class,
  i.e. resnet*, resnext*, seresnet*, ecaresnet*, wide_resnet*, resnest*, res2net*, skresnet*, the
  -d/-t deep-stem variants...): ``conv1`` becomes one 3x3 stride-1 convolution to the stem's width
  and ``maxpool`` an identity (a deep 3-conv stem, and a convolutional stem pool, are replaced too);
* patch-embedding Vision Transformers (classes taking ``patch_size``, ``img_size`` and
  ``dynamic_img_size``: vit_*, deit_*, eva*, ...): ``patch_size=4, img_size=32``;
* ConvNeXt (``convnext_*``): ``patch_size=1`` (its 4x4 stride-4 patchify stem becomes 1x1 stride 1);
* every other family keeps its stem: at 28-32 px a network that downsamples 32x then ends on a
  1 x 1 map. It still trains, only with less spatial detail.

Transformers whose class takes ``dynamic_img_size`` always get it, so views of any size (multi-crop's
global and local crops) go through one network, the position embeddings resized to each input.

Options of selfsup's own ResNets, for timm models:

* ``zero_init_residual`` is passed as timm's ``zero_init_last`` where the class takes it (ResNet,
  RegNet, ByobNet, ...); other families have no such option and keep their own initialisation (the
  method's default is a default, so it is not an error);
* ``grad_checkpointing`` calls timm's ``set_grad_checkpointing()``; a family without it is a one-line
  error;
* ``norm``: timm models keep their own normalisation layers, so only the default (``batchnorm``,
  meaning "the model's own") is accepted; ``width``: timm models are sized by name (e.g.
  ``timm:resnet10t``, ``timm:test_resnet``), so only 1 is accepted;
* per-stage feature maps (``stage_outputs`` / ``--eval-layer``) are for selfsup's ResNets only.
"""

from __future__ import annotations

import difflib
import inspect
from types import ModuleType
from typing import Any

import torch
from torch import nn

TIMM_PREFIX = "timm:"
TIMM_HINT = "pip install 'selfsup[timm]'"
SMALL_PATCH = 4  # patch size of a ViT's small-image stem (selfsup's own ViT: models/vit.py)
SMALL_GRID_IMAGE = 32  # the image size a small-stem ViT stores its position embeddings at


class TimmError(ValueError):
    """A ``timm:NAME`` backbone that cannot be built as asked; the message is one line naming the flag and fix."""


def is_timm(name: str) -> bool:
    """Whether a backbone name is a timm model (``timm:NAME``)."""
    return name.startswith(TIMM_PREFIX)


def import_timm(backbone: str = TIMM_PREFIX + "NAME") -> ModuleType:
    """The ``timm`` module, or a :class:`TimmError` whose one line names the install command."""
    try:
        import timm
    except ImportError as e:
        raise TimmError(f"--backbone: {backbone} needs the optional package timm: {TIMM_HINT}") from e
    return timm


def timm_model_name(backbone: str) -> str:
    """``timm:resnet10t`` -> ``resnet10t``."""
    return backbone[len(TIMM_PREFIX):] if is_timm(backbone) else backbone


def check_timm_backbone(backbone: str, *, width: float = 1.0, norm: str = "batchnorm",
                        grad_checkpointing: bool = False) -> None:
    """Raise :class:`TimmError` (one line, starting with the flag at fault) unless ``backbone`` can be built.

    Checks that timm is installed, that the name is one of its models (naming close matches when not),
    and the options that do not apply to timm models.
    """
    timm = import_timm(backbone)
    name = timm_model_name(backbone)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = (f"close matches: {', '.join(TIMM_PREFIX + c for c in close)}" if close
                else "timm.list_models() lists them")
        raise TimmError(f"--backbone: unknown timm model {name!r}; {hint}")
    if width != 1.0:
        raise TimmError(f"--width: timm models are sized by their name (e.g. timm:resnet10t, timm:test_resnet), "
                        f"not by a width multiplier; drop --width {width:g} for {backbone}")
    if norm != "batchnorm":
        raise TimmError(f"--norm: {backbone} keeps timm's own normalisation layers; drop --norm {norm}")
    if grad_checkpointing:
        _set_grad_checkpointing(_probe(timm, name, {"pretrained": False, "num_classes": 0}), backbone)


def _create(timm: ModuleType, name: str, kwargs: dict[str, Any]) -> nn.Module:
    return timm.create_model(name, **kwargs)


def _probe(timm: ModuleType, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model's class and structure, built on the meta device (no memory, no initialisation); on the CPU,
    with the random state put back afterwards, for a model whose constructor needs real tensors."""
    try:
        with torch.device("meta"):
            return _create(timm, name, kwargs)
    except Exception:
        with torch.random.fork_rng(devices=[]):
            return _create(timm, name, kwargs)


def _init_args(model: nn.Module) -> set[str]:
    return set(inspect.signature(type(model).__init__).parameters)


def _set_grad_checkpointing(model: nn.Module, backbone: str) -> None:
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError) as e:
        raise TimmError(f"--grad-checkpointing: the timm model {backbone} does not implement gradient "
                        "checkpointing (set_grad_checkpointing)") from e


def is_resnet_like(model: nn.Module) -> bool:
    """A ``conv1`` stem followed by ``bn1`` and a ``maxpool``: the stem the small-image adaptation replaces."""
    return all(isinstance(getattr(model, a, None), nn.Module) for a in ("conv1", "bn1", "maxpool"))


def _small_stem_resnet(model: nn.Module, in_channels: int) -> None:
    """``conv1`` -> one 3x3 stride-1 convolution to the stem's width; ``maxpool`` -> identity."""
    convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    conv = nn.Conv2d(in_channels, convs[-1].out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
    model.conv1 = conv
    model.maxpool = nn.Identity()


def _family_kwargs(args: set[str], class_name: str, small_stem: bool, zero_init_residual: bool) -> dict[str, Any]:
    """Constructor arguments for the adaptations the class takes (see the module docstring)."""
    kwargs: dict[str, Any] = {}
    if "zero_init_last" in args:
        kwargs["zero_init_last"] = bool(zero_init_residual)
    vit_like = {"dynamic_img_size", "patch_size", "img_size"} <= args
    if "dynamic_img_size" in args:
        kwargs["dynamic_img_size"] = True
    if small_stem and vit_like:
        kwargs.update(patch_size=SMALL_PATCH, img_size=SMALL_GRID_IMAGE)
    elif small_stem and class_name == "ConvNeXt":
        kwargs["patch_size"] = 1
    return kwargs


def build_timm_backbone(backbone: str, *, in_channels: int = 3, small_stem: bool = False, width: float = 1.0,
                        norm: str = "batchnorm", grad_checkpointing: bool = False,
                        zero_init_residual: bool = False) -> nn.Module:
    """timm's model ``NAME`` of ``backbone = "timm:NAME"`` as an encoder (see the module docstring)."""
    check_timm_backbone(backbone, width=width, norm=norm, grad_checkpointing=False)
    timm = import_timm(backbone)
    name = timm_model_name(backbone)
    base = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
    probe = _probe(timm, name, base)
    if grad_checkpointing:
        _set_grad_checkpointing(probe, backbone)  # a family without it fails here, before the real build
    kwargs = _family_kwargs(_init_args(probe), type(probe).__name__, small_stem, zero_init_residual)
    model = _create(timm, name, {**base, **kwargs})
    if small_stem and is_resnet_like(model):
        _small_stem_resnet(model, in_channels)
    if grad_checkpointing:
        _set_grad_checkpointing(model, backbone)
    model.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    model.timm_name = backbone
    model.in_channels = in_channels
    return model


__all__ = ["TIMM_HINT", "TIMM_PREFIX", "TimmError", "build_timm_backbone", "check_timm_backbone", "import_timm",
           "is_timm", "timm_model_name"]
