"""The evaluation protocols of the self-supervised papers, each run on the learned encoder *and* on
baselines (a random-init encoder of the same architecture, raw pixels, a supervised encoder).

=============  ==============================================================================
protocol       what it measures
=============  ==============================================================================
knn            weighted kNN (k=200, T=0.1) on frozen features (fast, cached features)
linear         linear probe on frozen, cached features (Adam; fast mode)
linear-aug     paper-style linear probe: frozen encoder in eval mode, crop+flip augmented
               training images, SGD Nesterov 0.9, cosine, no weight decay
               (:mod:`selfsup.evaluation.finetune`)
finetune       encoder + linear head trained with all labels (crop+flip, SGD Nesterov, cosine)
semi:P%        ``finetune`` on a class-balanced P% of the training labels (``semi:1%``,
               ``semi:10%``); the subset's indices are saved (:mod:`selfsup.evaluation.semi`)
supervised     the same backbone trained from scratch with all labels (the tables' top row),
               plus kNN and linear probe on its frozen features
fewshot        N-way K-shot episodes on classes never seen in pretraining, Prototypical
               Networks on frozen features (:mod:`selfsup.evaluation.fewshot`)
transfer       kNN, linear and finetune on another dataset than the run's
all            all of the above and one summary table like the papers'
=============  ==============================================================================

Scores are flat keys, fractions in [0, 1]: ``<metric>`` for the learned encoder and
``random_init_<metric>``, ``raw_pixels_<metric>``, ``supervised_<metric>`` for the baselines.

Fine-tuning a random-init encoder *is* supervised training from scratch: the random-init
baseline of ``finetune`` and ``semi`` is that run (and within ``all`` the same computation as
``supervised``, done once).

Other data than the run's (``transfer``, cross-domain ``fewshot``, any ``--data``) is resized to
the run's image size (antialiased bilinear) and its channels adapted to the encoder's: 1-channel
images are repeated to 3 channels, 3-channel images averaged to 1 (equal weights); it is
normalised with the *run's* channel mean/std, the statistics the encoder was trained with.

Nothing here knows of run folders: :mod:`selfsup.runs` builds an :class:`EvalSetup` (encoder,
random-init factory, data loader, normalisation) from one.

This module is the public face of the evaluation; the work is done by

=============  ==============================================================================
module         job
=============  ==============================================================================
options        protocol names, CPU-sized defaults (and the papers'), ``EvalOptions``
adapt          other data resized and channel-adapted to the encoder
evaluator      ``Evaluator``: every protocol on the learned encoder and its baselines, cached
tables         aligned text and Markdown tables of the scores
results        result files on disk (``evaluate_and_save``)
baselines      random-init and raw-pixel floors of the frozen-feature scores (training runs)
=============  ==============================================================================
"""

from __future__ import annotations

from selfsup.data.sources import data_slug
from selfsup.evaluation.adapt import adapt_images, adapt_split
from selfsup.evaluation.evaluator import EvalSetup, Evaluator, ProtocolResult
from selfsup.evaluation.options import (
    ALL_ORDER,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    PAPER_EPOCHS,
    PROTOCOLS,
    EvalOptions,
    ProtocolError,
    check_protocol,
    default_transfer_data,
    protocol_slug,
)
from selfsup.evaluation.results import evaluate_and_save
from selfsup.evaluation.tables import COLUMNS, columns, format_result, summary_markdown, summary_rows, summary_text

__all__ = ["PROTOCOLS", "ALL_ORDER", "DEFAULT_EPOCHS", "DEFAULT_LR", "PAPER_EPOCHS", "EvalOptions", "EvalSetup",
           "ProtocolError", "ProtocolResult", "Evaluator", "adapt_images", "adapt_split", "default_transfer_data",
           "protocol_slug", "check_protocol", "format_result", "summary_rows", "summary_markdown", "summary_text",
           "columns", "COLUMNS", "evaluate_and_save", "data_slug"]
