"""Shared fixtures; the helpers they use, and tests import, are in helpers.py."""

import os
from pathlib import Path

# Under pytest-xdist (`make test` runs one worker per core) each worker keeps to one thread, and
# idle OpenMP threads sleep instead of spinning: several processes each spinning on every core
# run 5-50x slower on a 2-core machine (measured). Set before torch starts its thread pool.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import one_torch_thread, train_tiny_run  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests (see ``helpers.one_torch_thread``)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The folder of ``helpers.TINY_RUN``, trained once per test process and shared read-only: a test
    that changes a run folder works on ``copy_run(tiny_run, tmp_path)``."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny-run"))
