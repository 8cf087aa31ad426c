"""The evaluation protocols of the self-supervised papers, each run on the learned encoder *and* on
baselines (a random-init encoder of the same architecture, raw pixels, a supervised encoder).

=============  ==============================================================================
protocol       what it measures
=============  ==============================================================================
knn            weighted kNN (k=200, T=0.1) on frozen features (fast, cached features)
linear         linear probe on frozen, cached features (Adam; fast mode)
linear-aug     paper-style linear probe: frozen encoder in eval mode, crop+flip augmented
               training images, SGD Nesterov 0.9, cosine, no weight decay
               (:mod:`selfsup.evaluation.finetune`)
finetune       encoder + linear head trained with all labels (crop+flip, SGD Nesterov, cosine)
semi:P%        ``finetune`` on a class-balanced P% of the training labels (``semi:1%``,
               ``semi:10%``); the subset's indices are saved (:mod:`selfsup.evaluation.semi`)
supervised     the same backbone trained from scratch with all labels (the tables' top row),
               plus kNN and linear probe on its frozen features
fewshot        N-way K-shot episodes on classes never seen in pretraining, Prototypical
               Networks on frozen features (:mod:`selfsup.evaluation.fewshot`)
transfer       kNN, linear and finetune on another dataset than the run's
all            all of the above and one summary table like the papers'
=============  ==============================================================================

Scores are flat keys, fractions in [0, 1]: ``<metric>`` for the learned encoder and
``random_init_<metric>``, ``raw_pixels_<metric>``, ``supervised_<metric>`` for the baselines.

Fine-tuning a random-init encoder *is* supervised training from scratch: the random-init
baseline of ``finetune`` and ``semi`` is that run (and within ``all`` the same computation as
``supervised``, done once).

Other data than the run's (``transfer``, cross-domain ``fewshot``, any ``--data``) is resized to
the run's image size (antialiased bilinear) and its channels adapted to the encoder's: 1-channel
images are repeated to 3 channels, 3-channel images averaged to 1 (equal weights); it is
normalised with the *run's* channel mean/std, the statistics the encoder was trained with.

This module knows nothing of run folders: :func:`selfsup.api.evaluate` builds an
:class:`EvalSetup` (encoder, random-init factory, data loader, normalisation) and writes the
results.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.dataset import DataSplit, ImageDataset
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.fewshot import METRICS as FEWSHOT_METRICS
from selfsup.evaluation.fewshot import fewshot_eval
from selfsup.evaluation.finetune import ClassifierResult, ClassifierSettings, train_classifier
from selfsup.evaluation.frozen import eval_preprocess, frozen_scores
from selfsup.evaluation.semi import balanced_subset, parse_semi, semi_slug

__all__ = ["PROTOCOLS", "ALL_ORDER", "DEFAULT_EPOCHS", "DEFAULT_LR", "PAPER_EPOCHS", "EvalOptions", "EvalSetup",
           "ProtocolError", "Evaluator", "adapt_images", "adapt_split", "default_transfer_data", "protocol_slug",
           "check_protocol", "format_result", "summary_rows", "summary_markdown", "summary_text", "columns",
           "COLUMNS", "evaluate_and_save", "data_slug"]

PROTOCOLS: tuple[str, ...] = ("knn", "linear", "linear-aug", "finetune", "semi:1%", "semi:10%", "supervised",
                              "fewshot", "transfer", "all")
ALL_ORDER: tuple[str, ...] = ("knn", "linear", "linear-aug", "supervised", "finetune", "semi:1%", "semi:10%",
                              "fewshot", "transfer")

# CPU-sized epochs: `selfsup eval RUN --protocol all` on the README's Fashion-MNIST run (10k
# images, ResNet-18 x0.25, 28 px) stays within minutes on 2 CPU cores. The papers' values are in
# PAPER_EPOCHS; pass `epochs=` / `--epochs` to use them.
DEFAULT_EPOCHS: dict[str, int] = {"linear-aug": 5, "finetune": 3, "supervised": 3, "semi:1%": 30, "semi:10%": 10,
                                  "semi": 10, "transfer": 5}  # "semi": any other semi:P%
PAPER_EPOCHS: dict[str, str] = {
    "linear-aug": "80 (BYOL App. C.1), 90 (SimCLR App. B.6), 100 (MoCo)",
    "finetune": "SimCLR/BYOL transfer fine-tuning: 20k steps; ImageNet 100% labels: 30 epochs (SimCLR)",
    "supervised": "90 epochs (standard ImageNet ResNet schedule)",
    "semi:1%": "60 epochs (SimCLR App. B.5)", "semi:10%": "30 epochs (SimCLR App. B.5)",
}
# Peak learning rates for batch 256 (scaled linearly with the batch): SimCLR's fine-tuning lr is
# 0.05 x batch/256; the linear probe sits on BatchNorm-standardised features (see finetune.py).
DEFAULT_LR: dict[str, float] = {"linear-aug": 0.5, "finetune": 0.05}


class ProtocolError(ValueError):
    """A protocol that cannot run with these options or this data (one-line message)."""


def check_protocol(protocol: str) -> str:
    """The canonical name of ``protocol``; ``semi:P%`` accepts any percentage in (0, 100]."""
    name = protocol.strip().lower()
    if name in PROTOCOLS or parse_semi(name) is not None:
        return name
    raise ProtocolError(f"--protocol: unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)} "
                        "(semi:P% takes any percentage)")


def protocol_slug(protocol: str) -> str:
    """File-name form: ``semi:1%`` -> ``semi_1pct``; others unchanged."""
    fraction = parse_semi(protocol)
    return semi_slug(fraction) if fraction is not None else protocol


def _key(protocol: str) -> str:
    """Score-key form: ``linear-aug`` -> ``linear_aug``; ``semi:1%`` -> ``semi_1pct``."""
    return protocol_slug(protocol).replace("-", "_")


def default_transfer_data(run_data: str) -> str:
    """The cross-domain target when none is given: digits, or Fashion-MNIST for a digits run."""
    return "fashion-mnist" if run_data.strip().lower() == "digits" else "digits"


# ---------------------------------------------------------------------------------------------
# Data adaptation


def adapt_images(images: torch.Tensor, channels: int, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[N, channels, size, size]``.

    Channels: equal -> unchanged; 1 -> ``channels`` by repetition; ``C`` -> 1 by averaging;
    anything else is an error. Size: antialiased bilinear resize when it differs.
    """
    c = images.shape[1]
    if c != channels and c != 1 and channels != 1:
        raise ProtocolError(f"cannot adapt {c}-channel images to a {channels}-channel encoder")
    if c == channels and tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], channels, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if c != channels:
            x = x.mean(dim=1, keepdim=True) if channels == 1 else x.repeat(1, channels, 1, 1)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _adapt_part(ds: ImageDataset, channels: int, size: int) -> ImageDataset:
    images = adapt_images(ds.images, channels, size)
    if images is ds.images:
        return ds
    return ImageDataset(name=ds.name, images=images, labels=ds.labels, classes=ds.classes, paths=ds.paths)


