"""Shared test fixtures: the device, seeding, small data sets (random PNGs, the OASIS layout), tiny training
runs and their checkpoints, and predict.main with captured output. Tests share helpers only through these
fixtures, never by importing another test file; reference implementations live in tests/reference.py.

Tests run on the CPU; set TEST_DEVICE=cuda to run the same suite on a GPU. Tests marked `slow` (pytest.ini)
are left out of the quick loop `python -m pytest -q -m "not slow"`; a plain `python -m pytest -q` runs all."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
import dataset
import predict
import train


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


# ----------------------------------------------------------------------------------------------
# Data sets on disk

def _slice_pixels(case: int, k: int, size: int) -> np.ndarray:
    rng = np.random.default_rng([case, k])
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _make_oasis(root: Path, subjects=(2, 1, 1), slices: int = 2, size: int = 32) -> Path:
    case = 0
    for split, count in zip(dataset.SPLITS, subjects):
        img_dir, seg_dir = root / f"keras_png_slices_{split}", root / f"keras_png_slices_seg_{split}"
        img_dir.mkdir(parents=True)
        seg_dir.mkdir(parents=True)
        for _ in range(count):
            case += 1
            for k in range(slices):
                Image.fromarray(_slice_pixels(case, k, size)).save(img_dir / f"case_{case:03d}_slice_{k}.nii.png")
                labels = (np.arange(size * size).reshape(size, size) + case + k) % 4
                Image.fromarray(np.asarray(dataset.MASK_LEVELS, np.uint8)[labels]).save(
                    seg_dir / f"seg_{case:03d}_slice_{k}.nii.png")
    return root


@pytest.fixture(scope="session")
def slice_pixels():
    """slice_pixels(case, k, size) -> [size, size] uint8: the distinct, deterministic image make_oasis writes for
    slice k of subject `case` (subjects count from 1 across the train, validate and test splits)."""
    return _slice_pixels


@pytest.fixture(scope="session")
def make_oasis():
    """make_oasis(root, subjects=(2, 1, 1), slices=2, size=32) -> root: the OASIS layout, with
    case_XXX_slice_K.nii.png images and seg_XXX_slice_K.nii.png masks (4 levels) for `subjects` subjects in
    the train, validate and test splits."""
    return _make_oasis


# ----------------------------------------------------------------------------------------------
# Tiny training runs

def _tiny_args(images: Path, outdir: Path, **extra) -> list:
    args = dict(data=images, outdir=outdir, resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                batch=4, tick_kimg=0.04, snap=2, checkpoint_minutes=0, grid="4x2")
    args.update(extra)
    return [f"--{k}={v}" for k, v in args.items()]


def _run_train(args) -> Path:
    cfg = config.parse_args(args)
    return train.train(cfg, config.parse_given(args))


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs"
    assert a["cur_nimg"] == b["cur_nimg"]
    assert torch.equal(a["pl_mean"], b["pl_mean"])


def _make_trainer(images, device=torch.device("cpu"), **extra) -> train.Trainer:
    cfg = config.parse_args(_tiny_args(images, "unused", **extra))
    data = dataset.ImageDataset(images, resolution=16, mirror=cfg.mirror, log=lambda m: None)
    return train.Trainer(cfg, device, data=data, log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_args():
    """tiny_args(images, outdir, **overrides) -> ["--key=value", ...]: a 16 px, channel_max 16 training run
    (batch 4, ticks of 40 images, a snapshot every 2 ticks); keyword arguments add or replace options."""
    return _tiny_args


@pytest.fixture(scope="session")
def run_train():
    """run_train(args) -> run folder: train.train on the parsed command line, in this process."""
    return _run_train


@pytest.fixture(scope="session")
def weights():
    """weights(path) -> dict: a checkpoint or snapshot loaded the safe way (weights_only=True)."""
    return _weights


@pytest.fixture(scope="session")
def assert_same_weights():
    """assert_same_weights(a, b): two checkpoint dicts hold bit-identical G, D and G_ema, image counts and
    path length means."""
    return _assert_same_weights


@pytest.fixture(scope="session")
def make_trainer():
    """make_trainer(images, device=cpu, **overrides) -> train.Trainer built from tiny_args on `images`."""
    return _make_trainer


# ----------------------------------------------------------------------------------------------
# Command lines

def _predict_main(capsys, *args):
    code = predict.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="session")
def predict_main():
    """predict_main(capsys, *args) -> (exit code, stdout, stderr) of predict.main; arguments may be paths."""
    return _predict_main
