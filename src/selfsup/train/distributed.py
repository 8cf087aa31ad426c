"""Data-parallel training over processes started by ``torchrun`` (one process per GPU, or CPU processes).

``init_from_env`` reads torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and starts the process group: NCCL when the device is CUDA
(``cuda:LOCAL_RANK``), gloo on the CPU; without those variables (or with a world of 1) nothing
is started and training is the plain single-process run. ``wrap`` converts BatchNorm layers to
SyncBatchNorm (when the method asks for it) and puts the method in DistributedDataParallel.
``launch`` starts ``selfsup train`` on N local processes through ``torch.distributed.run``
(what ``selfsup train --devices N`` does).

How the gradients stay those of one process on the global batch: every cross-process operation
in a loss (``gather_with_grad``, SyncBatchNorm's statistics) sums the incoming gradients over
processes in its backward, so a process's parameters receive d(sum over ranks of the rank losses)
and DDP's average over ranks is d(mean of the rank losses). Each method returns, per process,
a loss whose mean over processes is the single-process loss of the global batch: either its
local anchors' share (e.g. SimCLR, BYOL, MoCo, NNCLR: a batch mean over the local rows) or the
whole global loss on every process (e.g. Barlow Twins, VICReg: computed from the gathered batch,
divided by the global N -- never averaged again, the 1/world_size error of lightly #1977).
``tests/test_distributed.py`` checks this for every registered method.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from selfsup.comm import world_size

_STATE: dict[str, Any] = {"owned": False, "control": None}


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's global rank from the environment (0 outside torchrun), before any set-up."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU when CUDA is available, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _device_for(name: str, local_rank: int, distributed: bool) -> torch.device:
    device = pick_device(name)
    if distributed and device.type == "cuda" and device.index is None:  # one GPU per process
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices visible; "
                               "start at most one process per GPU")
        device = torch.device("cuda", local_rank)
    return device


def init_from_env(device: str = "auto") -> DistInfo:
    """Start the process group from torchrun's variables (idempotent) and pick this process's device.

    NCCL for CUDA devices, gloo for the CPU; a gloo side group carries the small control messages
    (stop flags, the run folder's name) without a GPU synchronisation.
    """
    if not dist.is_available() or not (dist.is_initialized() or launched_by_torchrun()):
        return DistInfo(device=_device_for(device, 0, False))
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if world == 1 and not dist.is_initialized():
        return DistInfo(device=_device_for(device, 0, False))
    dev = _device_for(device, local_rank, True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        _STATE["owned"] = True
    if dist.get_backend() != "gloo" and _STATE["control"] is None:
        _STATE["control"] = dist.new_group(backend="gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown(barrier: bool = True) -> None:
    """Destroy the process group if ``init_from_env`` started it (after a barrier, unless failing)."""
    if _STATE["owned"] and dist.is_initialized():
        if barrier:
            dist.barrier(group=_control_group())
        dist.destroy_process_group()
    _STATE["owned"] = False
    _STATE["control"] = None


def _control_group():
    return _STATE["control"]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier(group=_control_group())


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (a CPU all-reduce; no GPU sync)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process (pickled; for small control values)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group())
    return box[0]


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``values`` over processes (a new tensor; the input is untouched)."""
    if world_size() == 1:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


# ---------------------------------------------------------------------------------------------
# SyncBatchNorm (torch's on CUDA; an all-reduce version on the CPU, where torch's refuses to run)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the incoming gradients over processes too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on the CPU (gloo), which torch's SyncBatchNorm refuses: two
    differentiable all-reduces, the sum (and count), then the sum of squared deviations; their
    backward sums the gradients over processes. Outside training, or on one process, plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and world_size() > 1:
            return self._sync_forward(x)
        return super().forward(x)

    def _sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        xc = x.to(compute)
        local = torch.cat([xc.sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = (total[:-1] / count).to(compute)
        centered = xc - mean.view(shape)
        var = (_AllReduceSum.apply(centered.pow(2).sum(dims, dtype=torch.float64)) / count).to(compute)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.to(compute).view(shape) + self.bias.to(compute).view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                n = float(count)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)


_BN_CLASSES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cuda") -> int:
    """Turn every plain BatchNorm layer of ``module`` into a synchronised one in place: torch's
    ``SyncBatchNorm`` for CUDA, ``CPUSyncBatchNorm`` for the CPU.

    The layers keep their parameters, buffers and state_dict keys (checkpoints load either way);
    ``revert_sync_batchnorm`` undoes it. Returns how many layers were converted.
    """
    count = 0
    for m in module.modules():
        if type(m) in _BN_CLASSES:
            m._selfsup_plain_class = type(m)  # type: ignore[attr-defined]
            if device_type == "cpu":
                m.__class__ = CPUSyncBatchNorm
            else:
                m.__class__ = nn.SyncBatchNorm
                m.process_group = None  # type: ignore[attr-defined]
            count += 1
    return count


def revert_sync_batchnorm(module: nn.Module) -> None:
    """Undo ``convert_sync_batchnorm``: the layers are their original BatchNorm classes again."""
    for m in module.modules():
        plain = m.__dict__.pop("_selfsup_plain_class", None)
        if plain is not None:
            m.__dict__.pop("process_group", None)
            m.__class__ = plain


def wrap(method: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """``method`` (already on ``device``) in DistributedDataParallel, BatchNorm synchronised if asked.

    Buffers are not re-sent before each forward: with SyncBatchNorm the running statistics agree on every process
    anyway, and queues are filled from every process's keys, so re-sending them each step (a
    65k-row MoCo queue) would be waste. Momentum targets have ``requires_grad=False``, so DDP
    leaves them out of the gradient reduction. Call the method's hooks on ``method`` itself.
    """
    if world_size() == 1:
        return method
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        convert_sync_batchnorm(method, device.type)
    # buffers are synchronised from rank 0 once, at construction, and not before every forward
    no_forward_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_forward_sync)


# ---------------------------------------------------------------------------------------------
# Launching: ``selfsup train --devices N``


class DistributedRunFailed(RuntimeError):
    """A run started by ``launch`` failed; its processes printed why. ``returncode`` is rank 0's code."""

    def __init__(self, returncode: int, processes: int) -> None:
        super().__init__(f"the {processes}-process run failed (exit code {returncode}); its processes printed "
                         "the reason above")
        self.returncode = returncode


def launch(argv: Sequence[str], processes: int, threads_per_process: int | None = None) -> int:
    """Run ``python -m selfsup ARGV`` on ``processes`` local processes through ``torch.distributed.run``
    (``--standalone``: a free port on localhost) and wait; returns the exit code (0, or the failing
    processes' code: 2 bad option, 3 NaN loss, 130 interrupted, ...).

    Ctrl-C reaches every process (they stop together at the same step and rank 0 writes the
    checkpoint). ``OMP_NUM_THREADS`` defaults to the CPU count divided among the processes.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(processes), "--max-restarts", "0",
                                         "-m", "selfsup", *argv])
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // processes)
    saved_env = os.environ.get("OMP_NUM_THREADS")
    if saved_env is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    saved_signals = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            saved_signals[sig] = signal.getsignal(sig)
        except ValueError:
            pass
    try:
        run(args)
        return 0
    except ChildFailedError as err:
        codes = {r: f.exitcode for r, f in err.failures.items()}
        if codes.get(0, 0) > 0:
            return codes[0]
        positive = [c for _, c in sorted(codes.items()) if c > 0]
        return positive[0] if positive else 1
    except (SignalException, KeyboardInterrupt):  # Ctrl-C / SIGTERM: the workers saved and stopped
        return 130
    finally:
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        try:
            for sig, handler in saved_signals.items():
                signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
        sys.stdout.flush()
