"""Run settings: one flat dataclass that the Python API and the CLI share field for field."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.data.sources import parse_class_list
from selfsup.errors import ConfigError
from selfsup.evaluation.frozen import PROTOCOLS_FROZEN
from selfsup.methods import METHODS
from selfsup.models import BACKBONES, NORMS
from selfsup.models.timm_backbones import TimmError, check_timm_backbone, is_timm
from selfsup.train.optim import OPTIMIZERS

RECIPES = ("auto", "paper", "small")
DATA_MODES = ("auto", "memory", "stream")
SMALL_IMAGE_MAX = 64  # images up to this size use the small-image recipe and stem under "auto"
SMALL_IMAGE_CROP_SCALE = (0.2, 1.0)  # crops below ~20% of a 28-px image keep almost nothing
# SimCLR's CIFAR-10 recipe (Chen et al. 2020, Appendix B.9) drops the blur at 32 px.
SMALL_IMAGE_VIEW_OVERRIDES: dict[str, float] = {"blur_p": 0.0}
# Augmentation ablations (BYOL Fig. 3b / Table 17): each name switches off one operation in every view;
# crop_only keeps the flip (the paper's "crop + flip only" row).
AUGMENT_OFF: dict[str, dict[str, float]] = {
    "jitter": {"jitter_p": 0.0},
    "grayscale": {"grayscale_p": 0.0},
    "blur": {"blur_p": 0.0},
    "solarize": {"solarize_p": 0.0},
    "flip": {"flip_p": 0.0},
    "crop_only": {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0},
}


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` means "the method's / recipe's default".

    Method hyperparameters (e.g. ``tau_base`` for BYOL) go in ``method_options``; the CLI
    exposes them as flags of their own.
    """

    method: str = "byol"
    data: str = "fashion-mnist"
    subset: int | None = None
    holdout_classes: str | None = None  # e.g. "5-9" or "7,8,9": classes removed from the training split (few-shot)
    data_root: str | None = None
    data_mode: str = "auto"  # memory | stream (a store: selfsup convert); auto: stream when it would not fit
    data_workers: int = 2  # DataLoader processes decoding a streamed store
    image_size: int | None = None
    backbone: str = "resnet18"
    width: float = 1.0
    small_stem: bool | None = None
    norm: str = "batchnorm"
    zero_init_residual: bool | None = None  # each ResNet block starts as its shortcut; None: the method's default
    recipe: str = "auto"
    epochs: int = 100
    batch_size: int = 256
    optimizer: str | None = None
    lr: float | None = None  # base learning rate for batch 256; scaled linearly with batch size
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    lars_eta: float | None = None  # LARS trust coefficient (paper 1e-3; small recipe 0.02 with clipping)
    lars_clip: bool | None = None  # LARC clipping: no layer steps faster than the global lr
    crop_scale_min: float | None = None
    augment_off: str | None = None  # comma list of AUGMENT_OFF names, e.g. "blur,solarize" or "crop_only"
    seed: int = 0
    out: str | None = None
    device: str = "auto"
    devices: int = 1  # processes (GPUs, or CPU processes) to train on; >1 starts them through torchrun
    sync_bn: bool | None = None  # BatchNorm over the global batch when distributed; None: the method's default
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere (CPU bf16 with AVX512-BF16: 1.7x cheaper)
    compile: bool = False
    grad_checkpointing: bool = False  # recompute each backbone stage in backward: less memory, ~1 extra forward
    channels_last: bool | None = None  # NHWC model and inputs; None: on CUDA only (on the CPU opt-in, 1.3x cheaper)
    log_every: int = 10
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: once per epoch
    online_probe: bool = True  # linear classifier on detached features during training (needs labels)
    knn_every: int = 0  # epochs between kNN checks on the test split during training; 0: never
    eval_after: bool = True  # kNN + linear probe (and random-init / raw-pixel baselines) at the end
    baselines: bool = True  # with eval_after: also score a random-init encoder and raw pixels (off for sweeps)
    eval_layer: int | None = None  # score the ResNet's stage 1-4 (pooled) at the end instead of its output
    eval_protocols: str = "knn,linear"  # the frozen protocols of eval_after (comma list; "knn" alone is ~2x faster)
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)


TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "method_options"]


