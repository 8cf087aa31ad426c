"""Self-supervised methods, by name."""

from selfsup.methods.base import Method, StepOutput
from selfsup.methods.byol import BYOL, BYOLConfig

METHODS: dict[str, type[Method]] = {m.name: m for m in (BYOL,)}

__all__ = ["BYOL", "BYOLConfig", "METHODS", "Method", "StepOutput"]
