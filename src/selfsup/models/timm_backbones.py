"""Any `timm <https://github.com/huggingface/pytorch-image-models>`_ model as the encoder: ``timm:NAME``.

``build_timm_backbone("timm:resnet10t", in_channels=1, small_stem=True, image_size=28)`` returns timm's
own module (its ``state_dict`` keys are timm's, so the weights load into ``timm.create_model(NAME, ...)``
built the same way), made with ``pretrained=False`` (the architecture only: nothing is ever downloaded),
``num_classes=0`` (its ``forward`` returns pooled features ``[B, D]``) and ``in_chans`` = the data's
channels. Three attributes are added: ``feature_dim`` (``D``: timm's ``head_hidden_size``, else
``num_features``), ``timm_name`` (``"timm:NAME"``) and ``in_channels``.

Small-image adaptation (``small_stem``, on by default for images <= 64 px), as selfsup's own ResNets
(3x3 stride-1 stem, no max-pool) and ViTs (patch 4 instead of 16) have it:

* ResNet-like models (a ``conv1`` stem, its norm ``bn1`` and a ``maxpool``: timm's ``ResNet`` class,
  i.e. resnet*, resnext*, seresnet*, seresnext*, ecaresnet*, wide_resnet*, resnest*, res2net*,
  skresnet*, resnetrs*, resnetblur*, the -d/-t deep-stem variants, ...): ``conv1`` becomes one 3x3
  stride-1 convolution to the stem's width and ``maxpool`` an identity (a deep 3-conv stem and a
  convolutional stem pool are replaced as well): 4x less downsampling;
* models with one patch embedding of patches larger than 4 (timm's ``PatchEmbed``, as a class argument
  ``patch_size``: vit_*, deit_*, eva*, beit*, cait*, convit*, ...): patches of 4 pixels (7 x 7 patches
  at 28 px, 8 x 8 at 32 px); where the model's entry point fixes its patch size (mixer_*, gmlp_*,
  resmlp_*) the patches stay as they are;
* ConvNeXt (``convnext_*``): ``patch_size=1``, its 4x4 stride-4 patchify stem becomes 1x1 stride 1;
* every other family keeps its stem (EfficientNet, MobileNet, RegNet, ResNetV2, Swin, ... ): at 28-32 px
  a network that downsamples 32x ends on a 1 x 1 map; it trains, with less spatial detail. Some
  (DenseNet, DLA, VoVNet, Inception, FocalNet, ...) do not run on such small inputs at all: the check
  below says so in one line.

With ``image_size`` (the run's), a class that takes ``img_size`` is built for it (position embeddings,
attention windows and biases sized for the run's images), and the model is run once on the meta device
(shapes only, no compute) at that size: a model that cannot take such inputs fails here, in one line
naming the size, not in the middle of training. Classes that take ``dynamic_img_size`` always get it,
so views of any size (multi-crop's global and local crops) go through one network, the position
embeddings resized to each input; fixed-size models (cait, convit, mixer, ...) take the run's size only.

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


def _probe(timm: ModuleType, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model's class and structure, built on the meta device (no memory, no initialisation); on the CPU,
    with the random state put back afterwards, for a model whose constructor needs real tensors."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except Exception:
        with torch.random.fork_rng(devices=[]):
            return timm.create_model(name, **kwargs)


def _init_args(model: nn.Module) -> set[str]:
    """The constructor arguments of the model's class, through subclasses that pass ``**kwargs`` on."""
    args: set[str] = set()
    for cls in type(model).__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        args |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return args


def _set_grad_checkpointing(model: nn.Module, backbone: str) -> None:
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError) as e:
        raise TimmError(f"--grad-checkpointing: the timm model {backbone} does not implement gradient "
                        "checkpointing (set_grad_checkpointing)") from e


def is_resnet_like(model: nn.Module) -> bool:
    """A ``conv1`` stem followed by ``bn1`` and a ``maxpool``: the stem the small-image adaptation replaces."""
    return all(isinstance(getattr(model, a, None), nn.Module) for a in ("conv1", "bn1", "maxpool"))


def _large_patch_embedding(model: nn.Module) -> bool:
    """One timm ``PatchEmbed`` child with patches larger than ``SMALL_PATCH`` (ViT-style models)."""
    from timm.layers import PatchEmbed

    embeds = [m for m in model.children() if isinstance(m, PatchEmbed)]
    return len(embeds) == 1 and max(embeds[0].patch_size) > SMALL_PATCH


def _small_stem_resnet(model: nn.Module, in_channels: int) -> None:
    """``conv1`` -> one 3x3 stride-1 convolution to the stem's width; ``maxpool`` -> identity."""
    convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    conv = nn.Conv2d(in_channels, convs[-1].out_channels, 3, 1, 1, bias=False, device=convs[-1].weight.device)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
    model.conv1 = conv
    model.maxpool = nn.Identity()


