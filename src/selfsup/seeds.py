"""Seeds derived from a tuple of values: independent, reproducible random streams for any layer."""

from __future__ import annotations

import hashlib


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values: independent streams for (seed, kind, index)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1