def adapt_split(split: DataSplit, channels: int, size: int) -> tuple[DataSplit, str]:
    """``split`` with images adapted to the encoder (see :func:`adapt_images`) and a note of what changed."""
    c, s = split.train.channels, split.train.image_size
    notes = []
    if c != channels:
        notes.append(f"channels {c} -> {channels} ({'repeated' if c == 1 else 'averaged'})")
    if s != size:
        notes.append(f"resized {s} -> {size} px")
    if not notes:
        return split, "unchanged"
    return DataSplit(train=_adapt_part(split.train, channels, size), test=_adapt_part(split.test, channels, size),
                     source=split.source, skipped=split.skipped), ", ".join(notes)


# ---------------------------------------------------------------------------------------------
# Setup and options


@dataclass
class EvalOptions:
    """Protocol options; ``None`` means the protocol's CPU-sized default (``DEFAULT_EPOCHS`` etc.)."""

    epochs: int | None = None  # every trained protocol (linear-aug, finetune, semi, supervised, transfer)
    batch_size: int = 256
    lr: float | None = None  # peak lr for batch 256 (linear-aug: 0.5; finetune/semi/supervised/transfer: 0.05)
    episodes: int = 600
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    metric: str = "euclidean"  # few-shot prototype distance: euclidean (squared, Snell et al.) or cosine
    transfer_data: str | None = None  # transfer target inside `all` (default: default_transfer_data)
    seed: int | None = None  # default: the run's seed

    def check(self) -> None:
        def bad(option: str, message: str) -> None:
            raise ProtocolError(f"--{option}: {message}")

        if self.epochs is not None and self.epochs < 1:
            bad("epochs", f"must be a positive integer, got {self.epochs}")
        if self.batch_size < 2:
            bad("batch-size", f"must be at least 2, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            bad("lr", f"must be positive, got {self.lr}")
        if self.episodes < 1:
            bad("episodes", f"must be positive, got {self.episodes}")
        if self.ways < 2:
            bad("ways", f"must be at least 2, got {self.ways}")
        if not self.shots or min(self.shots) < 1:
            bad("shots", f"must be positive integers, got {self.shots}")
        if self.queries < 1:
            bad("queries", f"must be positive, got {self.queries}")
        if self.metric not in FEWSHOT_METRICS:
            bad("metric", f"unknown metric {self.metric!r}; choose from {', '.join(FEWSHOT_METRICS)}")


@dataclass
class EvalSetup:
    """What a protocol needs from a run: built by ``selfsup.api.evaluate``."""

    encoder: nn.Module
    random_init: Callable[[], nn.Module]  # a fresh random-init encoder of the same architecture
    load: Callable[[str], DataSplit]  # data spec -> split (not yet adapted)
    run_data: str
    data: str  # the evaluation data spec
    channels: int
    size: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    holdout_classes: Sequence[int] = ()
    seed: int = 0
    device: torch.device | str = "cpu"
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class ProtocolResult:
    """Flat scores, the metric names to show, extra files to write beside the result, and info."""

    scores: dict[str, float]
    metrics: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)  # file-name suffix -> JSON-able content


