"""The generic training loop: data order, on-device augmentation, optimiser, logging, checkpoints.

It knows nothing about any method: it asks the method for a loss on a list of views and calls
``on_step_end`` after each optimiser step. Every random draw comes from generators seeded by
``(seed, epoch)`` for the data order and ``(seed, step)`` for augmentation, so a run resumed
from any step replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from selfsup import comm
from selfsup.comm import all_reduce_sum, gather_no_grad
from selfsup.data.augment import normalize
from selfsup.data.stream import StreamSource
from selfsup.data.transfer import to_device
from selfsup.data.views import ViewSpec
from selfsup.io import write_text_atomic
from selfsup.methods.base import Method, StepOutput
from selfsup.schedules import warmup_cosine
from selfsup.seeds import derived_seed
from selfsup.train import distributed as dist_train
from selfsup.train.checkpoint import NonFiniteState, atomic_save, check_finite_state, safe_load
from selfsup.train.diagnostics import CollapseWatch, representation_metrics
from selfsup.train.feed import Feed, MemoryFeed, StreamFeed
from selfsup.train.optim import build_optimizer, set_lr
from selfsup.train.probe import OnlineProbe


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


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device``: CUDA, or a CPU with AVX512-BF16 or AMX (elsewhere the
    CPU emulates bf16, slower than fp32). On an AMD EPYC with AVX512-BF16 ``--precision bf16`` makes BYOL's CPU
    step 1.7x cheaper, 2.0-2.4x with ``--channels-last`` (BENCHMARKS.md); on the CPU both stay opt-in until
    every method's test margins are measured with them."""
    if device.type == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return device.type == "cpu" and any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def default_channels_last(device: torch.device) -> bool:
    """``channels_last=None``: NHWC on CUDA; on the CPU opt-in (1.3x cheaper ResNet steps, BENCHMARKS.md)."""
    return device.type == "cuda"


@dataclass
class FitResult:
    steps: int
    seconds: float
    images_per_second: float
    last_metrics: dict[str, float]
    collapse_warning_steps: list[int] = field(default_factory=list)  # steps where the std monitor warned


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