def method_option_types() -> dict[str, type]:
    """Every method hyperparameter by name, with its type (first definition wins)."""
    types: dict[str, type] = {}
    for method in METHODS.values():
        for name, hint in typing.get_type_hints(method.Config).items():
            types.setdefault(name, hint)
    return types


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"--{option.replace('_', '-')}: {message}")


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first bad option."""
    _check(cfg.method in METHODS, "method", f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    if is_timm(cfg.backbone):  # timm installed, a model of its, and the options that apply to it
        try:
            check_timm_backbone(cfg.backbone, width=cfg.width, norm=cfg.norm, grad_checkpointing=cfg.grad_checkpointing)
        except TimmError as e:
            raise ConfigError(str(e)) from e
    _check(cfg.backbone in BACKBONES or is_timm(cfg.backbone), "backbone",
           f"unknown backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}, or timm:NAME (any timm model)")
    _check(cfg.norm in NORMS, "norm", f"unknown norm {cfg.norm!r}; choose from {', '.join(NORMS)}")
    _check(cfg.recipe in RECIPES, "recipe", f"unknown recipe {cfg.recipe!r}; choose from {', '.join(RECIPES)}")
    _check(cfg.optimizer is None or cfg.optimizer in OPTIMIZERS, "optimizer",
           f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    _check(cfg.precision in ("auto", "fp32", "bf16"), "precision", "choose from auto, fp32, bf16")
    _check(cfg.devices >= 1, "devices", f"must be a positive integer, got {cfg.devices}")
    _check(cfg.batch_size % cfg.devices == 0, "batch_size",
           f"the global batch {cfg.batch_size} does not split evenly over --devices {cfg.devices}")
    _check(cfg.epochs > 0, "epochs", f"must be a positive integer, got {cfg.epochs}")
    _check(cfg.batch_size > 1, "batch_size", f"must be at least 2, got {cfg.batch_size}")
    _check(cfg.width > 0, "width", f"must be positive, got {cfg.width}")
    _check(cfg.subset is None or cfg.subset > 0, "subset", f"must be positive, got {cfg.subset}")
    _check(cfg.data_mode in DATA_MODES, "data_mode", f"choose from {', '.join(DATA_MODES)}, got {cfg.data_mode!r}")
    _check(cfg.data_workers >= 0, "data_workers", f"must be >= 0, got {cfg.data_workers}")
    if cfg.holdout_classes is not None:
        try:
            parse_class_list(cfg.holdout_classes)
        except ValueError as e:
            raise ConfigError(f"--holdout-classes: {e}") from e
    _check(cfg.image_size is None or cfg.image_size >= 4, "image_size", f"must be at least 4, got {cfg.image_size}")
    _check(cfg.lr is None or cfg.lr > 0, "lr", f"must be positive, got {cfg.lr}")
    _check(cfg.weight_decay is None or cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    _check(cfg.warmup_epochs is None or cfg.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    _check(cfg.crop_scale_min is None or 0 < cfg.crop_scale_min <= 1, "crop_scale_min", "must be in (0, 1]")
    for name in (cfg.augment_off or "").split(","):
        _check(not name or name in AUGMENT_OFF, "augment_off",
               f"unknown augmentation {name!r}; choose from {', '.join(AUGMENT_OFF)}")
    _check(cfg.log_every > 0, "log_every", f"must be positive, got {cfg.log_every}")
    _check(not cfg.grad_checkpointing or cfg.backbone.startswith(("resnet", "timm:")), "grad_checkpointing",
           f"is implemented for the ResNet backbones, not {cfg.backbone!r}")
    _check(cfg.knn_every >= 0, "knn_every", "must be >= 0")
    protocols = cfg.eval_protocols.split(",")
    _check(all(p in PROTOCOLS_FROZEN for p in protocols), "eval_protocols",
           f"must be a comma list of {', '.join(PROTOCOLS_FROZEN)}, got {cfg.eval_protocols!r}")
    _check(cfg.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
    _check(cfg.eval_layer is None or 1 <= cfg.eval_layer <= 4, "eval_layer", "a ResNet stage: 1, 2, 3 or 4")
    _check(not (cfg.resume and cfg.overwrite), "resume", "cannot be combined with --overwrite")
    known = {f.name for f in dataclasses.fields(METHODS[cfg.method].Config)}
    for name in cfg.method_options:
        _check(name in known, name, f"is not an option of method {cfg.method!r}; its options: "
               f"{', '.join(sorted(known))}")
    try:  # each method's config checks its own values
        METHODS[cfg.method].Config(**cfg.method_options)
    except ValueError as e:
        raise ConfigError(f"{cfg.method} options: {e}") from e


@dataclass
class Resolved:
    """Concrete values decided from the config and the data (written to config.yaml)."""

    recipe: str
    image_size: int
    small_stem: bool
    crop_scale: tuple[float, float]
    view_overrides: dict[str, float]
    optimizer: str
    base_lr: float
    lr: float
    weight_decay: float
    warmup_epochs: float
    lars_eta: float
    lars_clip: bool
    method_options: dict[str, Any]
    zero_init_residual: bool = False


def resolve(cfg: TrainConfig, native_image_size: int) -> Resolved:
    """Fill every ``None`` from the recipe: paper defaults, or the small-image recipe."""
    method = METHODS[cfg.method]
    size = cfg.image_size or native_image_size
    recipe = cfg.recipe if cfg.recipe != "auto" else ("small" if size <= SMALL_IMAGE_MAX else "paper")
    small = recipe == "small"
    options = dataclasses.asdict(method.Config())
    optim = dict(method.OPTIMIZER)
    if small:
        options.update(method.SMALL_IMAGE_RECIPE)
        optim.update(method.SMALL_IMAGE_OPTIMIZER)
    options.update(cfg.method_options)
    zero_init = method.ZERO_INIT_RESIDUAL
    if small and method.SMALL_IMAGE_ZERO_INIT_RESIDUAL is not None:
        zero_init = method.SMALL_IMAGE_ZERO_INIT_RESIDUAL
    crop = (cfg.crop_scale_min, 1.0) if cfg.crop_scale_min else (SMALL_IMAGE_CROP_SCALE if small else (0.08, 1.0))
    base_lr = cfg.lr if cfg.lr is not None else optim["lr"]
    view_overrides = dict(SMALL_IMAGE_VIEW_OVERRIDES) if small else {}
    for name in filter(None, (cfg.augment_off or "").split(",")):
        view_overrides.update(AUGMENT_OFF[name])
    return Resolved(
        recipe=recipe, image_size=size,
        small_stem=cfg.small_stem if cfg.small_stem is not None else size <= SMALL_IMAGE_MAX,
        crop_scale=crop, view_overrides=view_overrides, optimizer=cfg.optimizer or optim["optimizer"], base_lr=base_lr,
        lr=base_lr * cfg.batch_size / 256,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else optim["weight_decay"],
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs is not None else optim["warmup_epochs"],
        lars_eta=cfg.lars_eta if cfg.lars_eta is not None else optim.get("lars_eta", 1e-3),
        lars_clip=cfg.lars_clip if cfg.lars_clip is not None else optim.get("lars_clip", False),
        method_options=options,
        zero_init_residual=cfg.zero_init_residual if cfg.zero_init_residual is not None else zero_init,
    )


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Configuration files: `selfsup train --config FILE.yaml|RECIPE`

RECIPES_DIR = Path(__file__).parent / "recipes"
RUN_ACTIONS = ("out", "resume", "overwrite")  # what a run folder's own config.yaml does not carry over


def recipe_names() -> list[str]:
    """The papers' settings shipped with selfsup (``selfsup/recipes/NAME.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def options_from_file(name_or_path: str | Path) -> dict[str, Any]:
    """``TrainConfig`` fields and method hyperparameters from a YAML file, or from a packaged recipe
    by name; a run folder's ``config.yaml`` gives that run's settings (without ``out``, ``resume``,
    ``overwrite``). Unknown keys are a ConfigError naming the key and its nearest valid names."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"--config: {name_or_path} is neither a file nor a recipe ({', '.join(recipe_names())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config: {path} is not readable YAML ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must be a mapping of option: value")
    if isinstance(data.get("config"), dict):  # a run folder's config.yaml
        data = {k: v for k, v in data["config"].items() if k not in RUN_ACTIONS}
    options = {k: v for k, v in data.items() if k != "method_options"}
    options.update(data.get("method_options") or {})
    _check_known(options, path)
    return options


def _check_known(options: dict[str, Any], path: Path) -> None:
    known = [*TRAIN_FIELDS, *method_option_types()]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"--config: {path}: unknown key {key!r}{hint}")
