"""A short BYOL run on real images learns: its frozen features beat a random-init encoder's.

Fashion-MNIST: 5,000 training images, 8 epochs, batch 64, ResNet-18 at width 0.25, the small-image
recipe with zero-initialised residual blocks, evaluated on the 10,000 held-out test images against
two random-init encoders: the run's own initialisation, and torchvision's default one (every block
active at init: the stronger kNN floor on Fashion-MNIST). Measured 2026-11-23, one thread, seeds
0 / 1 / 2 (BENCHMARKS.md, "Longer runs and other seeds"): kNN 66.08 / 63.35 / 66.88 against
47.25 / 48.37 / 49.08 (same init) and 63.67 / 59.55 / 63.70 (default init); linear 77.63 / 77.54 /
79.66 against 61.70 / 62.41 / 63.74 (same init).

Digits stand in when Fashion-MNIST is absent (width 0.125, 10 epochs, batch 128, seed 0): kNN 55.43
against 17.83 (same init), linear 74.65 against 20.06; there BYOL does not reach the default-init
encoder's kNN (55.71) in so short a run, so only the same-init floor is asserted.
"""

import torch

from selfsup.api import _load_split, baseline_scores, channel_stats, train
from selfsup.config import TrainConfig, resolve
from selfsup.data.sources import fashion_mnist_available

FASHION_MNIST = dict(data="fashion-mnist", subset=5000, width=0.25, epochs=8, batch_size=64)
DIGITS = dict(data="digits", width=0.125, epochs=10, batch_size=128)


def test_short_byol_run_beats_random_init_on_held_out_images(tmp_path, one_thread):
    on_fmnist = fashion_mnist_available()
    settings = dict(method="byol", backbone="resnet18", seed=0, **(FASHION_MNIST if on_fmnist else DIGITS))
    summary = train(**settings, zero_init_residual=True, out=str(tmp_path / "run"), progress=False)
    assert summary["linear_top1"] >= summary["random_init_linear_top1"] + 0.05, summary
    assert summary["knn_top1"] >= summary["random_init_knn_top1"] + 0.08, summary
    assert summary["final_metrics"]["std_scaled"] > 0.4, summary  # not collapsed
    if not on_fmnist:
        return

    default_init = TrainConfig(**settings, zero_init_residual=False)
    split = _load_split(default_init)
    floor = baseline_scores(default_init, resolve(default_init, split.train.image_size), split,
                            *channel_stats(split), torch.device("cpu"), ["knn"])
    assert summary["knn_top1"] >= floor["random_init_knn_top1"] + 0.01, (summary["knn_top1"], floor)