# ---------------------------------------------------------------------------------------------
# The evaluator: caches data, features and trained classifiers across protocols


class Evaluator:
    """Runs protocols on one :class:`EvalSetup`; features and trained models are cached, so
    ``all`` extracts each encoder's features once and trains the from-scratch model once."""

    def __init__(self, setup: EvalSetup, options: EvalOptions | None = None) -> None:
        self.setup = setup
        self.options = options or EvalOptions()
        self.options.check()
        self.seed = setup.seed if self.options.seed is None else self.options.seed
        self.device = torch.device(setup.device)
        self._splits: dict[str, tuple[DataSplit, str]] = {}
        self._encoders: dict[str, nn.Module] = {"learned": setup.encoder}
        self._features: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._trained: dict[tuple, ClassifierResult] = {}
        self._all = False

    # -- building blocks

    def split(self, spec: str) -> tuple[DataSplit, str]:
        """The adapted split of ``spec`` and a note of the adaptation."""
        if spec not in self._splits:
            split = self.setup.load(spec)
            if split.train.labels is None or split.test.labels is None:
                raise ProtocolError(f"--data: {spec!r} has no labels; evaluation needs labelled data")
            self._splits[spec] = adapt_split(split, self.setup.channels, self.setup.size)
        return self._splits[spec]

    def encoder(self, name: str) -> nn.Module:
        if name == "random_init" and name not in self._encoders:
            self._encoders[name] = self.setup.random_init().to(self.device).eval()
        if name == "supervised" and name not in self._encoders:
            model = self._supervised_model()
            self._encoders[name] = model.encoder.to(self.device).eval()
        return self._encoders[name]

    def features(self, name: str, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen (train, test) features of encoder ``name`` (or ``raw_pixels``) on ``spec``."""
        key = (name, spec)
        if key not in self._features:
            split, _ = self.split(spec)
            pre = eval_preprocess(self.setup.size, self.setup.mean, self.setup.std)
            if name == "raw_pixels":
                self._features[key] = (pre(split.train.images).flatten(1), pre(split.test.images).flatten(1))
            else:
                self.setup.log(f"  features: {name.replace('_', ' ')} encoder on {spec}")
                enc = self.encoder(name)
                self._features[key] = tuple(
                    extract_features(enc, part.images, pre, device=self.device, progress=self.setup.progress)
                    for part in (split.train, split.test))
        return self._features[key]

    def settings(self, kind: str, epochs_key: str) -> ClassifierSettings:
        o = self.options
        return ClassifierSettings(
            epochs=o.epochs or DEFAULT_EPOCHS[epochs_key], batch_size=o.batch_size,
            lr=o.lr or DEFAULT_LR[kind], momentum=0.9, nesterov=True, weight_decay=0.0,
            crop_scale=tuple(self.setup.crop_scale), seed=self.seed)

    def trained(self, name: str, spec: str, settings: ClassifierSettings, freeze: bool,
                subset: torch.Tensor | None = None, subset_key: str = "all", keep_model: bool = False,
                ) -> ClassifierResult:
        """A (cached) linear-aug or fine-tune run of encoder ``name`` on ``spec``'s training split."""
        key = (name, spec, subset_key, freeze, settings)
        cached = self._trained.get(key)
        if cached is not None and (cached.model is not None or not keep_model):
            return cached
        split, _ = self.split(spec)
        train = split.train if subset is None else split.train.select(subset)
        what = "linear-aug" if freeze else "fine-tune"
        test_features = self.features(name, spec)[1] if freeze else None  # cached, eval mode: the same
        self.setup.log(f"  {what}: {name.replace('_', ' ')} encoder on {spec} ({len(train)} labelled images, "
                       f"{settings.epochs} epochs)")
        result = train_classifier(
            self.encoder(name), train.images, train.labels, split.test.images, split.test.labels,
            size=self.setup.size, mean=self.setup.mean, std=self.setup.std, settings=settings,
            freeze_encoder=freeze, num_classes=_num_classes(split), device=self.device, keep_model=keep_model,
            progress=self.setup.progress, desc=f"{what} ({name})", test_features=test_features)
        self._trained[key] = result
        return result

    def _supervised_model(self) -> nn.Module:
        result = self.trained("random_init", self.setup.data, self.settings("finetune", "supervised"),
                              freeze=False, keep_model=True)
        assert result.model is not None
        return result.model

    # -- protocols

    def run(self, protocol: str) -> ProtocolResult:
        protocol = check_protocol(protocol)
        if protocol == "all":
            raise ProtocolError("use run_all() for protocol 'all'")
        start = time.perf_counter()
        fraction = parse_semi(protocol)
        if fraction is not None:
            result = self._semi(fraction)
        else:
            result = {"knn": self._frozen, "linear": self._frozen, "linear-aug": self._linear_aug,
                      "finetune": self._finetune, "supervised": self._supervised, "fewshot": self._fewshot,
                      "transfer": self._transfer}[protocol](protocol)
        result.info["seconds"] = time.perf_counter() - start
        return result

    def run_all(self) -> dict[str, ProtocolResult]:
        """Every protocol of :data:`ALL_ORDER`; few-shot is cross-domain (on the transfer target)
        when the run held out no class."""
        out: dict[str, ProtocolResult] = {}
        self._all = True
        try:
            for i, protocol in enumerate(ALL_ORDER):
                self.setup.log(f"[{i + 1}/{len(ALL_ORDER)}] {protocol}")
                out[protocol] = self.run(protocol)
        finally:
            self._all = False
        return out

    def _frozen(self, protocol: str) -> ProtocolResult:
        spec = self.setup.data
        split, note = self.split(spec)
        scores: dict[str, float] = {}
        for prefix, name in (("", "learned"), ("random_init_", "random_init"), ("raw_pixels_", "raw_pixels")):
            train, test = self.features(name, spec)
            scores.update({prefix + k: v for k, v in frozen_scores(train, test, split, [protocol], self.seed).items()})
        metrics = [f"{protocol}_top1"] + ([f"{protocol}_top5"] if f"{protocol}_top5" in scores else [])
        return ProtocolResult(scores, metrics, {"adapted": note})

    def _classifier_scores(self, key: str, learned: ClassifierResult,
                           baseline: ClassifierResult, baseline_prefix: str = "random_init_") -> dict[str, float]:
        scores: dict[str, float] = {}
        for prefix, r in (("", learned), (baseline_prefix, baseline)):
            scores[f"{prefix}{key}_top1"] = r.top1
            if r.top5 is not None:
                scores[f"{prefix}{key}_top5"] = r.top5
        return scores

    @staticmethod
    def _metrics(key: str, scores: dict[str, float]) -> list[str]:
        return [m for m in (f"{key}_top1", f"{key}_top5") if m in scores]

    @staticmethod
    def _describe(result: ClassifierResult, settings: ClassifierSettings) -> dict[str, Any]:
        return {"epochs": settings.epochs, "steps": result.steps, "batch_size": settings.batch_size,
                "lr": settings.lr * min(settings.batch_size, result.train_images) / 256,
                "train_images": result.train_images, "train_top1_last_epoch": result.train_top1,
                "seconds": result.seconds}

    def _linear_aug(self, protocol: str) -> ProtocolResult:
        spec, s = self.setup.data, self.settings("linear-aug", "linear-aug")
        learned = self.trained("learned", spec, s, freeze=True)
        random = self.trained("random_init", spec, s, freeze=True)
        scores = self._classifier_scores("linear_aug", learned, random)
        return ProtocolResult(scores, self._metrics("linear_aug", scores), {
            "settings": _settings_info(s), "learned": self._describe(learned, s),
            "random_init": self._describe(random, s)})

    def _finetune(self, protocol: str) -> ProtocolResult:
        spec, s = self.setup.data, self.settings("finetune", "finetune")
        learned = self.trained("learned", spec, s, freeze=False)
        random = self.trained("random_init", spec, s, freeze=False, keep_model=True)  # = supervised
        scores = self._classifier_scores("finetune", learned, random)
        return ProtocolResult(scores, self._metrics("finetune", scores), {
            "settings": _settings_info(s), "learned": self._describe(learned, s),
            "random_init": self._describe(random, s),
            "note": "the random-init baseline is supervised training from scratch with the same schedule"})

    def _semi(self, fraction: float) -> ProtocolResult:
        protocol = f"semi:{100 * fraction:g}%"
        spec, s = self.setup.data, self.settings("finetune", protocol if protocol in DEFAULT_EPOCHS else "semi")
        split, _ = self.split(spec)
        index = balanced_subset(split.train.labels, fraction, self.seed)
        key = semi_slug(fraction)
        learned = self.trained("learned", spec, s, freeze=False, subset=index, subset_key=key)
        random = self.trained("random_init", spec, s, freeze=False, subset=index, subset_key=key)
        scores = self._classifier_scores(key, learned, random)
        labels = split.train.labels[index]
        counts = torch.bincount(labels, minlength=_num_classes(split)).tolist()
        files = {"indices": {"data": spec, "fraction": fraction, "seed": self.seed, "split": "train",
                             "train_images": len(split.train), "labelled_images": len(index),
                             "per_class": counts,
                             "note": "positions in the evaluation data's training split as loaded "
                                     "(the run's --subset applied); the test split is never used",
                             "indices": index.tolist(), "labels": labels.tolist()}}
        return ProtocolResult(scores, self._metrics(key, scores), {
            "fraction": fraction, "labelled_images": len(index), "per_class": counts,
            "settings": _settings_info(s), "learned": self._describe(learned, s),
            "random_init": self._describe(random, s),
            "note": "the random-init baseline is supervised training from scratch on the same labels"}, files)

    def _supervised(self, protocol: str) -> ProtocolResult:
        spec, s = self.setup.data, self.settings("finetune", "supervised")
        result = self.trained("random_init", spec, s, freeze=False, keep_model=True)
        split, _ = self.split(spec)
        train, test = self.features("supervised", spec)
        scores = {"supervised_top1": result.top1}
        if result.top5 is not None:
            scores["supervised_top5"] = result.top5
        scores.update({"supervised_" + k: v for k, v in
                       frozen_scores(train, test, split, ["knn", "linear"], self.seed).items()})
        metrics = [m for m in ("top1", "top5", "knn_top1", "linear_top1") if "supervised_" + m in scores]
        return ProtocolResult(scores, metrics, {"settings": _settings_info(s), "supervised": self._describe(result, s),
                                                "note": "backbone + linear head trained from random init with "
                                                        "all labels; kNN/linear: on its frozen features"})

    def _fewshot_target(self) -> tuple[str, list[int] | None, str]:
        """(data spec, classes or None for all, description) of the few-shot episodes."""
        spec = self.setup.data
        if spec.strip().lower() == self.setup.run_data.strip().lower():
            if self.setup.holdout_classes:
                return spec, sorted(int(c) for c in self.setup.holdout_classes), "classes held out from pretraining"
            if self._all:
                target = self.options.transfer_data or default_transfer_data(self.setup.run_data)
                return target, None, "cross-domain (the run held out no class)"
            raise ProtocolError(
                f"fewshot: the run pretrained on every class of {spec!r}; train with --holdout-classes "
                f"(e.g. 5-9) or evaluate cross-domain with --data {default_transfer_data(self.setup.run_data)}")
        return spec, None, "cross-domain"

    def _fewshot(self, protocol: str) -> ProtocolResult:
        o = self.options
        spec, classes, what = self._fewshot_target()
        split, note = self.split(spec)
        labels = torch.cat([split.train.labels, split.test.labels])
        mask = torch.ones_like(labels, dtype=torch.bool) if classes is None else torch.isin(labels, torch.tensor(classes))
        pool_classes = sorted(set(labels[mask].tolist()))
        if len(pool_classes) < o.ways:
            raise ProtocolError(f"--ways: {o.ways}-way episodes need {o.ways} few-shot classes; {spec!r} has "
                                f"{len(pool_classes)} ({pool_classes})")
        scores: dict[str, float] = {}
        for prefix, name in (("", "learned"), ("random_init_", "random_init"), ("raw_pixels_", "raw_pixels")):
            train, test = self.features(name, spec)
            feats = torch.cat([train, test])[mask]
            for shot in o.shots:
                r = fewshot_eval(feats, labels[mask], n_way=o.ways, k_shot=shot, n_query=o.queries,
                                 episodes=o.episodes, seed=self.seed, metric=o.metric)
                key = f"fewshot_{o.ways}way_{shot}shot"
                scores[prefix + key] = r.mean
                scores[prefix + key + "_ci95"] = r.ci95
        names = split.train.classes
        return ProtocolResult(scores, [f"fewshot_{o.ways}way_{shot}shot" for shot in o.shots], {
            "fewshot_data": spec, "fewshot_kind": what, "classes": pool_classes,
            "class_names": [names[c] if c < len(names) else str(c) for c in pool_classes],
            "pool_images": int(mask.sum()), "pool": "train + test images of these classes", "adapted": note,
            "ways": o.ways, "shots": list(o.shots), "queries": o.queries, "episodes": o.episodes,
            "metric": o.metric, "classifier": "Prototypical Networks (Snell et al. 2017) on frozen features",
            "ci95": "1.96 * std / sqrt(episodes), population std"})

    def _transfer(self, protocol: str) -> ProtocolResult:
        spec = self.setup.data
        if spec.strip().lower() == self.setup.run_data.strip().lower():
            spec = self.options.transfer_data or default_transfer_data(self.setup.run_data)
        elif self.options.transfer_data:
            spec = self.options.transfer_data
        split, note = self.split(spec)
        scores: dict[str, float] = {}
        for prefix, name in (("", "learned"), ("random_init_", "random_init"), ("raw_pixels_", "raw_pixels")):
            train, test = self.features(name, spec)
            scores.update({prefix + "transfer_" + k: v
                           for k, v in frozen_scores(train, test, split, ["knn", "linear"], self.seed).items()})
        s = self.settings("finetune", "transfer")
        learned = self.trained("learned", spec, s, freeze=False)
        random = self.trained("random_init", spec, s, freeze=False)
        scores.update(self._classifier_scores("transfer_finetune", learned, random))
        metrics = [m for m in ("transfer_knn_top1", "transfer_linear_top1", "transfer_linear_top5",
                               "transfer_finetune_top1", "transfer_finetune_top5") if m in scores]
        return ProtocolResult(scores, metrics, {
            "transfer_data": spec, "transfer_source": split.source, "adapted": note,
            "train_images": len(split.train), "test_images": len(split.test), "settings": _settings_info(s),
            "learned": self._describe(learned, s), "random_init": self._describe(random, s)})


def _num_classes(split: DataSplit) -> int:
    found = int(max(int(split.train.labels.max()), int(split.test.labels.max()))) + 1
    return max(len(split.train.classes), found)


def _settings_info(s: ClassifierSettings) -> dict[str, Any]:
    info = asdict(s)
    info["lr_base_256"] = info.pop("lr")
    info["optimizer"] = f"SGD, {'Nesterov ' if s.nesterov else ''}momentum {s.momentum}, cosine, no warm-up"
    info["augmentation"] = f"random resized crop {tuple(s.crop_scale)} + flip p={s.flip_p}"
    return info


# ---------------------------------------------------------------------------------------------
# Tables

PREFIXES: tuple[tuple[str, str], ...] = (("", "learned"), ("random_init_", "random init"),
                                         ("raw_pixels_", "raw pixels"), ("supervised_", "supervised"))


def _pct(value: Any, ci: Any = None) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * ci:.2f}" if isinstance(ci, (int, float)) else "")


