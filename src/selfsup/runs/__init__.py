"""The run folder: building a run's pieces, writing and loading the folder, training and scoring it.

``selfsup.api`` composes these for users; reporting and hand-off read runs through them.
"""

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

__all__ = ["Run", "build_method", "channel_stats", "default_init_differs", "load_run", "load_split",
           "merge_options", "random_init_encoder", "read_run_config", "stored_config", "training_views", "versions"]
