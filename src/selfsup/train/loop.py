"""The generic training loop: data order, on-device augmentation, optimiser, logging, checkpoints.

It knows nothing about any method: it asks the method for a loss on a list of views and calls
``on_step_end`` after each optimiser step. Every random draw comes from generators seeded by
``(seed, epoch)`` for the data order and ``(seed, step)`` for augmentation, so a run resumed
from any step replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from selfsup.data.augment import augment_views, normalize
from selfsup.data.transfer import to_device
from selfsup.data.views import ViewSpec
from selfsup.evaluation.diagnostics import CollapseWatch, representation_metrics
from selfsup.methods.base import Method
from selfsup.methods.distributed import all_reduce_sum, gather_no_grad
from selfsup.train import distributed as dist_train
from selfsup.train.checkpoint import NonFiniteState, atomic_save, check_finite_state, safe_load
from selfsup.train.probe import OnlineProbe
from selfsup.train.optim import build_optimizer, set_lr, warmup_cosine


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written at ``step``."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss (or the model/optimiser state) became NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float  # peak learning rate (already scaled for the batch size)
    weight_decay: float
    warmup_epochs: float
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    progress: bool = True
    sync_bn: bool | None = None  # SyncBatchNorm when on several processes; None: the method's default
    online_probe: bool = True
    lars_eta: float = 1e-3
    lars_clip: bool = False
    channels_last: bool | None = None  # NHWC model and inputs; None: on CUDA only


@dataclass
class FitResult:
    steps: int
    seconds: float
    images_per_second: float
    last_metrics: dict[str, float]
    collapse_warning_steps: list[int] = field(default_factory=list)  # steps where the std monitor warned


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values: independent streams for (seed, kind, index)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the dataset used in ``epoch``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch)))


@contextlib.contextmanager
def _catch_stop_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not in the main thread: leave signals alone
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(method: Method, images: torch.Tensor, views: Sequence[ViewSpec], mean: Sequence[float],
        std: Sequence[float], settings: LoopSettings, run_dir: Path | None = None, resume: bool = False,
        extra_state: dict[str, Any] | None = None, labels: torch.Tensor | None = None,
        epoch_hooks: Sequence[Callable[[int, int, Method], dict[str, float]]] = ()) -> FitResult:
    """Train ``method`` on uint8 ``images`` [N, C, H, W].

    With ``run_dir``, metrics go to ``metrics.jsonl`` and TensorBoard, and ``checkpoints/last.pt``
    is written each epoch (and every ``checkpoint_every`` steps). ``epoch_hooks`` run after each
    epoch as ``hook(epoch, step, method)`` and return extra metrics to log. With ``labels`` (and
    ``settings.online_probe``), an online linear probe trains on the detached features.

    On several processes (torchrun; see ``selfsup.train.distributed``) ``batch_size`` is the global
    batch: every process draws the same per-epoch permutation and takes its contiguous slice of
    each global batch, augments it with its own stream (``augment_seed``), and trains the method
    wrapped in DDP (BatchNorm synchronised per ``settings.sync_bn``). Hooks run on every process,
    on the unwrapped method; logged values are averaged over processes (embeddings gathered) and
    only rank 0 writes metrics, TensorBoard, the progress bar and checkpoints.
    """
    s = settings
    device = torch.device(s.device)
    world, rank = dist_train.world_size(), dist_train.rank()
    if s.batch_size % world:
        raise ValueError(f"--batch-size {s.batch_size} (the global batch) does not split evenly over {world} processes")
    local_batch = s.batch_size // world
    n = images.shape[0]
    steps_per_epoch = n // s.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {s.batch_size} is larger than the {n} training images")
    total_steps = steps_per_epoch * s.epochs
    warmup_steps = int(round(s.warmup_epochs * steps_per_epoch))
    method.to(device)
    channels_last = device.type == "cuda" if s.channels_last is None else s.channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(s.optimizer, method.param_groups(), s.lr, s.weight_decay, s.lars_eta, s.lars_clip)
    use_bf16 = s.precision == "bf16"
    model = dist_train.wrap(method, device, method.sync_batchnorm if s.sync_bn is None else s.sync_bn)
    step_fn = torch.compile(model) if s.compile else model
    data = images.to(device) if device.type == "cpu" or images.numel() < 2**32 else images.pin_memory()

    probe = None
    if labels is not None and settings.online_probe:
        probe = OnlineProbe(method.feature_dim, int(labels.max()) + 1).to(device)
        labels = labels.to(device)
    step = 0
    ckpt_path = run_dir / "checkpoints" / "last.pt" if run_dir else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = safe_load(ckpt_path, map_location=device)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        if probe is not None and "online_probe" in state:
            probe.load_full_state(state["online_probe"])
    logger = _MetricsLogger(run_dir if rank == 0 else None, resume_step=step if resume else None)

    def save_checkpoint() -> Path | None:
        if ckpt_path is None or rank != 0:
            return None
        return atomic_save({"step": step, "epoch": step / steps_per_epoch, "method": method.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            **({"online_probe": probe.full_state()} if probe is not None else {}),
                            **(extra_state or {})}, ckpt_path)

    watch = CollapseWatch()
    warnings_at: list[int] = []
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    last: dict[str, float] = {}
    start = time.perf_counter()
    start_step = step
    tick, tick_step = start, step
    bar = tqdm(total=total_steps, initial=step, disable=not s.progress or rank != 0, unit="step", dynamic_ncols=True)
    method.train()
    with _catch_stop_signals() as stop:
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            order = epoch_order(n, s.seed, epoch)
            method.on_epoch_start(epoch, steps_per_epoch)  # also when resuming mid-epoch
            for batch_index in order[position * s.batch_size:steps_per_epoch * s.batch_size].split(s.batch_size):
                lr = warmup_cosine(step, total_steps, warmup_steps, s.lr)
                set_lr(optimizer, lr)
                if world > 1:  # this process's contiguous share of the global batch
                    batch_index = batch_index[rank * local_batch:(rank + 1) * local_batch]
                method.on_batch_start(batch_index)
                # to_device: asynchronous copies (pinned on CUDA), so the host never waits for the GPU here
                batch = to_device(data[to_device(batch_index, data.device)], device)
                gen = torch.Generator().manual_seed(augment_seed(s.seed, step, rank, world))
                inputs = [normalize(v, mean, std) for v in augment_views(batch, views, gen)]
                if channels_last:
                    inputs = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = step_fn(inputs)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                method.before_optimizer_step(step, total_steps)
                optimizer.step()
                after = method.on_step_end(step + 1, total_steps)
                if probe is not None and out.features is not None:
                    probe.update(out.features, labels[to_device(batch_index, device)])
                step += 1
                loss_sum += out.loss.detach().float()
                loss_count += 1
                bar.update(1)
                if step % s.log_every == 0 or step == total_steps:
                    loss = (dist_train.mean_over_processes(loss_sum) / loss_count).item()
                    if not math.isfinite(loss):
                        raise NonFiniteLoss(_non_finite_message(f"loss is {loss}", step, loss_count, ckpt_path))
                    now = time.perf_counter()
                    rate = (step - tick_step) * s.batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    record = {"step": step, "epoch": step / steps_per_epoch, "loss": loss, "lr": lr,
                              "images_per_second": rate, **after,
                              **_mean_metrics(out.metrics)}
                    if probe is not None:
                        all_reduce_sum(probe.correct)  # top-1 over every process's batches
                        all_reduce_sum(probe.seen)
                        record.update(probe.read_and_reset())
                    if out.embeddings is not None:
                        record.update(representation_metrics(*(gather_no_grad(e) for e in out.embeddings)))
                        if watch.update(record["std_scaled"]) and rank == 0:
                            warnings_at.append(step)
                            tqdm.write(f"warning: representation collapse? normalised std x sqrt(d) = "
                                       f"{record['std_scaled']:.3f} at step {step}")
                    logger.log(record)
                    last = record
                    loss_sum.zero_()
                    loss_count = 0
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                end_of_epoch = step % steps_per_epoch == 0
                if end_of_epoch:
                    for hook in epoch_hooks:
                        extra = hook(epoch, step, method)
                        method.train()
                        if extra:
                            logger.log({"step": step, "epoch": step / steps_per_epoch, **extra})
                if end_of_epoch or (s.checkpoint_every and step % s.checkpoint_every == 0):
                    _check_finite_everywhere(loss_sum, loss_count, step, ckpt_path, method, optimizer)
                    save_checkpoint()
                if dist_train.any_process(stop["signal"] is not None):  # every process stops at this step
                    _check_finite_everywhere(loss_sum, loss_count, step, ckpt_path, method, optimizer)
                    path = save_checkpoint()
                    bar.close()
                    logger.close()
                    raise TrainingInterrupted(step, path)
    bar.close()
    logger.close()
    seconds = time.perf_counter() - start
    trained = (step - start_step) * s.batch_size
    return FitResult(steps=step, seconds=seconds, images_per_second=trained / max(seconds, 1e-9),
                     last_metrics=last, collapse_warning_steps=warnings_at)


def augment_seed(seed: int, step: int, rank: int = 0, world_size: int = 1) -> int:
    """The augmentation generator's seed for ``step``: (seed, "augment", step) on one process (so
    single-process runs keep their stream), (seed, "augment", step, rank) for each of several."""
    return derived_seed(seed, "augment", step) if world_size == 1 else derived_seed(seed, "augment", step, rank)


def _mean_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The method's extra scalars as floats, averaged over processes (one all-reduce)."""
    if not metrics or dist_train.world_size() == 1:
        return {k: float(v) for k, v in metrics.items()}
    values = dist_train.mean_over_processes(torch.stack([v.detach().float().reshape(()) for v in metrics.values()]))
    return dict(zip(metrics, values.tolist()))


