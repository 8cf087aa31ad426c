"""Networks: backbones, heads and normalisation layers."""

from selfsup.models.backbones import BACKBONES, ResNetBackbone, build_backbone
from selfsup.models.heads import mlp
from selfsup.models.norm import NORMS

__all__ = ["BACKBONES", "NORMS", "ResNetBackbone", "build_backbone", "mlp"]
