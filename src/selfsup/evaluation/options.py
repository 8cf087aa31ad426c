"""What can be asked of the evaluation: protocol names, their CPU-sized defaults, and the options.

Epochs and learning rates default to values that keep ``selfsup eval RUN --protocol all`` within
minutes on 2 CPU cores; :data:`PAPER_EPOCHS` records the papers' values (BYOL App. C.1, SimCLR
App. B.5/B.6, MoCo), which ``epochs=`` / ``--epochs`` select. The peak learning rates are for a
batch of 256 and scale linearly with the batch (SimCLR's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from selfsup.evaluation.fewshot import METRICS as FEWSHOT_METRICS
from selfsup.evaluation.semi import parse_semi, semi_slug

__all__ = ["PROTOCOLS", "ALL_ORDER", "DEFAULT_EPOCHS", "PAPER_EPOCHS", "DEFAULT_LR", "ProtocolError",
           "check_protocol", "protocol_slug", "default_transfer_data", "EvalOptions"]

PROTOCOLS: tuple[str, ...] = ("knn", "linear", "linear-aug", "finetune", "semi:1%", "semi:10%", "supervised",
                              "fewshot", "transfer", "all")
ALL_ORDER: tuple[str, ...] = ("knn", "linear", "linear-aug", "supervised", "finetune", "semi:1%", "semi:10%",
                              "fewshot", "transfer")

# CPU-sized epochs: `selfsup eval RUN --protocol all` on the README's Fashion-MNIST run (10k
# images, ResNet-18 x0.25, 28 px) stays within minutes on 2 CPU cores. The papers' values are in
# PAPER_EPOCHS; pass `epochs=` / `--epochs` to use them.
DEFAULT_EPOCHS: dict[str, int] = {"linear-aug": 5, "finetune": 3, "supervised": 3, "semi:1%": 30, "semi:10%": 10,
                                  "semi": 10, "transfer": 5}  # "semi": any other semi:P%
PAPER_EPOCHS: dict[str, str] = {
    "linear-aug": "80 (BYOL App. C.1), 90 (SimCLR App. B.6), 100 (MoCo)",
    "finetune": "SimCLR/BYOL transfer fine-tuning: 20k steps; ImageNet 100% labels: 30 epochs (SimCLR)",
    "supervised": "90 epochs (standard ImageNet ResNet schedule)",
    "semi:1%": "60 epochs (SimCLR App. B.5)", "semi:10%": "30 epochs (SimCLR App. B.5)",
}
# Peak learning rates for batch 256 (scaled linearly with the batch): SimCLR's fine-tuning lr is
# 0.05 x batch/256; the linear probe sits on BatchNorm-standardised features (see finetune.py).
DEFAULT_LR: dict[str, float] = {"linear-aug": 0.5, "finetune": 0.05}


class ProtocolError(ValueError):
    """A protocol that cannot run with these options or this data (one-line message)."""


def check_protocol(protocol: str) -> str:
    """The canonical name of ``protocol``; ``semi:P%`` accepts any percentage in (0, 100]."""
    name = protocol.strip().lower()
    if name in PROTOCOLS or parse_semi(name) is not None:
        return name
    raise ProtocolError(f"--protocol: unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)} "
                        "(semi:P% takes any percentage)")


def protocol_slug(protocol: str) -> str:
    """File-name form: ``semi:1%`` -> ``semi_1pct``; others unchanged."""
    fraction = parse_semi(protocol)
    return semi_slug(fraction) if fraction is not None else protocol


def default_transfer_data(run_data: str) -> str:
    """The cross-domain target when none is given: digits, or Fashion-MNIST for a digits run."""
    return "fashion-mnist" if run_data.strip().lower() == "digits" else "digits"


@dataclass
class EvalOptions:
    """Protocol options; ``None`` means the protocol's CPU-sized default (``DEFAULT_EPOCHS`` etc.)."""

    epochs: int | None = None  # every trained protocol (linear-aug, finetune, semi, supervised, transfer)
    batch_size: int = 256
    lr: float | None = None  # peak lr for batch 256 (linear-aug: 0.5; finetune/semi/supervised/transfer: 0.05)
    episodes: int = 600
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    metric: str = "euclidean"  # few-shot prototype distance: euclidean (squared, Snell et al.) or cosine
    transfer_data: str | None = None  # transfer target inside `all` (default: default_transfer_data)
    seed: int | None = None  # default: the run's seed

    def check(self) -> None:
        """Raise :class:`ProtocolError` naming the command-line option of the first bad value."""
        def bad(option: str, message: str) -> None:
            raise ProtocolError(f"--{option}: {message}")

        if self.epochs is not None and self.epochs < 1:
            bad("epochs", f"must be a positive integer, got {self.epochs}")
        if self.batch_size < 2:
            bad("batch-size", f"must be at least 2, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            bad("lr", f"must be positive, got {self.lr}")
        if self.episodes < 1:
            bad("episodes", f"must be positive, got {self.episodes}")
        if self.ways < 2:
            bad("ways", f"must be at least 2, got {self.ways}")
        if not self.shots or min(self.shots) < 1:
            bad("shots", f"must be positive integers, got {self.shots}")
        if self.queries < 1:
            bad("queries", f"must be positive, got {self.queries}")
        if self.metric not in FEWSHOT_METRICS:
            bad("metric", f"unknown metric {self.metric!r}; choose from {', '.join(FEWSHOT_METRICS)}")
