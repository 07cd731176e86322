"""Shared test settings: one torch thread (tiny models gain nothing from more), deterministic seeds."""

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)  # at import, so module-scoped fixtures run on one thread too


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """On a busy 2-core machine OpenMP barriers make 2 threads far slower than 1 for these tiny models; code
    under test may change the count (``--threads``, ``run.threads``), so every test starts at one."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
