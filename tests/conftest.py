"""Shared test settings: few threads (CI has 2 cores), quiet logging, deterministic seeds."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
