"""The segmenter and the TSTR protocol (segment.py) on tiny fixtures."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segment


def separable(n: int, size: int = 16, seed: int = 0):
    """Images whose class is written in their intensity: blocks of labels 0..3 at four grey levels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, size // 4, size // 4), generator=g)
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2).to(torch.uint8)       # [N, R, R]
    images = (torch.tensor([10, 90, 170, 250])[labels.long()] + torch.randint(-8, 9, labels.shape, generator=g))
    return images.clamp(0, 255).to(torch.uint8)[:, None], labels


def test_dice_scores_by_hand():
    t = torch.tensor([[[0, 1, 2, 3]]], dtype=torch.uint8)
    p = torch.tensor([[[0, 1, 3, 3]]], dtype=torch.uint8)
    d = segment.dice_scores(p, t)
    assert d["CSF"] == 1.0 and d["GM"] == 0.0 and d["WM"] == pytest.approx(2 / 3)
    assert d["mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert segment.dice_scores(t, t)["mean"] == 1.0


def test_unet_shapes_and_bad_sizes():
    net = segment.UNet(base=4, depth=2)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 18, 18))


@pytest.mark.slow
def test_unet_learns_a_separable_fixture():
    images, labels = separable(48)
    test_images, test_labels = separable(16, seed=1)
    model = segment.train_segmenter(images, labels, iters=150, batch=8, lr=3e-3, seed=0, base=8, depth=2)
    assert segment.evaluate(model, test_images, test_labels)["mean"] > 0.95


def test_training_is_deterministic_for_a_seed():
    images, labels = separable(8)
    a = segment.train_segmenter(images, labels, iters=3, batch=4, seed=5, base=4, depth=2)
    b = segment.train_segmenter(images, labels, iters=3, batch=4, seed=5, base=4, depth=2)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_tstr_writes_three_rows_ratio_and_agreement(tmp_path, capsys, make_oasis):
    real = make_oasis(tmp_path / "real", subjects=(2, 1, 1), slices=4, size=16)
    synthetic = make_oasis(tmp_path / "synthetic", subjects=(2, 0, 0), slices=4, size=16)
    code = segment.main(["tstr", "--real", str(real), "--synthetic", str(synthetic), "--outdir", str(tmp_path / "o"),
                         "--iters", "4", "--batch", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(b) / (a) mean Dice:" in out and "agreement: (a) on synthetic pairs" in out
    result = json.loads((tmp_path / "o" / "tstr.json").read_text())
    assert set(result["dice"]) == {"real", "synthetic", "real + synthetic"}
    assert result["pairs"] == {"real": 8, "synthetic": 8, "test": 4} and result["resolution"] == 16
    assert result["synthetic_over_real"] == pytest.approx(result["dice"]["synthetic"]["mean"] /
                                                          result["dice"]["real"]["mean"])
    # The synthetic folder holds the real training pairs, so both trainings (same seed) score the same, and the
    # agreement is (a) scored on its own training pairs.
    assert result["dice"]["synthetic"] == result["dice"]["real"] and result["synthetic_over_real"] == 1
    assert set(result["agreement"]) == set(result["dice"]["real"])
    assert (tmp_path / "o" / "tstr.md").read_text().count("|") > 20


def test_errors_are_one_line(tmp_path, capsys, make_oasis):
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(plain / "a.png")
    real = make_oasis(tmp_path / "real", subjects=(1, 1, 1), slices=2, size=16)
    cases = [(["tstr", "--real", str(real), "--synthetic", str(plain), "--outdir", str(tmp_path / "o")], 1,
              "no mask folder"),
             (["train", "--train", str(tmp_path / "nowhere"), "--test", str(real)], 1, "--train"),
             (["train", "--train", str(real), "--test", str(real), "--iters", "0"], 2, "--iters must be >= 1"),
             (["train", "--train", str(real), "--test", str(real), "--resolution", "20"], 2, "power of two"),
             (["tstr", "--real", str(real)], 2, "required")]
    for args, code, message in cases:
        assert segment.main(args) == code, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
