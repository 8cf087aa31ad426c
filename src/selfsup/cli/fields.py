"""Dataclass fields as command-line flags (``batch_size`` -> ``--batch-size``), shared by the commands."""

from __future__ import annotations

import argparse
import typing
from typing import Any


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(annotation: Any) -> type:
    """``int | None`` -> int; ``bool`` -> bool; ``tuple``/``dict`` -> str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return base if base in (int, float, bool, str) else str


def add_field(parser: argparse.ArgumentParser, name: str, annotation: Any, default: Any,
               help_for: dict[str, str] | None = None) -> None:
    help_for = help_for or {}
    kind = base_type(annotation)
    help_text = help_for.get(name, "") + (f" (default: {default})" if default is not None else "")
    if kind is bool:
        parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                            help=help_text)
    else:
        parser.add_argument(flag(name), dest=name, type=kind, default=None, metavar=kind.__name__.upper(),
                            help=help_text)


