"""Shared test fixtures. Tests run on the CPU; set TEST_DEVICE=cuda to run the same suite on a GPU."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """20 small random grayscale PNGs."""
    root = tmp_path_factory.mktemp("train_data") / "imgs"
    root.mkdir()
    for i in range(20):
        pixels = (np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
    return root
