"""Shared by the test files of the kit's modules: torch on one thread while their tests run.

Their models are tiny (a few thousand parameters, 12-64 px images). For operations that small a
second intra-op thread costs more than it gives, and on a shared or loaded 2-core machine much
more: a tiny CNN's forward and backward measured 4 ms on one thread and 20-70 ms on two. A test
module that imports ``torch_one_thread`` runs on one thread and gives the previous setting back
at its end, so other test files see the thread count they expect.
"""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread():
    """Module-scoped and autouse: set up before the module's other fixtures (its run folders)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
