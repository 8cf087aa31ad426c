"""The evaluator: runs the protocols of :mod:`selfsup.evaluation.protocols` on one encoder and its
baselines, caching adapted data, frozen features and trained classifiers across protocols.

Every protocol scores the learned encoder beside a random-init encoder of the same architecture
(and raw pixels where features are frozen); the from-scratch model that is the random-init
baseline of ``finetune`` and ``semi`` and the ``supervised`` row is trained once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from selfsup.data.dataset import DataSplit
from selfsup.evaluation.adapt import adapt_split
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.fewshot import fewshot_eval
from selfsup.evaluation.finetune import ClassifierResult, ClassifierSettings, train_classifier
from selfsup.evaluation.frozen import eval_preprocess, frozen_scores
from selfsup.evaluation.options import (
    ALL_ORDER,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    EvalOptions,
    ProtocolError,
    check_protocol,
    default_transfer_data,
)
from selfsup.evaluation.semi import balanced_subset, parse_semi, semi_slug

__all__ = ["EvalSetup", "ProtocolResult", "Evaluator", "FROZEN_ENCODERS"]

# (score-key prefix, encoder name) of every frozen-feature comparison: learned and its floors (the
# default-init random encoder only when the setup has one).
FROZEN_ENCODERS: tuple[tuple[str, str], ...] = (("", "learned"), ("random_init_", "random_init"),
                                                ("random_default_init_", "random_default_init"),
                                                ("raw_pixels_", "raw_pixels"))

Features = tuple[torch.Tensor, torch.Tensor]  # frozen (train, test) features


@dataclass
class EvalSetup:
    """What a protocol needs from a run: built from a run folder by :mod:`selfsup.runs`."""

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
    # the same architecture at the framework's default init, when the run's init differs
    default_init: Callable[[], nn.Module] | None = None


@dataclass
class ProtocolResult:
    """Flat scores, the metric names to show, extra files to write beside the result, and info."""

    scores: dict[str, float]
    metrics: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)  # file-name suffix -> JSON-able content


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
        self._features: dict[tuple[str, str], Features] = {}
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
        """``learned``, ``random_init`` / ``random_default_init`` (built on first use) or ``supervised``
        (trained on first use)."""
        if name == "random_init" and name not in self._encoders:
            self._encoders[name] = self.setup.random_init().to(self.device).eval()
        if name == "random_default_init" and name not in self._encoders:
            self._encoders[name] = self.setup.default_init().to(self.device).eval()
        if name == "supervised" and name not in self._encoders:
            model = self._supervised_model()
            self._encoders[name] = model.encoder.to(self.device).eval()
        return self._encoders[name]

    def features(self, name: str, spec: str) -> Features:
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

    def frozen_baselines(self, spec: str, score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
                         ) -> dict[str, float]:
        """``score(train_features, test_features)`` of each of :data:`FROZEN_ENCODERS` on ``spec``,
        keys prefixed with the encoder's prefix (learned first, then random init, raw pixels)."""
        scores: dict[str, float] = {}
        for prefix, name in FROZEN_ENCODERS:
            if name == "random_default_init" and self.setup.default_init is None:
                continue
            train, test = self.features(name, spec)
            scores.update({prefix + k: v for k, v in score(train, test).items()})
        return scores

    def settings(self, kind: str, epochs_key: str) -> ClassifierSettings:
        """SGD Nesterov 0.9, no weight decay; epochs and lr from the options or the defaults."""
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
        """One protocol (not ``all``), its run time in ``info["seconds"]``."""
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
        scores = self.frozen_baselines(spec, lambda train, test: frozen_scores(train, test, split, [protocol],
                                                                               self.seed))
        metrics = [f"{protocol}_top1"] + ([f"{protocol}_top5"] if f"{protocol}_top5" in scores else [])
        return ProtocolResult(scores, metrics, {"adapted": note})

    @staticmethod
    def _classifier_scores(key: str, learned: ClassifierResult, baseline: ClassifierResult) -> dict[str, float]:
        scores: dict[str, float] = {}
        for prefix, r in (("", learned), ("random_init_", baseline)):
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

    def _fewshot_pool(self, spec: str, split: DataSplit, classes: list[int] | None,
                      ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(labels of train + test, mask of the pool's images, the pool's classes), checked against ``ways``."""
        labels = torch.cat([split.train.labels, split.test.labels])
        if classes is None:
            mask = torch.ones_like(labels, dtype=torch.bool)
        else:
            mask = torch.isin(labels, torch.tensor(classes))
        pool_classes = sorted(set(labels[mask].tolist()))
        ways = self.options.ways
        if len(pool_classes) < ways:
            raise ProtocolError(f"--ways: {ways}-way episodes need {ways} few-shot classes; {spec!r} has "
                                f"{len(pool_classes)} ({pool_classes})")
        return labels, mask, pool_classes

    def _episode_scores(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """``fewshot_<W>way_<K>shot`` (mean accuracy) and its ``_ci95`` for each of the options' shots."""
        o = self.options
        scores: dict[str, float] = {}
        for shot in o.shots:
            r = fewshot_eval(features, labels, n_way=o.ways, k_shot=shot, n_query=o.queries,
                             episodes=o.episodes, seed=self.seed, metric=o.metric)
            key = f"fewshot_{o.ways}way_{shot}shot"
            scores[key] = r.mean
            scores[key + "_ci95"] = r.ci95
        return scores

    def _fewshot(self, protocol: str) -> ProtocolResult:
        o = self.options
        spec, classes, what = self._fewshot_target()
        split, note = self.split(spec)
        labels, mask, pool_classes = self._fewshot_pool(spec, split, classes)
        scores = self.frozen_baselines(
            spec, lambda train, test: self._episode_scores(torch.cat([train, test])[mask], labels[mask]))
        names = split.train.classes
        return ProtocolResult(scores, [f"fewshot_{o.ways}way_{shot}shot" for shot in o.shots], {
            "fewshot_data": spec, "fewshot_kind": what, "classes": pool_classes,
            "class_names": [names[c] if c < len(names) else str(c) for c in pool_classes],
            "pool_images": int(mask.sum()), "pool": "train + test images of these classes", "adapted": note,
            "ways": o.ways, "shots": list(o.shots), "queries": o.queries, "episodes": o.episodes,
            "metric": o.metric, "classifier": "Prototypical Networks (Snell et al. 2017) on frozen features",
            "ci95": "1.96 * std / sqrt(episodes), population std"})

    def _transfer_target(self) -> str:
        """``--data`` when it is not the run's, else the transfer data (option or default)."""
        spec = self.setup.data
        if spec.strip().lower() == self.setup.run_data.strip().lower():
            return self.options.transfer_data or default_transfer_data(self.setup.run_data)
        return self.options.transfer_data or spec

    def _transfer(self, protocol: str) -> ProtocolResult:
        spec = self._transfer_target()
        split, note = self.split(spec)
        scores = self.frozen_baselines(spec, lambda train, test: {
            "transfer_" + k: v for k, v in frozen_scores(train, test, split, ["knn", "linear"], self.seed).items()})
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
