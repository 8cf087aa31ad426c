"""Self-supervised methods, by name."""

from selfsup.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.bownet import BoWNet, BoWNetConfig
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.colorization import Colorization, ColorizationConfig
from selfsup.methods.cpc import CPC, CPCConfig
from selfsup.methods.deepcluster import DeepClusterV2, DeepClusterV2Config
from selfsup.methods.denoising import DenoisingAE, DenoisingAEConfig
from selfsup.methods.dino import DINO, DINOConfig
from selfsup.methods.exemplar import Exemplar, ExemplarConfig
from selfsup.methods.inpainting import Inpainting, InpaintingConfig
from selfsup.methods.jigsaw import Jigsaw, JigsawConfig
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.methods.moco import MoCo, MoCoConfig
from selfsup.methods.moco_v3 import MoCoV3, MoCoV3Config
from selfsup.methods.nnclr import NNCLR, NNCLRConfig
from selfsup.methods.npid import NPID, NPIDConfig
from selfsup.methods.obow import OBoW, OBoWConfig
from selfsup.methods.pirl import PIRL, PIRLConfig
from selfsup.methods.queue import FeatureQueue
from selfsup.methods.relative_patch import RelativePatch, RelativePatchConfig
from selfsup.methods.rotnet import RotNet, RotNetConfig
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.methods.swav import SwAV, SwAVConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig
from selfsup.methods.wmse import WMSE, WMSEConfig

METHODS: dict[str, type[Method]] = {m.name: m for m in (BYOL, SimCLR, MoCo, SimSiam, BarlowTwins, VICReg, NNCLR,
                                                             SwAV, DINO, DeepClusterV2, NPID, PIRL, WMSE, MoCoV3,
                                                             CPC, BoWNet, OBoW, RotNet, Jigsaw, RelativePatch,
                                                             Exemplar, Colorization, Inpainting, DenoisingAE, MAE)}

__all__ = ["BYOL", "BYOLConfig", "BarlowTwins", "BarlowTwinsConfig", "FeatureQueue", "METHODS", "Method", "MoCo",
           "MoCoConfig", "NNCLR", "NNCLRConfig", "SimCLR", "SimCLRConfig", "SimSiam", "SimSiamConfig",
           "StepOutput", "VICReg", "VICRegConfig",
           "SwAV", "SwAVConfig", "DINO", "DINOConfig", "DeepClusterV2", "DeepClusterV2Config",
           "NPID", "NPIDConfig", "PIRL", "PIRLConfig", "WMSE", "WMSEConfig", "MoCoV3", "MoCoV3Config",
           "CPC", "CPCConfig", "BoWNet", "BoWNetConfig", "OBoW", "OBoWConfig",
           "RotNet", "RotNetConfig", "Jigsaw", "JigsawConfig", "RelativePatch", "RelativePatchConfig", "Exemplar",
           "ExemplarConfig", "Colorization", "ColorizationConfig", "Inpainting", "InpaintingConfig", "DenoisingAE",
           "DenoisingAEConfig", "MAE", "MAEConfig"]
