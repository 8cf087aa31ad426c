"""DeepCluster-v2 (Caron et al., NeurIPS 2020, the SwAV paper's Sec. 4 and Appendix B).

    z_v = g(f(x_v)) / |g(f(x_v))|                                     every crop (2 global + V local)
    at the start of each epoch, for each of H clusterings h:
        spherical k-means (K centroids, 10 iterations) on the memory bank of global-crop embeddings
        -> assignment a_h(n) of every dataset row n, prototypes C_h <- the centroids
    loss = 1/H sum_h mean over crops v of cross-entropy(C_h^T z_v / t, a_h(n))      (t = 0.1)
    after each step: the bank rows of this batch <- its global-crop embeddings (crop h mod 2 for head h)

The method learns which dataset rows a batch holds from ``on_batch_start(indices)``. The bank holds
one row per dataset image and per global crop and grows to the largest index seen; with several
processes every process gathers the embeddings and indices of all of them, so each holds the whole
bank and runs the same seeded k-means (no all-reduce needed). The prototypes are the centroids and
are never trained (the official scripts freeze them for 300,000 iterations, i.e. for the whole run).

**Epoch 0 fills the bank.** The bank is empty before training, so epoch 0 is the official code's
``init_memory`` pass: the global crops are embedded and stored, and the step's loss is zero with no
gradient reaching the optimiser (every parameter's gradient is dropped before the optimiser step, so
no weight, momentum or weight-decay update happens). The learning-rate schedule still counts epoch
0; clustering starts at epoch 1, so a run needs at least 2 epochs to learn anything. Rows that were
never embedded (the last, incomplete batch of epoch 0) have no assignment and are ignored by the
loss until they are seen.

Defaults (official ``deepclusterv2_800ep_pretrain.sh``): projector 2048 -> 128 with BN, 3 clusterings
of 3000 prototypes, temperature 0.1, multi-crop 2 x 224 (0.14, 1) + 6 x 96 (0.05, 0.14), LARS, lr 4.8
at batch 4096 (0.3 x batch / 256), weight decay 1e-6, 10 warm-up epochs, 800 epochs; views as SwAV's.
Small-image recipe (measured on digits, BENCHMARKS.md): 3 x 30 prototypes (few for a dataset of 1.4k
images), SGD 0.2 x batch/256, crops (0.6, 1), no local crops: with LARS, 100 prototypes and local
crops it stayed below the random-init encoder, and local crops of a few pixels hurt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import gather_no_grad
from selfsup.data.views import ViewSpec
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.losses import IGNORE, deepcluster_loss
from selfsup.methods.multicrop import SMALL_IMAGE_CROPS, MultiCropConfig, check_global_crops, project_crops
from selfsup.methods.swav import swav_crop_views
from selfsup.models.heads import mlp

KMEANS_INITS = ("random", "kmeans++")


@torch.no_grad()
def _kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with the squared chord distance 2 - 2 cos."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    nearest = (2 - 2 * (x @ x[first])).clamp_min(0)
    for _ in range(k - 1):
        cumulative = nearest.double().cumsum(0)
        u = torch.rand((), generator=generator, dtype=torch.float64).to(x.device) * cumulative[-1]
        i = int(torch.searchsorted(cumulative, u.unsqueeze(0)).clamp(max=n - 1))
        chosen.append(i)
        nearest = torch.minimum(nearest, (2 - 2 * (x @ x[i])).clamp_min(0))
    return x[torch.tensor(chosen, device=x.device)].clone()


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None,
                     init: str = "random", chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with cosine similarity on L2-normalised rows ``x [N, D]`` (official ``cluster_memory``).

    Centroids start at ``k`` distinct random rows (``init="random"``, the official code) or at a
    k-means++ seeding; each iteration assigns every row to its most similar centroid and moves each
    non-empty cluster's centroid to the normalised mean of its rows (empty clusters keep theirs).
    Returns ``(centroids [k, D], assignments [N])``, the assignments of a final E step.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means: {k} clusters need at least {k} embedded rows, the bank holds {n}; "
                         "use fewer prototypes")
    if init not in KMEANS_INITS:
        raise ValueError(f"k-means init must be one of {', '.join(KMEANS_INITS)}, got {init!r}")
    x = x.float()
    if init == "kmeans++":
        centroids = _kmeans_pp_init(x, k, generator)
    else:
        centroids = x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    assignments = torch.empty(n, dtype=torch.long, device=x.device)
    for it in range(iterations + 1):
        for start in range(0, n, chunk):  # E step, in chunks to bound the [N, K] similarity matrix
            assignments[start:start + chunk] = (x[start:start + chunk] @ centroids.T).argmax(dim=1)
        if it == iterations:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)  # M step
        counts = torch.bincount(assignments, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        centroids = F.normalize(centroids, dim=1)
    return centroids, assignments


@dataclass
class DeepClusterV2Config(MultiCropConfig):
    """Official defaults (Caron et al. 2020, Appendix B; deepclusterv2_800ep_pretrain.sh)."""

    projector_hidden_dim: int = 2048
    projection_dim: int = 128
    num_prototypes: int = 3000
    num_clusterings: int = 3  # k-means runs (heads), each with num_prototypes centroids
    temperature: float = 0.1
    kmeans_iterations: int = 10
    kmeans_init: str = "random"  # "random" rows (official) or "kmeans++"
    head_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clusterings < 1:
            raise ValueError(f"--num-clusterings: must be >= 1, got {self.num_clusterings}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"--kmeans-init: must be one of {', '.join(KMEANS_INITS)}, got {self.kmeans_init!r}")


class DeepClusterV2(Method):
    name = "deepcluster_v2"
    Config = DeepClusterV2Config
    OPTIMIZER = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}
    # Measured on digits (BENCHMARKS.md).
    SMALL_IMAGE_RECIPE = {"projector_hidden_dim": 512, "projection_dim": 64, "num_prototypes": 30,
                          **SMALL_IMAGE_CROPS}
    SMALL_IMAGE_OPTIMIZER = {"optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4, "warmup_epochs": 1}

    def __init__(self, encoder: nn.Module, config: DeepClusterV2Config) -> None:
        super().__init__(encoder, config)
        c = config
        self.projector = mlp(self.feature_dim, c.projector_hidden_dim, c.projection_dim, norm=c.head_norm)
        d = c.projection_dim
        self.register_buffer("prototypes", F.normalize(torch.randn(c.num_clusterings, c.num_prototypes, d), dim=2))
        self.register_buffer("bank", torch.zeros(2, 0, d))  # [global crop, dataset row, d]
        self.register_buffer("bank_filled", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("assignments", torch.zeros(c.num_clusterings, 0, dtype=torch.long))
        self.register_buffer("clustered_epoch", torch.tensor(-1))  # epoch of the last k-means; -1: none yet
        self._indices: torch.Tensor | None = None
        self._filling = False

    def views(self, size: int, crop_scale: tuple[float, float]) -> list[ViewSpec]:
        """2 global + ``num_local_crops`` local crops; their scales come from this method's options."""
        return swav_crop_views(self.config, size)

    # -- the bank grows to the dataset size; a checkpoint's bank is loaded at its stored size --------

    def _grow(self, rows: int) -> None:
        have = self.bank.shape[1]
        if rows <= have:
            return
        extra = rows - have
        self.bank = torch.cat([self.bank, self.bank.new_zeros(2, extra, self.bank.shape[2])], dim=1)
        self.bank_filled = torch.cat([self.bank_filled, self.bank_filled.new_zeros(extra)])
        self.assignments = torch.cat([self.assignments,
                                      self.assignments.new_full((self.assignments.shape[0], extra), IGNORE)], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        stored = state_dict.get(prefix + "bank")
        if stored is not None:
            self._grow(stored.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- hooks -------------------------------------------------------------------------------------

    def on_batch_start(self, indices: torch.Tensor) -> None:
        self._indices = indices.to(self.bank.device, torch.long)
        self._grow(int(indices.max()) + 1 if indices.numel() else 0)

    @torch.no_grad()
    def cluster(self, epoch: int) -> None:
        """k-means on the bank for every head: new prototypes and assignments (official ``cluster_memory``)."""
        c = self.config
        rows = self.bank_filled.nonzero().squeeze(1)
        self.assignments.fill_(IGNORE)
        for h in range(c.num_clusterings):
            generator = torch.Generator().manual_seed(epoch * 1000 + h)  # the same on every process
            centroids, assigned = spherical_kmeans(self.bank[h % 2, rows], c.num_prototypes,
                                                   c.kmeans_iterations, generator, c.kmeans_init)
            self.prototypes[h].copy_(centroids)
            self.assignments[h, rows] = assigned
        self.clustered_epoch.fill_(epoch)

    def on_epoch_start(self, epoch: int, steps_per_epoch: int) -> None:
        if epoch == 0 or not bool(self.bank_filled.any()):
            return  # the bank-filling pass
        if int(self.clustered_epoch) != epoch:  # not when resuming in the middle of a clustered epoch
            self.cluster(epoch)

    # -- training ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _store(self, z: torch.Tensor, b: int) -> None:
        indices = gather_no_grad(self._indices)
        self._grow(int(indices.max()) + 1)  # other processes may have seen larger indices
        for crop in range(2):
            self.bank[crop, indices] = gather_no_grad(z[crop * b:(crop + 1) * b].float()).to(self.bank.dtype)
        self.bank_filled[indices] = True

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        check_global_crops(self.name, views)
        if self._indices is None or self._indices.shape[0] != views[0].shape[0]:
            raise RuntimeError("deepcluster_v2 needs on_batch_start(indices) with the dataset rows of each batch")
        b = views[0].shape[0]
        self._filling = int(self.clustered_epoch) < 0
        if self._filling:  # epoch 0: embed the global crops into the bank, no loss
            with torch.no_grad():
                features, z = project_crops(self.encoder, self.projector, views[:2])
            self._store(z, b)
            # zero, but connected to every parameter (so DDP sees them all); the gradients are
            # dropped in before_optimizer_step
            loss = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return StepOutput(loss=loss, embeddings=(z[:b], z[b:2 * b]), features=features[:b],
                              metrics={"deepcluster_loss": torch.zeros((), device=z.device)})
        features, z = project_crops(self.encoder, self.projector, views)
        targets = self.assignments[:, self._indices]
        scores = [z @ self.prototypes[h].to(z.dtype).T for h in range(self.config.num_clusterings)]
        loss = deepcluster_loss(scores, targets, self.config.temperature)
        self._store(z.detach(), b)
        return StepOutput(loss=loss, embeddings=(z[:b].detach(), z[b:2 * b].detach()),
                          features=features[:b].detach(), metrics={"deepcluster_loss": loss.detach()})

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        if self._filling:
            for p in self.parameters():
                p.grad = None
