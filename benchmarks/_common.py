"""Helpers shared by the benchmark scripts (they run as ``python benchmarks/NAME.py``).

A script imports this module after putting its own folder on ``sys.path``:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import comma_list
"""

from __future__ import annotations

import argparse
from collections.abc import Collection


def comma_list(parser: argparse.ArgumentParser, option: str, value: str, known: Collection[str]) -> list[str]:
    """The names in the comma list ``value`` given to ``option``, each checked against ``known``.

    An unknown name is an argparse error (exit 2) naming it and listing the known names.
    """
    chosen = value.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen
