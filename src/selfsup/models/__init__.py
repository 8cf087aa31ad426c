"""Networks: backbones, heads and normalisation layers."""

from selfsup.models.backbones import BACKBONES, ResNetBackbone, StageEncoder, build_backbone, encoder_at_stage
from selfsup.models.heads import mlp
from selfsup.models.norm import NORMS

__all__ = ["BACKBONES", "NORMS", "ResNetBackbone", "StageEncoder", "build_backbone", "encoder_at_stage", "mlp"]
