"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tiny models: as fast on an idle machine, and on a busy 2-core one it
    avoids OpenMP spin-waits that make several threads 5-50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
