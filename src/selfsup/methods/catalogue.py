"""What each registered method is: its paper, year, family and what it needs (``selfsup methods``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    paper: str  # authors, venue
    year: int
    family: str
    needs: tuple[str, ...] = ()  # negatives, momentum encoder, memory bank, multi-crop, a teacher run, ...


FAMILIES = ("contrastive", "distillation", "clustering", "redundancy reduction", "pretext", "masked modelling",
            "memory bank", "predictive coding", "feature reconstruction", "few-shot")

CATALOGUE: dict[str, MethodInfo] = {
    "byol": MethodInfo("Grill et al., NeurIPS", 2020, "distillation", ("momentum encoder",)),
    "simclr": MethodInfo("Chen et al., ICML", 2020, "contrastive", ("negatives",)),
    "moco": MethodInfo("Chen et al. (MoCo v2), arXiv", 2020, "contrastive",
                       ("negatives", "momentum encoder", "queue")),
    "simsiam": MethodInfo("Chen & He, CVPR", 2021, "distillation"),
    "barlow_twins": MethodInfo("Zbontar et al., ICML", 2021, "redundancy reduction"),
    "vicreg": MethodInfo("Bardes et al., ICLR", 2022, "redundancy reduction"),
    "nnclr": MethodInfo("Dwibedi et al., ICCV", 2021, "contrastive", ("negatives", "queue")),
    "swav": MethodInfo("Caron et al., NeurIPS", 2020, "clustering", ("multi-crop",)),
    "dino": MethodInfo("Caron et al., ICCV", 2021, "distillation", ("momentum encoder", "multi-crop")),
    "deepcluster_v2": MethodInfo("Caron et al., NeurIPS", 2020, "clustering", ("multi-crop", "memory bank")),
    "npid": MethodInfo("Wu et al., CVPR", 2018, "memory bank", ("negatives", "memory bank")),
    "pirl": MethodInfo("Misra & van der Maaten, CVPR", 2020, "memory bank", ("negatives", "memory bank")),
    "wmse": MethodInfo("Ermolov et al., ICML", 2021, "redundancy reduction"),
    "moco_v3": MethodInfo("Chen, Xie & He, ICCV", 2021, "contrastive", ("negatives", "momentum encoder")),
    "cpc_v2": MethodInfo("Henaff et al., ICML", 2020, "predictive coding", ("negatives",)),
    "bownet": MethodInfo("Gidaris et al., CVPR", 2020, "feature reconstruction", ("a teacher run",)),
    "obow": MethodInfo("Gidaris et al., CVPR", 2021, "feature reconstruction", ("momentum encoder", "multi-crop")),
    "rotnet": MethodInfo("Gidaris et al., ICLR", 2018, "pretext"),
    "jigsaw": MethodInfo("Noroozi & Favaro, ECCV", 2016, "pretext"),
    "relative_patch": MethodInfo("Doersch et al., ICCV", 2015, "pretext"),
    "exemplar": MethodInfo("Dosovitskiy et al., NeurIPS / TPAMI", 2014, "pretext", ("one class per image",)),
    "colorization": MethodInfo("Zhang et al., ECCV", 2016, "pretext", ("colour images",)),
    "inpainting": MethodInfo("Pathak et al., CVPR", 2016, "pretext", ("decoder",)),
    "denoising_ae": MethodInfo("Vincent et al., ICML", 2008, "pretext", ("decoder",)),
    "mae": MethodInfo("He et al., CVPR", 2022, "masked modelling", ("a ViT backbone",)),
    "protonet": MethodInfo("Snell et al., NeurIPS", 2017, "few-shot", ("labels", "episodes")),
    "crosstransformer": MethodInfo("Doersch, Gupta & Zisserman, NeurIPS", 2020, "few-shot", ("labels", "episodes")),
}
