"""Self-supervised methods, by name."""

from selfsup.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.deepcluster import DeepClusterV2, DeepClusterV2Config
from selfsup.methods.dino import DINO, DINOConfig
from selfsup.methods.moco import MoCo, MoCoConfig
from selfsup.methods.nnclr import NNCLR, NNCLRConfig
from selfsup.methods.queue import FeatureQueue
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.methods.swav import SwAV, SwAVConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig

METHODS: dict[str, type[Method]] = {m.name: m for m in (BYOL, SimCLR, MoCo, SimSiam, BarlowTwins, VICReg, NNCLR,
                                                             SwAV, DINO, DeepClusterV2)}

__all__ = ["BYOL", "BYOLConfig", "BarlowTwins", "BarlowTwinsConfig", "FeatureQueue", "METHODS", "Method", "MoCo",
           "MoCoConfig", "NNCLR", "NNCLRConfig", "SimCLR", "SimCLRConfig", "SimSiam", "SimSiamConfig",
           "StepOutput", "VICReg", "VICRegConfig",
           "SwAV", "SwAVConfig", "DINO", "DINOConfig", "DeepClusterV2", "DeepClusterV2Config"]