def format_result(result: dict[str, Any]) -> str:
    """A plain-text table of one protocol's result: one row per metric, one column per encoder (in %)."""
    metrics = result.get("metrics", [])
    cols = [(p, name) for p, name in PREFIXES if any(p + m in result for m in metrics)]
    rows = [["metric (%)"] + [name for _, name in cols]]
    for m in metrics:
        rows.append([m] + [_pct(result.get(p + m), result.get(p + m + "_ci95")) for p, _ in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# Summary columns: (title, score key). The supervised row takes its fine-tune cell from
# ``supervised_top1`` and its semi cells from the random-init (= from-scratch) runs.
def columns(ways: int = 5, shots: Sequence[int] = (1, 5)) -> list[tuple[str, str]]:
    """The summary's columns ``(title, score key)`` for ``ways``-way episodes with ``shots``."""
    return [("kNN", "knn_top1"), ("linear", "linear_top1"), ("linear-aug", "linear_aug_top1"),
            ("fine-tune", "finetune_top1"), ("semi 1%", "semi_1pct_top1"), ("semi 10%", "semi_10pct_top1"),
            *((f"{ways}-way {k}-shot", f"fewshot_{ways}way_{k}shot") for k in shots),
            ("transfer linear", "transfer_linear_top1"), ("transfer fine-tune", "transfer_finetune_top1")]


COLUMNS: tuple[tuple[str, str], ...] = tuple(columns())


def summary_rows(scores: dict[str, Any], method: str = "learned", ways: int = 5,
                 shots: Sequence[int] = (1, 5)) -> list[tuple[str, dict[str, str]]]:
    """Rows ``(name, {column title: cell})`` of the papers-style table (top-1 %, few-shot mean ± CI)."""
    supervised = {"knn_top1": "supervised_knn_top1", "linear_top1": "supervised_linear_top1",
                  "finetune_top1": "supervised_top1", "semi_1pct_top1": "random_init_semi_1pct_top1",
                  "semi_10pct_top1": "random_init_semi_10pct_top1"}
    rows = []
    for name, lookup in (("supervised (from scratch)", lambda k: supervised.get(k)),
                         ("random init", lambda k: "random_init_" + k),
                         ("raw pixels", lambda k: "raw_pixels_" + k),
                         (method, lambda k: k)):
        cells = {}
        for title, key in columns(ways, shots):
            full = lookup(key)
            cells[title] = _pct(scores.get(full), scores.get(f"{full}_ci95")) if full else "-"
        rows.append((name, cells))
    return rows


def summary_markdown(scores: dict[str, Any], title: str, method: str = "learned",
                     notes: Sequence[str] = (), ways: int = 5, shots: Sequence[int] = (1, 5)) -> str:
    """The summary as a Markdown table (rows: supervised, random init, raw pixels, learned)."""
    rows = summary_rows(scores, method, ways, shots)
    titles = [t for t, _ in columns(ways, shots)]
    lines = [f"### {title}", "", "| " + " | ".join(["", *titles]) + " |", "|" + "---|" * (len(titles) + 1)]
    for name, cells in rows:
        lines.append("| " + " | ".join([name, *(cells[t] for t in titles)]) + " |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def summary_text(scores: dict[str, Any], method: str = "learned", ways: int = 5,
                 shots: Sequence[int] = (1, 5)) -> str:
    """The summary as an aligned plain-text table (for the terminal)."""
    rows = summary_rows(scores, method, ways, shots)
    titles = [t for t, _ in columns(ways, shots)]
    table = [["", *titles]] + [[name, *(c[t] for t in titles)] for name, c in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Results on disk


def data_slug(spec: str) -> str:
    """``folder:/a/b`` -> ``folder__a_b`` (file-name form of a data spec)."""
    return spec.strip().replace(":", "_").replace("/", "_")


def _protocol_data(protocol: str, result: ProtocolResult, data: str) -> str:
    return result.info.get("transfer_data") or result.info.get("fewshot_data") or data


def _record(protocol: str, result: ProtocolResult, evaluator: Evaluator, run: str) -> dict[str, Any]:
    data = _protocol_data(protocol, result, evaluator.setup.data)
    split, _ = evaluator.split(data)
    return {"protocol": protocol, "data": data, "data_source": split.source, "run": run,
            "train_images": len(split.train), "test_images": len(split.test), **result.scores,
            "metrics": result.metrics, "info": result.info, "seconds": result.info.get("seconds")}


def _write_json(path: Any, content: Any) -> None:
    import json
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    tmp.replace(path)


def evaluate_and_save(evaluator: Evaluator, protocol: str, out_dir: Any, run: str,
                      method: str = "learned") -> dict[str, Any]:
    """Run ``protocol`` (or ``all``), write ``out_dir/<protocol>-<data>.json`` (+ side files such as
    ``semi_1pct-<data>-indices.json``; ``all`` also ``summary-<data>.md`` / ``.json``), return the record."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = check_protocol(protocol)
    start = time.perf_counter()
    results = evaluator.run_all() if protocol == "all" else {protocol: evaluator.run(protocol)}
    records: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        record = _record(name, result, evaluator, run)
        stem = f"{protocol_slug(name)}-{data_slug(record['data'])}"
        for suffix, content in result.files.items():
            path = out_dir / f"{stem}-{suffix}.json"
            _write_json(path, content)
            record.setdefault("files", []).append(str(path))
        _write_json(out_dir / f"{stem}.json", record)
        records[name] = record
    if protocol != "all":
        return records[protocol]
    data = evaluator.setup.data
    split, _ = evaluator.split(data)
    scores: dict[str, Any] = {}
    for r in results.values():
        scores.update(r.scores)
    few = results["fewshot"].info
    transfer = results["transfer"].info
    o = evaluator.options
    notes = [
        f"Top-1 accuracy (%) on the {data} test split ({len(split.test)} images); labelled training pool: "
        f"{len(split.train)} images. Few-shot: mean ± 95% CI over {o.episodes} episodes.",
        "supervised (from scratch): the same backbone trained with labels only; its kNN/linear cells are "
        "probes of its frozen features, its semi cells the random-init runs (fine-tuning a random-init "
        "encoder is supervised training from scratch, so the random-init fine-tune/semi cells are the same runs).",
        "Epochs (CPU-sized; the papers': linear-aug 80-100, semi 60 (1%) / 30 (10%)): " + ", ".join(
            f"{p} {r.info['settings']['epochs']}" for p, r in results.items() if "settings" in r.info)
        + "; SGD Nesterov 0.9, cosine, random resized crop + flip, no weight decay.",
        f"Few-shot: {few['ways']}-way, {few['queries']} queries per class, Prototypical Networks "
        f"({few['metric']} distance) on frozen features; classes {few['class_names']} of {few['fewshot_data']} "
        f"({few['fewshot_kind']}).",
        f"Transfer: {transfer['transfer_data']} ({transfer['adapted']}), linear probe on frozen features and "
        f"fine-tuning for {transfer['settings']['epochs']} epochs.",
    ]
    title = f"{method} on {evaluator.setup.run_data}, evaluated on {data}"
    markdown = summary_markdown(scores, title, method, notes, o.ways, o.shots)
    seconds = time.perf_counter() - start
    summary = {"protocol": "all", "data": data, "data_source": split.source, "run": run,
               "train_images": len(split.train), "test_images": len(split.test), **scores,
               "table": {name: cells for name, cells in summary_rows(scores, method, o.ways, o.shots)},
               "protocols": {name: {"seconds": r["seconds"], "data": r["data"], "info": r["info"]}
                             for name, r in records.items()},
               "notes": notes, "seconds": seconds}
    stem = f"summary-{data_slug(data)}"
    (out_dir / f"{stem}.md").write_text(markdown)
    _write_json(out_dir / f"{stem}.json", summary)
    summary["files"] = [str(out_dir / f"{stem}.md"), str(out_dir / f"{stem}.json")]
    summary["text"] = summary_text(scores, method, o.ways, o.shots)
    return summary
