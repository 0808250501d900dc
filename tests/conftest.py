"""Fixtures the test files share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread while the test runs: small matrices, and the tests run two at a time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
