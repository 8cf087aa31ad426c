"""BoWNet: Learning Representations by Predicting Bags of Visual Words (Gidaris et al., CVPR 2020).

    teacher  F^ (a trained, frozen network: the paper's RotNet), its feature map F^(x) at one stage
    vocabulary V = k-means (K words) over the local features F^(x)(u) of training images
    codes     q_k(u) = 1 if v_k is the nearest word to F^(x)(u) else 0            (hard assignment)
    target    y(x) = L1-normalised histogram of the codes over positions u   (of the unperturbed image)
    student   p(x~) = softmax(gamma * cos(w_k, F(x~)))   a cosine classifier with a learned scale gamma
              on the globally pooled features of a perturbed view x~ (crop, colour jitter, grayscale, flip)
    loss = - sum_k y_k(x) log p_k(x~)                                   (cross-entropy to the bag)

The teacher is any selfsup run folder (``--teacher-run RUN_DIR``, e.g. a RotNet run; loaded with
``selfsup.runs.load_run``, its backbone in eval mode, ``teacher_stage`` picks the feature map), or
``random``: a frozen copy of the student's random initialisation (a baseline, and what the tests
use). The teacher sees the student's normalised inputs: train it on the same data. A loaded
teacher is not part of this method's state (only its vocabulary is); it is read from its folder
when training starts (the first ``on_epoch_start``), so a trained BoWNet run loads and evaluates
without it.

The vocabulary is built at the first training step, from the teacher's local features of that
step's global batch (gathered from every process, so all processes run the same seeded k-means):
Lloyd's k-means with Euclidean distances, ``kmeans_iterations`` iterations from a k-means++
seeding. It is a buffer, saved in checkpoints (a resumed run keeps it).

Defaults: K = 2048 words (the paper's CIFAR-100 vocabulary; ImageNet uses more), the teacher's
conv4 (``teacher_stage`` 3 of a ResNet), the histogram (``bow_pool`` avg; ``max`` gives the
binary-presence bag), gamma learned from 10, SGD lr 0.1 x batch/256 wd 5e-4 (the paper trains the
student with SGD; its CutMix perturbation is not implemented). Small images: see
``SMALL_IMAGE_RECIPE`` (BENCHMARKS.md): fewer words for a 28-px dataset, as measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import gather_no_grad
from selfsup.data.views import ViewSpec
from selfsup.errors import ConfigError
from selfsup.methods.base import Method, StepOutput, load_run_encoder
from selfsup.methods.losses import bag_of_words, bow_cross_entropy, hard_assignment, squared_distances
from selfsup.methods.momentum import frozen_copy
from selfsup.models import ResNetBackbone

RANDOM_TEACHER = "random"


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator,
           chunk: int = 8192) -> torch.Tensor:
    """Lloyd's k-means with squared Euclidean distances on the rows of ``x [N, C]``, from a k-means++
    seeding (Arthur & Vassilvitskii 2007; scikit-learn's default, which the BoWNet paper's k-means is):
    each iteration assigns every row to its nearest centroid and moves each non-empty cluster's centroid
    to the mean of its rows (empty ones keep theirs). Returns the centroids ``[k, C]``."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"bownet: {k} visual words need at least {k} local features, the first batch gives {n}; "
                         "use fewer --num-words (or a larger batch)")
    x = x.float()
    norms = x.pow(2).sum(1)

    def distances(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        return (norms[rows].unsqueeze(1) - 2 * x[rows] @ centroids.T + centroids.pow(2).sum(1)).clamp_min(0)

    first = int(torch.randint(n, (), generator=generator))
    chosen = [first]
    nearest = (norms - 2 * x @ x[first] + norms[first]).clamp_min(0)
    for _ in range(k - 1):  # the next centre with probability proportional to the squared distance
        cumulative = nearest.double().cumsum(0)
        u = torch.rand((), generator=generator, dtype=torch.float64).to(x.device) * cumulative[-1]
        i = int(torch.searchsorted(cumulative, u.unsqueeze(0)).clamp(max=n - 1))
        chosen.append(i)
        nearest = torch.minimum(nearest, (norms - 2 * x @ x[i] + norms[i]).clamp_min(0))
    centroids = x[torch.tensor(chosen, device=x.device)].clone()
    assignments = torch.empty(n, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(start + chunk, n), device=x.device)
            assignments[rows] = distances(rows, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        counts = torch.bincount(assignments, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centroids


class CosineClassifier(nn.Module):
    """``gamma * <w_k / |w_k|, f / |f|>`` for every class k, with a learned scale ``gamma``."""

    def __init__(self, in_dim: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, in_dim) * (2.0 / in_dim) ** 0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T


@dataclass
class BoWNetConfig:
    """BoWNet defaults (Gidaris et al. 2020)."""

    teacher_run: str = RANDOM_TEACHER  # a selfsup run folder, or "random" (a frozen random-init copy)
    teacher_stage: int = 3  # the teacher ResNet's stage whose feature map is quantised (conv4)
    num_words: int = 2048
    kmeans_iterations: int = 20
    bow_pool: str = "avg"  # "avg": the histogram of visual words; "max": which words occur
    scale_init: float = 10.0  # the cosine classifier's learned scale, at initialisation

    def __post_init__(self) -> None:
        if not self.teacher_run:
            raise ValueError("--teacher-run: give a selfsup run folder or 'random'")
        if not 1 <= self.teacher_stage <= 4:
            raise ValueError(f"--teacher-stage: must be 1-4, got {self.teacher_stage}")
        if self.num_words < 2:
            raise ValueError(f"--num-words: must be >= 2, got {self.num_words}")
        if self.bow_pool not in ("avg", "max"):
            raise ValueError(f"--bow-pool: choose avg or max, got {self.bow_pool!r}")
        if self.kmeans_iterations < 1:
            raise ValueError(f"--kmeans-iterations: must be >= 1, got {self.kmeans_iterations}")


def teacher_view(size: int) -> ViewSpec:
    """The unperturbed image: the whole image at the training size, no colour change, no flip."""
    return ViewSpec(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                    grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def load_teacher(run_dir: str, in_channels: int) -> nn.Module:
    """The backbone of a selfsup run folder, frozen, in eval mode; checked to be a ResNet of ``in_channels``."""

    try:
        with torch.random.fork_rng(devices=[]):  # building a run seeds the global generator
            encoder = load_run_encoder(run_dir)
    except ConfigError as e:
        raise ConfigError(f"--teacher-run: {e}") from e
    if not isinstance(encoder, ResNetBackbone):
        raise ConfigError(f"--teacher-run: {run_dir} has a {type(encoder).__name__}; BoWNet reads the feature "
                          "maps of a ResNet backbone")
    if encoder.conv1.in_channels != in_channels:
        raise ConfigError(f"--teacher-run: {run_dir} takes {encoder.conv1.in_channels}-channel images, this run "
                          f"{in_channels}")
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


class BoWNet(Method):
    name = "bownet"
    Config = BoWNetConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0}
    SMALL_IMAGE_RECIPE = {"num_words": 64}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.4, "weight_decay": 5e-4, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: BoWNetConfig) -> None:
        super().__init__(encoder, config)
        c = config
        self.head = CosineClassifier(self.feature_dim, c.num_words, c.scale_init)
        if c.teacher_run == RANDOM_TEACHER:
            self.random_teacher = frozen_copy(encoder)
        self.__dict__["_loaded_teacher"] = None  # not a submodule: neither trained, saved nor moved
        teacher_dim = self._teacher_dims(encoder)[c.teacher_stage - 1] if c.teacher_run == RANDOM_TEACHER else 1
        self.register_buffer("vocabulary", torch.zeros(c.num_words, teacher_dim))
        self.register_buffer("vocabulary_built", torch.zeros((), dtype=torch.bool))
        self.register_buffer("kmeans_seed", torch.randint(2**31 - 1, ()))

    @staticmethod
    def _teacher_dims(encoder: nn.Module) -> list[int]:
        if not hasattr(encoder, "stage_outputs"):
            raise ValueError(f"bownet: the teacher must be a ResNet backbone, not {type(encoder).__name__}")
        return encoder.stage_dims

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """The unperturbed image (teacher) and a perturbed view (student): crop, colour jitter, grayscale, flip."""
        student = ViewSpec(size=size, crop_scale=crop_scale, jitter_p=0.8, brightness=0.4, contrast=0.4,
                           saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
        return [teacher_view(size), student]

    # -- the teacher --------------------------------------------------------------------------------

    def teacher(self) -> nn.Module:
        if self.config.teacher_run == RANDOM_TEACHER:
            return self.random_teacher.eval()  # the loop's method.train() must not reach it
        if self._loaded_teacher is None:
            run_dir = os.path.expanduser(self.config.teacher_run)
            self.__dict__["_loaded_teacher"] = load_teacher(run_dir, self.encoder.conv1.in_channels)
        return self._loaded_teacher

    def on_epoch_start(self, epoch: int, steps_per_epoch: int) -> None:
        self.teacher()  # a missing or unusable teacher folder stops the run before its first step

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's feature map ``[B, C, H, W]`` at ``teacher_stage``."""
        teacher = self.teacher().to(device=x.device, dtype=x.dtype)
        return teacher.stage_outputs(x, last=self.config.teacher_stage)[-1]

    @torch.no_grad()
    def build_vocabulary(self, features: torch.Tensor) -> None:
        """k-means over the local features of the global batch (every process gathers the same rows)."""
        local = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        words = kmeans(gather_no_grad(local), self.config.num_words, self.config.kmeans_iterations,
                       torch.Generator().manual_seed(int(self.kmeans_seed)))
        if self.vocabulary.shape != words.shape:  # a loaded teacher's width is known only now
            self.vocabulary = words.new_zeros(words.shape).to(self.vocabulary.device)
        self.vocabulary.copy_(words)
        self.vocabulary_built.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        stored = state_dict.get(prefix + "vocabulary")
        if stored is not None and stored.shape != self.vocabulary.shape:
            self.vocabulary = self.vocabulary.new_zeros(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The bags of visual words ``[B, K]`` of the unperturbed images ``x``."""
        features = self.teacher_features(x)
        if not bool(self.vocabulary_built):
            self.build_vocabulary(features)
        codes = hard_assignment(squared_distances(features, self.vocabulary))
        return bag_of_words(codes, self.config.bow_pool)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        targets = self.targets(views[0])
        features = self.encoder(views[1])
        logits = self.head(features)
        loss = bow_cross_entropy(logits, targets)
        return StepOutput(loss=loss, embeddings=(F.softmax(logits.detach(), dim=1), targets),
                          features=features.detach(), metrics={"bow_loss": loss.detach()})


__all__ = ["BoWNet", "BoWNetConfig", "CosineClassifier", "kmeans"]
