"""OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised Learning (Gidaris et al., CVPR 2021).

    teacher   F_T = momentum (EMA) copy of the student F; its feature maps at the last ``bow_levels``
              stages of the unperturbed image x (border of ``teacher_border`` positions cut off)
    vocabulary V_l, one per level: a FIFO queue of K local features; after each step every image of the
              global batch adds one: its map averaged over 3x3 windows, at one random position
    codes     q_k(u) = softmax_k(-||f(u) - v_k||^2 inv_delta / mu),  mu = running mean (decay 0.99) of the
              distance of each position to its nearest word
    target    y_l(x) = max_u q(u), L1-normalised                                     (the bag of words)
    student   logits_l = kappa * F(x~) . w_l,k   with  w_l,k = G_l(v_l,k): each word turned into the
              weights of its own class by a generator MLP (L2-norm, Linear, BN, ReLU, Linear, L2-norm)
    loss = sum over crop groups (the 2 crops, the small patches) of mean over levels of
           KL(y_l(x) || softmax(logits_l(x~))), x~ every crop of the group
    after each step: F_T <- m F_T + (1 - m) F, m cosine from ``teacher_momentum`` to 1

Targets use the vocabulary before this step's features are queued (as the official code), and the
generator sees a copy of it, so no gradient reaches the vocabulary; the teacher takes no gradient
and runs in training mode (batch statistics, synchronised over processes). Every process queues
the features of every image (gathered in rank order) at positions drawn for the global batch from a
seeded step counter, and ``mu`` is averaged over processes: one process and N hold the same
vocabularies. The generator's BatchNorm normalises over the K words of the vocabulary, which every
process holds whole, so it is never synchronised (a plain ``F.batch_norm`` module).

Defaults (official ``ResNet50_OBoW_full.yaml``): K = 8192 words per level, conv4 + conv5 levels,
inv_delta 15, kappa 8, teacher momentum 0.99 with the cosine schedule, max-pooled bags; views: the
unperturbed image (full, flipped at random), 2 crops of 160 px at scale (0.08, 0.6) with colour
jitter, grayscale and blur (p 0.5), and 5 patches of 96 px (here crops of about the official
patches' area, 0.084-0.14 of the image); SGD lr 0.03, momentum 0.9, weight decay 1e-4, 10 warm-up
epochs, cosine. The vocabulary starts as random non-negative vectors (the official init).

Small images (28-32 px; ``SMALL_IMAGE_RECIPE``, measured in BENCHMARKS.md): the official ResNet-18
values inv_delta 10 and kappa 5, fewer words for fewer images, SGD at a higher lr with 1 warm-up epoch;
the feature maps are small (at 28 px the last stage is 4 x 4: 2 x 2 after the border), so the 3x3
averaging window is clipped to the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import all_reduce_sum, world_size
from selfsup.data.views import ViewSpec, local_crop_size
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.cpc import GlobalBatchRandom
from selfsup.methods.losses import bag_of_words, bow_kl_loss, soft_assignment, squared_distances
from selfsup.methods.momentum import cosine_tau, ema_update, frozen_copy
from selfsup.methods.multicrop import encode_crops
from selfsup.methods.queue import FeatureQueue


class VocabularyBatchNorm(nn.Module):
    """BatchNorm1d over the rows of a vocabulary, written with ``F.batch_norm`` so that DDP's SyncBatchNorm
    conversion leaves it alone: every process normalises the same rows and gets the same statistics."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class WeightGenerator(nn.Module):
    """A visual word ``[K, C]`` -> the weight vector of its class ``[K, D]`` (unit norm)."""

    def __init__(self, word_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(word_dim, hidden_dim, bias=False), VocabularyBatchNorm(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(F.normalize(words, dim=1)), dim=1)


@dataclass
class OBoWConfig:
    """Official defaults (Gidaris et al. 2021; ``config/ImageNetFull/ResNet50_OBoW_full.yaml``)."""

    num_words: int = 8192  # per level
    bow_levels: int = 2  # the last stages of the ResNet (2: conv4 and conv5)
    inv_delta: float = 15.0
    kappa: float = 8.0
    teacher_momentum: float = 0.99
    teacher_momentum_schedule: bool = True  # cosine increase of the momentum to 1
    bow_pool: str = "max"
    min_distance_decay: float = 0.99  # running mean of the distance to the nearest word
    teacher_border: int = 1  # positions cut off each side of the teacher's maps
    queue_pool: int = 3  # local averaging window of the queued features (1: none)
    predictor_hidden_multiplier: int = 2  # generator hidden width = this x the feature dim
    num_crops: int = 2
    crop_size_fraction: float = 160 / 224
    crop_scale_low: float = 0.08
    crop_scale_high: float = 0.6
    num_patches: int = 5
    patch_size_fraction: float = 96 / 224
    patch_scale_low: float = 0.6 * (96 / 256) ** 2  # a 96-px patch of a (0.6-1)-area crop resized to 256 px
    patch_scale_high: float = (96 / 256) ** 2

    def __post_init__(self) -> None:
        if not 1 <= self.bow_levels <= 4:
            raise ValueError(f"--bow-levels: must be 1-4, got {self.bow_levels}")
        if self.num_words < 2:
            raise ValueError(f"--num-words: must be >= 2, got {self.num_words}")
        if self.bow_pool not in ("avg", "max"):
            raise ValueError(f"--bow-pool: choose avg or max, got {self.bow_pool!r}")
        if self.num_crops < 1 or self.num_patches < 0:
            raise ValueError("--num-crops must be >= 1 and --num-patches >= 0")
        if not 0 <= self.teacher_momentum <= 1:
            raise ValueError(f"--teacher-momentum: must be in [0, 1], got {self.teacher_momentum}")
        for low, high, name in ((self.crop_scale_low, self.crop_scale_high, "crop"),
                                (self.patch_scale_low, self.patch_scale_high, "patch")):
            if not 0 < low <= high <= 1:
                raise ValueError(f"--{name}-scale-low/high: need 0 < low <= high <= 1, got {low}, {high}")


def crop_border(features: torch.Tensor, border: int) -> torch.Tensor:
    """``features`` without ``border`` positions on each side (fewer when the map is too small to keep one)."""
    b = min(border, (min(features.shape[-2:]) - 1) // 2)
    return features[:, :, b:features.shape[-2] - b, b:features.shape[-1] - b] if b > 0 else features


def queue_candidates(features: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H' W', C]``: the map averaged over ``window`` x ``window`` windows (stride 1, no padding;
    the window is clipped to the map), one row per window position."""
    k = min(window, *features.shape[-2:])
    pooled = F.avg_pool2d(features, k, stride=1) if k > 1 else features
    return pooled.flatten(2).transpose(1, 2)


class OBoW(Method):
    name = "obow"
    Config = OBoWConfig
    OPTIMIZER = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 10}
    SMALL_IMAGE_RECIPE = {"num_words": 1024, "inv_delta": 10.0, "kappa": 5.0}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 5e-4, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: OBoWConfig) -> None:
        super().__init__(encoder, config)
        c = config
        if not hasattr(encoder, "stage_dims"):
            raise ValueError(f"obow reads the feature maps of a ResNet backbone, not {type(encoder).__name__}")
        self.level_dims = encoder.stage_dims[4 - c.bow_levels:]
        self.teacher = frozen_copy(encoder)
        hidden = c.predictor_hidden_multiplier * self.feature_dim
        self.generators = nn.ModuleList(WeightGenerator(dim, hidden, self.feature_dim) for dim in self.level_dims)
        self.vocabularies = nn.ModuleList(FeatureQueue(c.num_words, dim) for dim in self.level_dims)
        for queue in self.vocabularies:  # the official initial vocabulary: random, non-negative
            queue.items.copy_(torch.randn_like(queue.items).clamp_(min=0))
        self.register_buffer("kappa", torch.tensor(float(c.kappa)))
        self.register_buffer("mean_min_distance", torch.full((c.bow_levels,), 0.5))
        self.queue_random = GlobalBatchRandom()

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """The unperturbed image (teacher), ``num_crops`` crops and ``num_patches`` small patches (student)."""
        c = self.config
        original = ViewSpec(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.5, jitter_p=0.0,
                            grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        crop = ViewSpec(size=local_crop_size(size, c.crop_size_fraction), crop_scale=(c.crop_scale_low,
                        c.crop_scale_high), jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                        grayscale_p=0.2, blur_p=0.5, solarize_p=0.0)
        patch = ViewSpec(size=local_crop_size(size, c.patch_size_fraction), crop_scale=(c.patch_scale_low,
                         c.patch_scale_high), jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                         grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
        return [original] + [crop] * c.num_crops + [patch] * c.num_patches

    # -- teacher side: vocabularies and bags of words -----------------------------------------------

    @torch.no_grad()
    def teacher_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's feature maps at the BoW levels, border cut off."""
        maps = self.teacher.stage_outputs(x)[4 - self.config.bow_levels:]
        return [crop_border(m, self.config.teacher_border) for m in maps]

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bags of words ``[B, K]`` of each level for the unperturbed images ``x``; in training mode also
        updates the running mean distance and queues one local feature per image into each vocabulary."""
        c, b = self.config, x.shape[0]
        generator = self.queue_random.generator() if self.training else None
        bags = []
        for level, (features, queue) in enumerate(zip(self.teacher_maps(x), self.vocabularies)):
            distances = squared_distances(features, queue.items)
            if self.training:
                mean_min = all_reduce_sum(distances.amin(dim=1).mean()) / world_size()
                self.mean_min_distance[level].mul_(c.min_distance_decay).add_((1 - c.min_distance_decay) * mean_min)
                candidates = queue_candidates(features, c.queue_pool)  # [b, positions, C]
                chosen = torch.randint(candidates.shape[1], (b * world_size(),), generator=generator)
                chosen = chosen[GlobalBatchRandom.local_rows(b)].to(candidates.device)
                queue.push(candidates[torch.arange(b, device=candidates.device), chosen])
            mu = self.mean_min_distance[level].to(distances.dtype).clamp_min(1e-12)  # 0 if every feature is a word
            codes = soft_assignment(distances, c.inv_delta, mu)
            bags.append(bag_of_words(codes, c.bow_pool))
        return bags

    # -- student side --------------------------------------------------------------------------------

    def predict(self, features: torch.Tensor, words: list[torch.Tensor]) -> list[torch.Tensor]:
        """BoW logits ``[N, K]`` of each level: kappa x the features against the generated class weights."""
        return [self.kappa * features @ generator(v).T for generator, v in zip(self.generators, words)]

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        c = self.config
        b = views[0].shape[0]
        words = [queue.items.detach().clone() for queue in self.vocabularies]  # before this step's features
        groups = [views[1:1 + c.num_crops], views[1 + c.num_crops:]]
        features = [encode_crops(self.encoder, g) for g in groups if g]
        targets = self.targets(views[0])
        loss, metrics = views[0].new_zeros(()), {}
        for name, f in zip(("crops", "patches"), features):
            logits = self.predict(f, words)
            group = torch.stack([bow_kl_loss(lg, t.repeat(lg.shape[0] // b, 1)) for lg, t in zip(logits, targets)])
            metrics[f"bow_loss_{name}"] = group.mean().detach()
            loss = loss + group.mean()
        for level, bag in enumerate(targets):  # perplexity of the targets, per image (the official monitor)
            metrics[f"bow_perplexity_{level}"] = torch.exp(-(bag * bag.clamp_min(1e-12).log()).sum(1)).mean()
        crops = features[0]
        return StepOutput(loss=loss, embeddings=(crops[:b].detach(), crops[b:2 * b].detach()) if c.num_crops > 1
                          else None, features=crops[:b].detach(), metrics=metrics)

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        if not self.config.teacher_momentum_schedule:
            return self.config.teacher_momentum
        return cosine_tau(step, total_steps, self.config.teacher_momentum)

    def on_step_end(self, step: int, total_steps: int) -> dict[str, float]:
        m = self.teacher_momentum(step, total_steps)
        ema_update(self.teacher, self.encoder, m)
        return {"teacher_momentum": m}


__all__ = ["OBoW", "OBoWConfig", "VocabularyBatchNorm", "WeightGenerator", "crop_border", "queue_candidates"]
