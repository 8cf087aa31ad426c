"""CrossTransformers: spatially-aware few-shot transfer (Doersch, Gupta & Zisserman, NeurIPS 2020).

Prototypical Networks compare one pooled vector per image; a CrossTransformer keeps the backbone's
feature map ``Phi(x)`` of ``H x W`` positions and builds, for each query image and each class, a
prototype *aligned to that query* (Sec. 3):

    k_jm = Gamma Phi(x_j)_m,  q_p = Gamma Phi(x_q)_p         (shared 1x1 key/query head, d_k = 128)
    v_jm = Lambda Phi(x_j)_m, w_p = Lambda Phi(x_q)_p        (1x1 value head, d_v = 128)
    a_jmp = exp(k_jm . q_p / sqrt(d_k)) / sum_{j' in S_c, m'} exp(k_j'm' . q_p / sqrt(d_k))     (Eq. 2)
    t_cp = sum_{j in S_c, m} a_jmp v_jm                     (Eq. 3: the query-aligned prototype of class c)
    d(x_q, c) = 1/(H W) sum_p ||w_p - t_cp||^2              (Eq. 4), logits = -d, cross-entropy over queries

The attention is normalised jointly over all positions of all support images of a class. With one
position per image (``H = W = 1``) and one shot, or with keys that do not vary, ``t_c`` is the class
mean of the values and this is a Prototypical Network on ``Lambda Phi``.

**SimCLR episodes** (Sec. 4), the paper's fix for supervision collapse, are a property of the
episodes, not of the network: ``simclr_episodes=0.5`` of :mod:`selfsup.runs.episodic` (any
episodic method takes them; see :mod:`selfsup.data.episodes`).

Defaults (Sec. 5 and the official Meta-Dataset configuration ``crosstransformer_imagenet.gin``):
ResNet-34 at 224 px with a stride-16 last stage (``high_res``), d_k = d_v = 128, Adam lr 6e-4 decayed
by 0.915 every 2000 updates, weight decay 8.86e-5, 100k updates (400k with SimCLR episodes),
Meta-Dataset's variable-way, variable-shot episodes, a backbone initialised from ImageNet
classification. The official trainer divides each gradient by its norm before Adam
(``normalized_gradient_descent``); Adam is invariant to a constant gradient scale, and this
implementation leaves gradients as they are. Small-image recipe (28-px Fashion-MNIST, CPU): the
ResNet-18 small-image stem's last stage at its usual stride (4 x 4 maps; ``high_res`` gives 7 x 7 and
was measured 1.5 points better on novel Fashion-MNIST classes after 200 episodes from BYOL, 48.4 / 68.9%
vs 46.9 / 67.5% at 1- / 5-shot, for 1.6-2x the training time), the same heads, 5-way 5-shot episodes
(five base classes) and the lr on a cosine over a few hundred episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.crosstransformer_head import CrossTransformerHead, dilate_last_stage, spatial_features
from selfsup.methods.protonet import EpisodicMethod


@dataclass
class CrossTransformerConfig:
    """Paper defaults (Doersch et al. 2020, Sec. 3 and 5; official ``CrossTransformerLearner``)."""

    key_dim: int = 128  # d_k of the shared key/query head
    value_dim: int = 128  # d_v of the value head
    high_res: bool = True  # last ResNet stage at stride 1, dilated (the paper's stride-16 ResNet-34)

    def __post_init__(self) -> None:
        if self.key_dim < 1 or self.value_dim < 1:
            raise ValueError(f"key_dim and value_dim must be positive, got {self.key_dim} and {self.value_dim}")


class CrossTransformer(EpisodicMethod):
    name = "crosstransformer"
    Config = CrossTransformerConfig
    OPTIMIZER = {"lr": 6e-4, "weight_decay": 8.86e-5, "schedule": "step", "decay_every": 2000, "decay_rate": 0.915}
    SMALL_IMAGE_OPTIMIZER = {"schedule": "cosine"}
    SMALL_IMAGE_RECIPE = {"high_res": False}

    def __init__(self, encoder: nn.Module, config: CrossTransformerConfig) -> None:
        super().__init__(encoder, config)
        if config.high_res:
            dilate_last_stage(encoder)
        self.head = CrossTransformerHead(encoder.stage_dims[-1], config.key_dim, config.value_dim)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``[B, C, H, W]``, not pooled."""
        return spatial_features(self.encoder, images)

    def value_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, d_v]``: the value head's output averaged over positions (what the distances compare), for
        the nearest-neighbour analysis in the classifier's own space."""
        return self.head.value(self.feature_maps(images)).mean(dim=(2, 3))

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               n_way: int) -> torch.Tensor:
        s, q = self._support_and_query(support, query, self.feature_maps)
        return self.head(s, support_labels, q, n_way)