def _check_finite_everywhere(loss_sum: torch.Tensor, loss_count: int, step: int, ckpt_path: Path | None,
                             method: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``_check_finite`` on every process; all of them raise when any one finds a non-finite value."""
    if dist_train.world_size() == 1:
        return _check_finite(loss_sum, loss_count, step, ckpt_path, method, optimizer)
    try:
        _check_finite(loss_sum, loss_count, step, ckpt_path, method, optimizer)
    except NonFiniteLoss:
        dist_train.any_process(True)
        raise
    if dist_train.any_process(False):
        raise NonFiniteLoss(_non_finite_message("loss or training state is not finite on another process", step,
                                                loss_count, ckpt_path))


def _non_finite_message(what: str, step: int, window: int, ckpt_path: Path | None) -> str:
    """One line: what went wrong, at which step (within which unchecked steps), what was kept, why."""
    where = f"step {step}" if window <= 1 else f"step {step} (first non-finite in steps {step - window + 1}-{step})"
    kept = (f"the last good checkpoint {ckpt_path} was kept" if ckpt_path is not None and ckpt_path.exists()
            else "no checkpoint was written")
    return (f"{what} at {where}; {kept}. Likely causes: learning rate too high (try a smaller --lr), "
            "bf16 overflow (try --precision fp32), or a bad input image.")


def _check_finite(loss_sum: torch.Tensor, loss_count: int, step: int, ckpt_path: Path | None,
                  method: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Before any checkpoint: the unlogged losses and every weight/buffer/optimiser tensor are finite."""
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(_non_finite_message("loss is not finite", step, loss_count, ckpt_path))
    try:
        check_finite_state({"method": method.state_dict(), "optimizer": optimizer.state_dict()["state"]})
    except NonFiniteState as err:
        raise NonFiniteLoss(_non_finite_message(f"training state is not finite ({err})", step, 1,
                                                ckpt_path)) from None


class _MetricsLogger:
    """Appends records to metrics.jsonl (and TensorBoard); on resume drops records past the checkpoint.

    A run killed mid-write (SIGKILL, power loss) can leave a partial last line: on resume, lines
    that do not parse as a record are dropped, and TensorBoard hides events past the checkpoint.
    """

    def __init__(self, run_dir: Path | None, resume_step: int | None) -> None:
        self.file = None
        self.writer = None
        if run_dir is None:
            return
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(errors="replace").splitlines()
                    if (line_step := _record_step(line)) is not None and line_step <= resume_step]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)  # a kill while rewriting leaves the old file, not a short one
        self.file = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                        purge_step=None if resume_step is None else resume_step + 1)
        except ImportError:  # tensorboard is optional at run time
            self.writer = None

    def log(self, record: dict[str, float]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _record_step(line: str) -> int | None:
    """The ``step`` of one metrics.jsonl line, or None for a partial/garbled line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
