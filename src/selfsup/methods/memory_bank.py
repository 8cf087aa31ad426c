"""A memory bank: one stored embedding per training image, indexed by its dataset index.

Instance discrimination (Wu et al., CVPR 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", Sec. 3.1-3.2) treats every image as its own class and keeps, instead of a
classifier weight per class, a running average of that image's L2-normalised embedding:

    after each step, for every image i of the batch:   m_i <- (m_i mu + v_i (1 - mu)) / |...|
                                                         (proximal update, mu = 0.5 in NPID and PIRL)
    negatives: rows of other images, drawn uniformly (the noise distribution P_n = 1/N of NCE)

NPID, PIRL (Misra & van der Maaten, CVPR 2020) and Exemplar-style instance classification read it.
Initial rows are uniform in [-1/sqrt(d/3), 1/sqrt(d/3)]^d, then L2-normalised (the official NPID
code, normalised as VISSL's ``norm_init``).

How rows are known: the loop calls ``on_batch_start(indices)`` with this process's dataset indices;
the method passes them to :meth:`MemoryBank.set_batch`, which gathers every process's indices (in
rank order) and grows the bank to the largest index seen. The dataset size is never given to a
method, so the bank grows on demand: a row's initial value depends on its index alone (each block
of rows comes from its own seeded generator), so the bank holds the same rows whatever the order in
which indices arrive. After the first batch of a shuffled epoch it already spans ~all of the data.

Several processes: every process holds the whole bank. :meth:`update` gathers the embeddings and
indices of all processes and applies the same update everywhere; :meth:`negatives` draws the noise
indices of the *global* batch (``methods.patches.StepRandom``: a seed fixed at construction and a
draw counter, both saved in the state dict, so ``--resume`` continues the same stream), and each
process takes its rows. N processes therefore compute what one process computes on the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.comm import all_reduce_sum, gather_no_grad, world_size
from selfsup.methods.losses import nce_logits, nce_loss, nonparametric_softmax_loss
from selfsup.methods.patches import StepRandom
from selfsup.seeds import derived_seed

MEMORY_LOSSES = ("softmax", "nce")


class MemoryBank(nn.Module):
    """``rows [N, dim]``: unit-norm embeddings, one per dataset index, with the NCE normaliser Z.

    Usage per step: ``set_batch(indices)`` (in ``on_batch_start``), the loss reads ``rows``,
    ``positives()`` and ``negatives(k)``, then ``update(embeddings)`` after the optimiser step.
    """

    BLOCK = 4096  # rows per seeded block of the initial values

    def __init__(self, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"memory momentum must be in [0, 1], got {momentum}")
        self.dim, self.momentum = dim, momentum
        self.register_buffer("rows", torch.zeros(0, dim))
        # log Z of NCE (Wu et al. 2018, Sec. 3.2): estimated once, on the first batch
        self.register_buffer("log_z", torch.zeros(()))
        self.register_buffer("log_z_set", torch.zeros((), dtype=torch.bool))
        self.random = StepRandom()  # the noise draws of NCE
        self.register_buffer("init_seed", torch.randint(2**62, (), dtype=torch.long))
        self.local_indices: torch.Tensor | None = None
        self.global_indices: torch.Tensor | None = None
        self._log_z_known = False

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    # -- rows ----------------------------------------------------------------------------------------

    def initial_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as initialised: each block of ``BLOCK`` rows from its own seeded generator."""
        stdv = 1.0 / math.sqrt(self.dim / 3)
        blocks, seed = [], int(self.init_seed)
        for b in range(start // self.BLOCK, (stop - 1) // self.BLOCK + 1):
            g = torch.Generator().manual_seed(derived_seed(seed, "memory-bank rows", b))
            block = torch.rand(self.BLOCK, self.dim, generator=g, dtype=torch.float64).mul_(2 * stdv).sub_(stdv)
            lo, hi = max(start - b * self.BLOCK, 0), min(stop - b * self.BLOCK, self.BLOCK)
            blocks.append(block[lo:hi])
        return F.normalize(torch.cat(blocks), dim=1).to(self.rows.device, self.rows.dtype)

    def grow(self, size: int) -> None:
        """Extend the bank to ``size`` rows with their initial values (never shrinks)."""
        if size > self.size:
            self.rows = torch.cat([self.rows, self.initial_rows(self.size, size)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        stored = state_dict.get(prefix + "rows")
        if stored is not None and stored.shape[0] != self.size:
            self.rows = self.rows.new_zeros(stored.shape)  # the stored rows are copied in below
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._log_z_known = False

    # -- the batch -----------------------------------------------------------------------------------

    def set_batch(self, indices: torch.Tensor) -> None:
        """This process's dataset indices of the coming batch; gathers every process's and grows the bank."""
        self.local_indices = indices.to(self.rows.device, torch.long)
        self.global_indices = gather_no_grad(self.local_indices)
        if self.global_indices.numel():
            self.grow(int(self.global_indices.max()) + 1)

    def batch_indices(self, rows: int) -> torch.Tensor:
        """This process's dataset indices of the batch (checked against the batch's ``rows``)."""
        if self.local_indices is None or self.local_indices.shape[0] != rows:
            raise RuntimeError("the memory bank needs the dataset indices of each batch: call "
                               "on_batch_start(indices) before the training step")
        return self.local_indices

    def positives(self, rows: int) -> torch.Tensor:
        """``[rows, dim]``: the stored entries of this process's batch (copies, not views)."""
        return self.rows[self.batch_indices(rows)]

    def negatives(self, rows: int, k: int) -> torch.Tensor:
        """``[rows, k]`` noise indices drawn uniformly from the bank for this process's rows; the draw
        covers the global batch (the same on every process) and this process takes its share."""
        self.batch_indices(rows)
        return self.random.draw(rows).integers(0, self.size, k).to(self.rows.device)

    # -- updates -------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor) -> None:
        """m_i <- normalise(mu m_i + (1 - mu) v_i) for the batch's images of every process (official NPID;
        ``embeddings`` are this process's rows, in the order of ``set_batch``'s indices)."""
        self.batch_indices(embeddings.shape[0])
        v = gather_no_grad(F.normalize(embeddings.detach(), dim=1).to(self.rows.dtype))
        index = self.global_indices
        mixed = self.rows[index].mul_(self.momentum).add_(v, alpha=1 - self.momentum)
        self.rows.index_copy_(0, index, F.normalize(mixed, dim=1))

    @torch.no_grad()
    def nce_log_z(self, logits: torch.Tensor) -> torch.Tensor:
        """log Z of NCE's P(i|v) = exp(v.m_i / t) / Z (Wu et al. 2018, Sec. 3.2), a constant: on the first
        call Z = N x the mean of exp(logits) over the global batch's scores (the official Monte-Carlo
        estimate), kept for the rest of training. ``logits`` are this process's [n, K + 1] v.m / t."""
        if not self._log_z_known:
            self._log_z_known = bool(self.log_z_set)  # read once per run (or after a load)
        if not self._log_z_known:
            local = logits.detach().to(self.rows.dtype).exp().mean()
            mean = all_reduce_sum(local.clone()) / world_size()  # equal batch sizes: the global mean
            self.log_z.copy_(mean.log() + math.log(self.size))
            self.log_z_set.fill_(True)
            self._log_z_known = True
        return self.log_z


def memory_bank_loss(bank: MemoryBank, v: torch.Tensor, loss: str, temperature: float,
                     num_negatives: int) -> torch.Tensor:
    """The loss of embeddings ``v`` (this process's batch rows) against ``bank``: NPID's exact
    non-parametric softmax over every row (``loss="softmax"``) or NCE with ``num_negatives`` noise rows."""
    n = v.shape[0]
    if loss == "softmax":
        return nonparametric_softmax_loss(v, bank.rows, bank.batch_indices(n), temperature)
    if loss != "nce":
        raise ValueError(f"memory bank loss must be one of {', '.join(MEMORY_LOSSES)}, got {loss!r}")
    negatives = bank.rows[bank.negatives(n, num_negatives)]  # [n, K, d]
    logits = nce_logits(v, bank.positives(n), negatives, temperature)
    return nce_loss(logits, bank.nce_log_z(logits), bank.size)
