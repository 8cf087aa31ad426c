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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from selfsup.data.augment import augment_views, normalize
from selfsup.data.views import ViewSpec
from selfsup.evaluation.diagnostics import CollapseWatch, representation_metrics
from selfsup.methods.base import Method
from selfsup.train.checkpoint import atomic_save, safe_load
from selfsup.train.optim import build_optimizer, set_lr, warmup_cosine


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written at ``step``."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left untouched."""


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


@dataclass
class FitResult:
    steps: int
    seconds: float
    images_per_second: float
    last_metrics: dict[str, float]


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
        extra_state: dict[str, Any] | None = None,
        epoch_hooks: Sequence[Callable[[int, int, Method], dict[str, float]]] = ()) -> FitResult:
    """Train ``method`` on uint8 ``images`` [N, C, H, W].

    With ``run_dir``, metrics go to ``metrics.jsonl`` and TensorBoard, and ``checkpoints/last.pt``
    is written each epoch (and every ``checkpoint_every`` steps). ``epoch_hooks`` run after each
    epoch as ``hook(epoch, step, method)`` and return extra metrics to log.
    """
    s = settings
    device = torch.device(s.device)
    n = images.shape[0]
    steps_per_epoch = n // s.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {s.batch_size} is larger than the {n} training images")
    total_steps = steps_per_epoch * s.epochs
    warmup_steps = int(round(s.warmup_epochs * steps_per_epoch))
    method.to(device)
    if device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(s.optimizer, method.param_groups(), s.lr, s.weight_decay)
    use_bf16 = s.precision == "bf16"
    step_fn = torch.compile(method) if s.compile else method
    data = images.to(device) if device.type == "cpu" or images.numel() < 2**32 else images.pin_memory()

    step = 0
    ckpt_path = run_dir / "checkpoints" / "last.pt" if run_dir else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = safe_load(ckpt_path, map_location=device)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    logger = _MetricsLogger(run_dir, resume_step=step if resume else None)

    def save_checkpoint() -> Path | None:
        if ckpt_path is None:
            return None
        return atomic_save({"step": step, "epoch": step / steps_per_epoch, "method": method.state_dict(),
                            "optimizer": optimizer.state_dict(), **(extra_state or {})}, ckpt_path)

    watch = CollapseWatch()
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    last: dict[str, float] = {}
    start = time.perf_counter()
    start_step = step
    tick, tick_step = start, step
    bar = tqdm(total=total_steps, initial=step, disable=not s.progress, unit="step", dynamic_ncols=True)
    method.train()
    with _catch_stop_signals() as stop:
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            order = epoch_order(n, s.seed, epoch)
            method.on_epoch_start(epoch, steps_per_epoch)  # also when resuming mid-epoch
            for batch_index in order[position * s.batch_size:steps_per_epoch * s.batch_size].split(s.batch_size):
                lr = warmup_cosine(step, total_steps, warmup_steps, s.lr)
                set_lr(optimizer, lr)
                method.on_batch_start(batch_index)
                batch = data[batch_index.to(data.device)].to(device, non_blocking=True)
                gen = torch.Generator().manual_seed(derived_seed(s.seed, "augment", step))
                inputs = [normalize(v, mean, std) for v in augment_views(batch, views, gen)]
                if device.type == "cuda":
                    inputs = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = step_fn(inputs)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                method.before_optimizer_step(step, total_steps)
                optimizer.step()
                after = method.on_step_end(step + 1, total_steps)
                step += 1
                loss_sum += out.loss.detach().float()
                loss_count += 1
                bar.update(1)
                if step % s.log_every == 0 or step == total_steps:
                    loss = (loss_sum / loss_count).item()
                    if not math.isfinite(loss):
                        raise NonFiniteLoss(
                            f"loss is {loss} at step {step} (epoch {epoch + 1}); the last good checkpoint "
                            f"{ckpt_path} was kept. Likely causes: learning rate too high (try --lr smaller), "
                            f"bf16 overflow (try --precision fp32), or a bad input image.")
                    now = time.perf_counter()
                    rate = (step - tick_step) * s.batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    record = {"step": step, "epoch": step / steps_per_epoch, "loss": loss, "lr": lr,
                              "images_per_second": rate, **after,
                              **{k: float(v) for k, v in out.metrics.items()}}
                    if out.embeddings is not None:
                        record.update(representation_metrics(*out.embeddings))
                        if watch.update(record["std_scaled"]):
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
                        record = {"step": step, "epoch": step / steps_per_epoch, **hook(epoch, step, method)}
                        logger.log(record)
                        method.train()
                if end_of_epoch or (s.checkpoint_every and step % s.checkpoint_every == 0):
                    _check_finite(loss_sum, step, ckpt_path)
                    save_checkpoint()
                if stop["signal"] is not None:
                    _check_finite(loss_sum, step, ckpt_path)
                    path = save_checkpoint()
                    bar.close()
                    logger.close()
                    raise TrainingInterrupted(step, path)
    bar.close()
    logger.close()
    seconds = time.perf_counter() - start
    trained = (step - start_step) * s.batch_size
    return FitResult(steps=step, seconds=seconds, images_per_second=trained / max(seconds, 1e-9),
                     last_metrics=last)


def _check_finite(loss_sum: torch.Tensor, step: int, ckpt_path: Path | None) -> None:
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"loss is not finite at step {step}; the last good checkpoint {ckpt_path} was kept. "
                            "Likely causes: learning rate too high (try --lr smaller), bf16 overflow "
                            "(try --precision fp32), or a bad input image.")


class _MetricsLogger:
    """Appends records to metrics.jsonl (and TensorBoard); on resume drops records past the checkpoint."""

    def __init__(self, run_dir: Path | None, resume_step: int | None) -> None:
        self.file = None
        self.writer = None
        if run_dir is None:
            return
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
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
