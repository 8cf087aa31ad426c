"""Speed work (issue 7): the throughput benchmark in CI size, gradient checkpointing, no syncs in the hot loop."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import tiny_method
from selfsup.config import ConfigError, TrainConfig, resolve, validate
from selfsup.models import build_backbone
from selfsup.runs import build_method, training_views
from selfsup.train.loop import LoopSettings, fit
from selfsup.train.optim import build_optimizer

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


pytestmark = pytest.mark.usefixtures("one_thread")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("selfsup_benchmark_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_smoke():
    bench = _load_benchmark()
    start = time.perf_counter()
    result = bench.main(["--smoke"])
    elapsed = time.perf_counter() - start
    assert set(bench.RESULT_KEYS) <= result.keys()
    ips = result["images_per_second"]
    assert set(ips) == {"model_bound", "selfsup", "standard"}
    assert all(v > 0 for v in ips.values())
    assert result["pipeline_efficiency"] == pytest.approx(ips["selfsup"] / ips["model_bound"])
    assert result["speedup_vs_standard"] == pytest.approx(ips["selfsup"] / ips["standard"])
    assert all(v > 0 for v in result["peak_memory_mb"].values())
    assert result["command"] == "python benchmarks/throughput.py --smoke"
    json.dumps(result)  # what __main__ prints
    assert elapsed < 60  # typically well under 30 s; generous for a loaded CI machine


def _saved_tensor_count(fn) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count


def test_grad_checkpointing_gives_the_same_gradients_and_batchnorm_buffers():
    plain, ckpt = (tiny_method("byol", width=0.0625, in_channels=3, grad_checkpointing=checkpointing)
                   for checkpointing in (False, True))
    assert ckpt.encoder.grad_checkpointing and not plain.encoder.grad_checkpointing
    for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()):
        assert torch.equal(a, b)
    views = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    counts = []
    for model in (plain, ckpt):
        model.train()
        counts.append(_saved_tensor_count(lambda m=model: m(views).loss.backward()))
    assert counts[1] < counts[0]  # activations inside the stages were not kept
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):  # running stats updated once, not twice
        assert torch.equal(a, b), name
    with torch.no_grad():  # eval / no-grad forwards are untouched
        plain.eval(), ckpt.eval()
        assert torch.equal(plain.encoder(views[0]), ckpt.encoder(views[0]))


def test_grad_checkpointing_flag_is_validated_and_wired():
    assert build_backbone("resnet18", width=0.0625, grad_checkpointing=True).grad_checkpointing
    with pytest.raises(ConfigError, match="--grad-checkpointing"):
        validate(TrainConfig(backbone="vit_tiny", grad_checkpointing=True))


def test_fast_optimizer_implementations_on_cpu():
    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))]
    for name in ("sgd", "adamw"):
        opt = build_optimizer(name, [{"params": params}], 0.1, 1e-4)
        assert all(g["foreach"] and not g.get("fused") for g in opt.param_groups)


class _SyncSpy(TorchDispatchMode):
    """Records, per training step, every operation that would make the host wait for the device.

    The "device" is PyTorch's meta device (shapes only, no data): reading device values (``item``,
    ``bool``, ``nonzero``, a copy to the host) and blocking host-to-device copies are recorded and
    answered with placeholders, so the real loop runs end to end without an accelerator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.events: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten

        def on_meta(a) -> bool:
            return isinstance(a, torch.Tensor) and a.device.type == "meta"

        if func is aten._to_copy.default:
            target = kwargs.get("device")
            target = target.type if target is not None else args[0].device.type
            if on_meta(args[0]) and target == "cpu":
                self.events.append((self.step, "device-to-host copy"))
                return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            if args[0].device.type == "cpu" and target == "meta" and not kwargs.get("non_blocking", False):
                self.events.append((self.step, "blocking host-to-device copy"))
        elif any(on_meta(a) for a in args):
            if func is aten.nonzero.default:
                self.events.append((self.step, "nonzero on the device"))
                return torch.empty((0, args[0].dim()), dtype=torch.long, device="meta")
            if func is aten._local_scalar_dense.default:
                self.events.append((self.step, "item"))
                return 1
            if func is aten.is_nonzero.default:
                self.events.append((self.step, "bool"))
                return True
        return func(*args, **kwargs)


def test_training_loop_syncs_with_the_device_only_when_logging(monkeypatch):
    cfg = TrainConfig(width=0.0625, batch_size=8, image_size=12)
    method = build_method(cfg, resolve(cfg, 12), 3)
    # Every augmentation op in play (RGB: hue, saturation, grayscale; blur; solarise).
    views = [dataclasses.replace(v, blur_p=0.5, solarize_p=0.5) for v in training_views(method, resolve(cfg, 12))]
    spy = _SyncSpy()
    original = method.on_batch_start

    def on_batch_start(indices):
        spy.step += 1
        return original(indices)

    method.on_batch_start = on_batch_start
    real_autocast = torch.autocast  # autocast refuses device_type="meta" even when disabled
    monkeypatch.setattr(torch, "autocast", lambda device_type, *a, **k: contextlib.nullcontext()
                        if device_type == "meta" else real_autocast(device_type, *a, **k))
    images = torch.randint(0, 256, (6 * 8, 3, 12, 12), dtype=torch.uint8)
    settings = LoopSettings(epochs=1, batch_size=8, optimizer="lars", lr=0.1, weight_decay=1e-5, warmup_epochs=0.5,
                            log_every=4, device="meta", progress=False)
    with spy:
        result = fit(method, images, views, [0.5] * 3, [0.25] * 3, settings)
    assert result.steps == 6
    logged = {0, 4, 6}  # 0: setup before the first step; 4: log_every; 6: last step (log, end-of-epoch check)
    hot = [(step, what) for step, what in spy.events if step not in logged]
    assert not hot, f"host-device synchronisations inside training steps: {hot[:5]}"
    assert any(step == 4 for step, _ in spy.events)  # the spy does see the logging sync


def test_augmentation_is_unchanged_by_the_sync_free_paths():
    """Masks read on the CPU, cached normalisation constants: same numbers as the plain ops."""
    from selfsup.data.augment import adjust_brightness, apply_params, augment, normalize, sample_params
    from selfsup.data.views import ViewSpec

    spec = ViewSpec(size=12, crop_scale=(0.3, 1.0), blur_p=0.5, solarize_p=0.5)
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    params = sample_params(16, spec, torch.Generator().manual_seed(3), 12)
    out = apply_params(images, spec, params)
    assert torch.equal(out, augment(images, spec, torch.Generator().manual_seed(3)))
    x = torch.rand(4, 3, 5, 5)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    expected = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.equal(normalize(x, mean, std), expected)
    assert torch.equal(normalize(x, mean, std), expected)  # cached constants, same result
    assert torch.equal(adjust_brightness(x, torch.ones(4)), x.clamp(0, 1))
