"""Every method's loss as a pure function of embeddings, one file per family; each names its paper
and equation."""

from selfsup.methods.losses.bow import (
                                       bag_of_words,
                                       bow_cross_entropy,
                                       bow_kl_loss,
                                       hard_assignment,
                                       soft_assignment,
                                       squared_distances,
)
from selfsup.methods.losses.clustering import IGNORE, deepcluster_loss, dino_loss, swav_loss
from selfsup.methods.losses.contrastive import infonce_queue_loss, nnclr_loss, nt_xent_gathered_loss, nt_xent_loss
from selfsup.methods.losses.fewshot import (
                                           class_means,
                                           crosstransformer_attention,
                                           crosstransformer_logits,
                                           prototypical_logits,
)
from selfsup.methods.losses.memory import nce_logits, nce_loss, nonparametric_softmax_loss
from selfsup.methods.losses.momentum_contrast import moco_v3_loss
from selfsup.methods.losses.precision import at_least_float32
from selfsup.methods.losses.predictive import byol_loss, negative_cosine_loss
from selfsup.methods.losses.predictive_coding import cpc_infonce_loss, cpc_labels
from selfsup.methods.losses.pretext import pretext_accuracy, pretext_classification_loss
from selfsup.methods.losses.reconstruction import (
                                                  colorization_loss,
                                                  context_encoder_loss,
                                                  denoising_loss,
                                                  masked_patch_loss,
                                                  normalize_patches,
)
from selfsup.methods.losses.redundancy import barlow_twins_loss, off_diagonal, vicreg_loss, vicreg_terms
from selfsup.methods.losses.whitening import cholesky_whitening, normalized_mse, wmse_loss

__all__ = ["IGNORE", "at_least_float32", "barlow_twins_loss", "byol_loss", "deepcluster_loss", "dino_loss",
           "infonce_queue_loss", "negative_cosine_loss", "nnclr_loss", "nt_xent_gathered_loss", "nt_xent_loss",
           "off_diagonal", "swav_loss", "vicreg_loss", "vicreg_terms",
           "class_means", "crosstransformer_attention", "crosstransformer_logits", "prototypical_logits",
           "nce_logits", "nce_loss", "nonparametric_softmax_loss", "moco_v3_loss", "cholesky_whitening",
           "normalized_mse", "wmse_loss",
           "bag_of_words", "bow_cross_entropy", "bow_kl_loss", "hard_assignment", "soft_assignment",
           "squared_distances", "cpc_infonce_loss", "cpc_labels",
           "colorization_loss", "context_encoder_loss", "denoising_loss", "masked_patch_loss", "normalize_patches",
           "pretext_accuracy", "pretext_classification_loss"]
