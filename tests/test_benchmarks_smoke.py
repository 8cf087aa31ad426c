"""The benchmark scripts at CI size: the GPU suite's CPU dry run, the comparison with lightly, throughput variants."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from selfsup.data.sources import FASHION_MNIST_FILES

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LIGHTLY = importlib.util.find_spec("lightly") is not None  # the optional `bench` extra

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their neighbours (_common, throughput)
    try:
        spec = importlib.util.spec_from_file_location(f"selfsup_benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_gpu_suite_smoke_runs_every_section_and_writes_its_json(tmp_path):
    suite = _load("gpu_suite")
    out = tmp_path / "suite.json"
    result = suite.main(["--smoke", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # the file is the whole result
    sections = result["sections"]
    assert set(sections) == {"environment", "resnet18_32px", "resnet18_32px_compile", "resnet50_224px",
                             "byol_fashion_mnist"}, result["skipped"]
    assert not result["skipped"]
    r18 = sections["resnet18_32px"]
    assert set(r18["variants"]) == {"bf16", "bf16_channels_last"}
    for figures in (r18, r18["variants"]["bf16_channels_last"], sections["resnet18_32px_compile"],
                    sections["resnet50_224px"]):
        assert set(figures["images_per_second"]) == {"model_bound", "selfsup", "standard"}
        assert all(v > 0 for v in figures["images_per_second"].values())
    r50 = sections["resnet50_224px"]
    assert r50["settings"]["backbone"] == "resnet50" and "cpu-cache" in r50["settings"]["data"]  # the decoded cache
    assert r50["decode_once"]["gpu"]["images"] == r50["decode_once"]["cpu"]["images"] == r50["images"]
    byol = sections["byol_fashion_mnist"]
    assert byol["epochs"] >= 1 and byol["steps"] >= 1
    for key in ("knn_top1", "linear_top1", "random_init_knn_top1", "raw_pixels_linear_top1"):
        assert 0 <= byol[key] <= 1, key


def test_gpu_suite_needs_fashion_mnist_unless_smoke(tmp_path):
    suite = _load("gpu_suite")
    with pytest.raises(SystemExit, match="--fashion-mnist"):
        suite.main(["--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="no Fashion-MNIST"):  # that folder, even where another copy exists
        suite.main(["--fashion-mnist", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
    if not torch.cuda.is_available():  # the full sizes are refused on a CPU (they take hours there)
        found = tmp_path / "fashion-mnist"
        found.mkdir()
        for stem in FASHION_MNIST_FILES.values():
            (found / stem).touch()
        with pytest.raises(SystemExit, match="no CUDA device"):
            suite.main(["--fashion-mnist", str(found), "--out", str(tmp_path / "x.json")])


def test_peers_smoke_trains_alternately_and_scores_both_encoders():
    """selfsup (and lightly, when the `bench` extra is installed) on digits, two rounds, then kNN and linear."""
    peers = _load("peers")
    libraries = ["selfsup", "lightly"] if LIGHTLY else ["selfsup"]
    result = peers.main(["--smoke", "--methods", "byol,simclr", "--subset", "32", "--epochs", "2",
                         "--libraries", ",".join(libraries)])
    assert result["settings"]["train_images"] == 32 and result["settings"]["rounds"] == 2
    for name in ("byol", "simclr"):
        figures = result["methods"][name]
        assert set(figures["images_per_second"]) == set(libraries)
        assert all(v > 0 for v in figures["images_per_second"].values())
        assert len(figures["per_round"]) == 2
        assert all(r[lib]["steps"] == 2 for r in figures["per_round"] for lib in libraries)  # same work
        assert set(figures["scores"]) == set(libraries)
        for scores in figures["scores"].values():
            assert 0 <= scores["knn_top1"] <= 1 and 0 <= scores["linear_top1"] <= 1
        if LIGHTLY:
            ips = [r["selfsup"]["steps"] / r["selfsup"]["seconds"] / (r["lightly"]["steps"] / r["lightly"]["seconds"])
                   for r in figures["per_round"]]
            assert figures["ratio"] == pytest.approx(sorted(ips)[0] / 2 + sorted(ips)[1] / 2)
    json.dumps(result)


def test_throughput_variants_are_measured_beside_the_base():
    bench = _load("throughput")
    result = bench.main(["--smoke", "--modes", "selfsup", "--variant", "nhwc:channels_last=true",
                         "--variant", "small:image_size=12"])
    variants = result["variants"]
    assert set(variants) == {"nhwc", "small"}
    assert variants["nhwc"]["overrides"] == {"channels_last": True}
    for v in variants.values():
        assert v["images_per_second"]["selfsup"] > 0
        assert v["ratio_to_base"]["selfsup"] == pytest.approx(
            v["images_per_second"]["selfsup"] / result["images_per_second"]["selfsup"])  # one round
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--variant", "bad:colour=red"])


def test_cpu_training_defaults_stay_fp32_nchw_and_the_cheaper_step_is_opt_in():
    """precision=auto is fp32 and channels_last=None is NCHW on the CPU (the measured cheaper step, bf16 +
    NHWC, is opt-in); native_bf16 tells where --precision bf16 is native."""
    from selfsup.config import TrainConfig, resolve
    from selfsup.runs.train import loop_settings
    from selfsup.train.distributed import DistInfo
    from selfsup.train.loop import default_channels_last, native_bf16

    cpu = torch.device("cpu")
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert native_bf16(cpu) == native and native_bf16(torch.device("cuda")) and not native_bf16(torch.device("meta"))
    cfg = TrainConfig(width=0.0625, batch_size=8, image_size=12)
    settings = loop_settings(cfg, resolve(cfg, 12), DistInfo(device=cpu))
    assert settings.precision == "fp32"
    assert settings.channels_last is None and not default_channels_last(cpu) and default_channels_last(
        torch.device("cuda"))
    explicit = TrainConfig(width=0.0625, batch_size=8, image_size=12, precision="fp32", channels_last=False)
    settings = loop_settings(explicit, resolve(explicit, 12), DistInfo(device=cpu))
    assert settings.precision == "fp32" and settings.channels_last is False
