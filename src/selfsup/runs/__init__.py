"""The run folder: building a run's pieces, writing and loading the folder, training and scoring it.

``selfsup.api`` composes these for users; reporting and hand-off read runs through them.
"""

from selfsup.methods.base import set_run_encoder_loader
from selfsup.runs.build import (
    build_method,
    channel_stats,
    default_init_differs,
    load_split,
    merge_options,
    random_init_encoder,
    training_views,
)
from selfsup.runs.folder import Run, load_run, read_run_config, stored_config, versions

set_run_encoder_loader(lambda run_dir: load_run(run_dir).encoder)  # BoWNet's teacher runs

__all__ = ["Run", "build_method", "channel_stats", "default_init_differs", "load_run", "load_split",
           "merge_options", "random_init_encoder", "read_run_config", "stored_config", "training_views", "versions"]