def fit(method: Method, images: torch.Tensor | StreamSource, views: Sequence[ViewSpec], mean: Sequence[float],
        std: Sequence[float], settings: LoopSettings, run_dir: Path | None = None, resume: bool = False,
        extra_state: dict[str, Any] | None = None, labels: torch.Tensor | None = None,
        epoch_hooks: Sequence[EpochHook] = ()) -> FitResult:
    """Train ``method`` on uint8 ``images`` [N, C, H, W], or on a store streamed by a ``StreamSource``
    (whose views replace ``views``).

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
    trainer = _Trainer(method, images, views, mean, std, settings, run_dir, extra_state, labels, epoch_hooks)
    if resume:
        trainer.restore()
    return trainer.run()


EpochHook = Callable[[int, int, Method], dict[str, float]]


class _Trainer:
    """One ``fit``: the set-up, then a loop of named steps (train step, log window, end-of-step work)."""

    def __init__(self, method: Method, images: torch.Tensor | StreamSource, views: Sequence[ViewSpec],
                 mean: Sequence[float], std: Sequence[float], settings: LoopSettings, run_dir: Path | None,
                 extra_state: dict[str, Any] | None, labels: torch.Tensor | None,
                 epoch_hooks: Sequence[EpochHook]) -> None:
        s = self.s = settings
        self.method, self.mean, self.std = method, mean, std
        self.device = device = torch.device(s.device)
        self.world, self.rank = comm.world_size(), comm.rank()
        self.feed: Feed = (StreamFeed(images, device) if isinstance(images, StreamSource) else
                           MemoryFeed(images, views, s.batch_size, s.seed, self.rank, self.world, device))
        self.steps_per_epoch = self.feed.steps_per_epoch
        self.total_steps = self.steps_per_epoch * s.epochs
        self.warmup_steps = int(round(s.warmup_epochs * self.steps_per_epoch))
        method.to(device)
        self.channels_last = default_channels_last(device) if s.channels_last is None else s.channels_last
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(s.optimizer, method.param_groups(), s.lr, s.weight_decay, s.lars_eta,
                                         s.lars_clip)
        model = dist_train.wrap(method, device, method.sync_batchnorm if s.sync_bn is None else s.sync_bn)
        self.step_fn = torch.compile(model) if s.compile else model
        self.probe, self.labels = None, None
        if labels is not None and s.online_probe:
            self.probe = OnlineProbe(method.feature_dim, int(labels.max()) + 1).to(device)
            self.labels = labels.to(device)
        self.extra_state, self.epoch_hooks = extra_state or {}, epoch_hooks
        self.ckpt_path = run_dir / "checkpoints" / "last.pt" if run_dir else None
        self.run_dir = run_dir
        self.step = 0
        self.resumed_at: int | None = None
        self.watch, self.warnings_at = CollapseWatch(), []
        self.window = _LossWindow(device)
        self.last: dict[str, float] = {}

    def restore(self) -> None:
        """Continue from ``checkpoints/last.pt``: weights, optimiser, probe and step."""
        if self.ckpt_path is None or not self.ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt_path}")
        state = safe_load(self.ckpt_path, map_location=self.device)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = self.resumed_at = state["step"]
        if self.probe is not None and "online_probe" in state:
            self.probe.load_full_state(state["online_probe"])

    def run(self) -> FitResult:
        self.logger = _MetricsLogger(self.run_dir if self.rank == 0 else None, resume_step=self.resumed_at)
        start, start_step = time.perf_counter(), self.step
        self.tick, self.tick_step = start, self.step
        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.s.progress or self.rank != 0,
                        unit="step", dynamic_ncols=True)
        self.method.train()
        try:
            with _catch_stop_signals() as stop:
                while self.step < self.total_steps:
                    epoch = self.step // self.steps_per_epoch
                    self.method.on_epoch_start(epoch, self.steps_per_epoch)  # also when resuming mid-epoch
                    for batch_index, batch in self.feed.batches(self.step):
                        out, lr = self._train_step(batch_index, batch)
                        if self.step % self.s.log_every == 0 or self.step == self.total_steps:
                            self._log_window(out, lr)
                        self._end_of_step(epoch, stop)
        finally:
            self.bar.close()
            self.logger.close()
        seconds = time.perf_counter() - start
        trained = (self.step - start_step) * self.s.batch_size
        return FitResult(steps=self.step, seconds=seconds, images_per_second=trained / max(seconds, 1e-9),
                         last_metrics=self.last, collapse_warning_steps=self.warnings_at)

    def _train_step(self, batch_index: torch.Tensor, batch: Any) -> tuple[StepOutput, float]:
        """Augment the batch on the device, one optimiser step, the method's and the probe's updates."""
        s, method, device = self.s, self.method, self.device
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, s.lr)
        set_lr(self.optimizer, lr)
        method.on_batch_start(batch_index)
        gen = torch.Generator().manual_seed(augment_seed(s.seed, self.step, self.rank, self.world))
        inputs = [normalize(v, self.mean, self.std) for v in self.feed.augmented(batch, gen)]
        if self.channels_last:
            inputs = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16"):
            out = self.step_fn(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.before_optimizer_step(self.step, self.total_steps)
        self.optimizer.step()
        self.after = method.on_step_end(self.step + 1, self.total_steps)
        if self.probe is not None and out.features is not None:
            self.probe.update(out.features, self.labels[to_device(batch_index, device)])
        self.step += 1
        self.window.add(out.loss)
        self.bar.update(1)
        return out, lr

    def _log_window(self, out: StepOutput, lr: float) -> None:
        """One metrics record for the steps since the last: mean loss, lr, rate, monitors, probe."""
        loss = self.window.mean_and_reset()
        if not math.isfinite(loss):
            raise NonFiniteLoss(_non_finite_message(f"loss is {loss}", self.step, self.window.logged,
                                                    self.ckpt_path))
        now = time.perf_counter()
        rate = (self.step - self.tick_step) * self.s.batch_size / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, self.step
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": loss, "lr": lr,
                  "images_per_second": rate, **self.after, **_mean_metrics(out.metrics)}
        if self.probe is not None:
            all_reduce_sum(self.probe.correct)  # top-1 over every process's batches
            all_reduce_sum(self.probe.seen)
            record.update(self.probe.read_and_reset())
        if out.embeddings is not None:
            record.update(representation_metrics(*(gather_no_grad(e) for e in out.embeddings)))
            if self.watch.update(record["std_scaled"]) and self.rank == 0:
                self.warnings_at.append(self.step)
                tqdm.write(f"warning: representation collapse? normalised std x sqrt(d) = "
                           f"{record['std_scaled']:.3f} at step {self.step}")
        self.logger.log(record)
        self.last = record
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")

    def _end_of_step(self, epoch: int, stop: dict[str, Any]) -> None:
        """Epoch hooks, checkpoints, and a clean stop (checkpoint first) on SIGINT/SIGTERM."""
        end_of_epoch = self.step % self.steps_per_epoch == 0
        if end_of_epoch:
            for hook in self.epoch_hooks:
                extra = hook(epoch, self.step, self.method)
                self.method.train()
                if extra:
                    self.logger.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, **extra})
        if end_of_epoch or (self.s.checkpoint_every and self.step % self.s.checkpoint_every == 0):
            self._save_checkpoint()
        if dist_train.any_process(stop["signal"] is not None):  # every process stops at this step
            raise TrainingInterrupted(self.step, self._save_checkpoint())

    def _save_checkpoint(self) -> Path | None:
        """Check every process's state is finite, then rank 0 writes ``last.pt`` atomically."""
        _check_finite_everywhere(self.window.loss_sum, self.window.count, self.step, self.ckpt_path, self.method,
                                 self.optimizer)
        if self.ckpt_path is None or self.rank != 0:
            return None
        return atomic_save({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                            "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                            **({"online_probe": self.probe.full_state()} if self.probe is not None else {}),
                            **self.extra_state}, self.ckpt_path)


