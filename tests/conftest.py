"""Shared test fixtures. Tests run on the CPU; set TEST_DEVICE=cuda to run the same suite on a GPU."""

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
