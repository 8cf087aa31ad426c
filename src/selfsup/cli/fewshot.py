"""``selfsup fewshot``: episodic training on base classes, scored on novel ones (``runs.episodic.train_fewshot``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from selfsup.cli.fields import add_field
from selfsup.runs.episodic import EpisodicConfig, train_fewshot

HELP = {"method": "protonet | crosstransformer",
        "init": "a selfsup run folder whose encoder to start from (default: from scratch)",
        "holdout_classes": "the novel classes (e.g. 5-9): never in a training episode; the test is on them",
        "simclr_episodes": "fraction of SimCLR episodes: each support image its own class (the paper: 0.5)"}


def add_parsers(sub: Any) -> None:
    """Add the ``fewshot`` sub-parser: every :class:`EpisodicConfig` field is a flag."""
    fs = sub.add_parser("fewshot", help="train ProtoNet / CrossTransformer episodically, score on novel classes",
                        description="Episodic training (Prototypical Networks or CrossTransformers, optionally "
                                    "with SimCLR episodes) from scratch or from a selfsup run, on the base "
                                    "classes; scored with 95% intervals on the held-out classes, with the "
                                    "supervision-collapse measure.")
    defaults, hints = EpisodicConfig(), typing.get_type_hints(EpisodicConfig)
    for field in dataclasses.fields(EpisodicConfig):
        add_field(fs, field.name, hints[field.name], getattr(defaults, field.name), HELP)


def cmd_fewshot(args: argparse.Namespace) -> int:
    summary = train_fewshot(**{k: v for k, v in vars(args).items() if k != "command" and v is not None})
    print({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"fewshot": cmd_fewshot}