class _LossWindow:
    """The losses since the last log line, summed on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.count = 0
        self.logged = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float()
        self.count += 1

    def mean_and_reset(self) -> float:
        """The mean over processes and steps of the window; the window starts again."""
        mean = (dist_train.mean_over_processes(self.loss_sum) / self.count).item()
        self.logged = self.count
        if math.isfinite(mean):
            self.loss_sum.zero_()
            self.count = 0
        return mean


def augment_seed(seed: int, step: int, rank: int = 0, world_size: int = 1) -> int:
    """The augmentation generator's seed for ``step``: (seed, "augment", step) on one process (so
    single-process runs keep their stream), (seed, "augment", step, rank) for each of several."""
    return derived_seed(seed, "augment", step) if world_size == 1 else derived_seed(seed, "augment", step, rank)


def _mean_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The method's extra scalars as floats, averaged over processes (one all-reduce)."""
    if not metrics or comm.world_size() == 1:
        return {k: float(v) for k, v in metrics.items()}
    values = dist_train.mean_over_processes(torch.stack([v.detach().float().reshape(()) for v in metrics.values()]))
    return dict(zip(metrics, values.tolist()))


def _check_finite_everywhere(loss_sum: torch.Tensor, loss_count: int, step: int, ckpt_path: Path | None,
                             method: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``_check_finite`` on every process; all of them raise when any one finds a non-finite value."""
    if comm.world_size() == 1:
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
            write_text_atomic(path, "".join(line + "\n" for line in kept))  # a kill leaves the old file
        self.file = path.open("a")
        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log(self, record: dict[str, float]) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:  # a full or read-only disk: name the file
            raise OSError(err.errno, err.strerror, self.file.name) from err
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