def _family_kwargs(probe: nn.Module, small_stem: bool, image_size: int | None,
                   zero_init_residual: bool) -> dict[str, Any]:
    """Constructor arguments for the adaptations the class takes (see the module docstring)."""
    args = _init_args(probe)
    kwargs: dict[str, Any] = {}
    if "zero_init_last" in args:
        kwargs["zero_init_last"] = bool(zero_init_residual)
    if "dynamic_img_size" in args:
        kwargs["dynamic_img_size"] = True
    if small_stem and "patch_size" in args and _large_patch_embedding(probe):
        kwargs["patch_size"] = SMALL_PATCH
    elif small_stem and type(probe).__name__ == "ConvNeXt":
        kwargs["patch_size"] = 1
    if "img_size" in args and (image_size or "patch_size" in kwargs):
        kwargs["img_size"] = image_size or SMALL_GRID_IMAGE
    return kwargs


def _check_input_size(model: nn.Module, backbone: str, in_channels: int, image_size: int) -> None:
    """Run ``model`` (on the meta device: shapes only) on ``image_size`` images; a one-line TimmError if it cannot."""
    if next(model.parameters()).device.type != "meta":  # built on the CPU (see _probe): not run, to save time
        return
    x = torch.empty(2, in_channels, image_size, image_size, device="meta")
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, AssertionError, ValueError) as e:
        if "meta" in str(e).lower():  # an operation without a meta implementation: nothing learned
            return
        cause = " ".join(str(e).split())[:160]
        raise TimmError(f"--image-size: {backbone} does not run on {image_size} x {image_size} images ({cause}); "
                        "use larger images (--image-size) or a family with a small-image stem") from e
    except NotImplementedError:
        return
    if tuple(out.shape) != (2, model.feature_dim):
        raise TimmError(f"--backbone: {backbone} gives features of shape {tuple(out.shape[1:])}, not pooled "
                        f"[{model.feature_dim}] features")


def _adapt(model: nn.Module, backbone: str, in_channels: int, small_stem: bool) -> nn.Module:
    if small_stem and is_resnet_like(model):
        _small_stem_resnet(model, in_channels)
    model.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    model.timm_name = backbone
    model.in_channels = in_channels
    return model


def _shaped_probe(timm: ModuleType, name: str, backbone: str, base: dict[str, Any], adapted: dict[str, Any],
                  image_size: int | None) -> tuple[dict[str, Any], nn.Module]:
    """``(constructor arguments, meta-device model)``: with ``adapted``, or without the small patch when the
    model's entry point fixes its patch size (its stem then stays); a one-line TimmError if neither builds."""
    tries = [adapted]
    if "patch_size" in adapted:
        tries.append({k: v for k, v in adapted.items() if k != "patch_size" and (k != "img_size" or image_size)})
    for kwargs in tries:
        try:
            return {**base, **kwargs}, _probe(timm, name, {**base, **kwargs})
        except Exception as e:  # any failure of the constructor, reported in one line below
            error = e
    cause = " ".join(f"{type(error).__name__}: {error}".split())[:160]
    size = f" for {image_size} x {image_size} images" if image_size else ""
    hint = "try another --image-size" + (" or --no-small-stem" if "patch_size" in adapted else "")
    raise TimmError(f"--backbone: {backbone} cannot be built{size} with "
                    f"{', '.join(f'{k}={v}' for k, v in adapted.items())} ({cause}); {hint}") from error


def build_timm_backbone(backbone: str, *, in_channels: int = 3, small_stem: bool = False,
                        image_size: int | None = None, width: float = 1.0, norm: str = "batchnorm",
                        grad_checkpointing: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """timm's model ``NAME`` of ``backbone = "timm:NAME"`` as an encoder (see the module docstring)."""
    check_timm_backbone(backbone, width=width, norm=norm, grad_checkpointing=False)
    timm = import_timm(backbone)
    name = timm_model_name(backbone)
    base = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
    probe = _probe(timm, name, base)
    if grad_checkpointing:
        _set_grad_checkpointing(probe, backbone)  # a family without it fails here, before the real build
    adapted = _family_kwargs(probe, small_stem, image_size, zero_init_residual)
    kwargs, shaped = _shaped_probe(timm, name, backbone, base, adapted, image_size)
    if image_size is not None:  # the adapted model, on the meta device, tried at the run's image size
        _check_input_size(_adapt(shaped, backbone, in_channels, small_stem).eval(), backbone, in_channels,
                          image_size)
    model = _adapt(timm.create_model(name, **kwargs), backbone, in_channels, small_stem)
    if grad_checkpointing:
        _set_grad_checkpointing(model, backbone)
    return model


__all__ = ["TIMM_HINT", "TIMM_PREFIX", "TimmError", "build_timm_backbone", "check_timm_backbone", "import_timm",
           "is_timm", "timm_model_name"]
