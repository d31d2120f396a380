"""The augmentation pipe (augment.py) and the adaptation of p in training."""

import math

import pytest
import torch

import augment
import config
import dataset
import train
from augment import AugmentPipe

SIZE = 32
ALL = [t for g in "bgcfno" for t in augment.GROUPS[g] if t not in ("hue", "saturation")]


def pattern(n=1, c=1, size=SIZE) -> torch.Tensor:
    """An asymmetric, smooth test image in [-1, 1]: an off-centre blob plus a gradient."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    img = torch.exp(-((xx - 0.3 * size) ** 2 + (yy - 0.4 * size) ** 2) / (0.05 * size ** 2)) + xx / (2 * size)
    img = img / img.max() * 2 - 1
    channels = [img if k == 0 else img.flip(k % 2) * (1 - 0.3 * k) for k in range(c)]   # colourful for RGB
    return torch.stack(channels).expand(n, c, size, size).clone()


def only(transform: str, img_channels: int = 1, p: float = 1.0) -> AugmentPipe:
    """A pipe with one transform enabled."""
    group = next(g for g, ts in augment.GROUPS.items() if transform in ts)
    pipe = AugmentPipe(img_channels=img_channels, pipeline=group, p=p)
    pipe.enabled = [transform]
    return pipe


def test_p_zero_is_bit_identical(device):
    for channels in (1, 3):
        x = torch.randn(6, channels, SIZE, SIZE, device=device)
        y = AugmentPipe(img_channels=channels, pipeline="bgcfno", p=0.0).to(device)(x)
        assert torch.equal(y, x)


@pytest.mark.parametrize("transform", ALL + ["hue", "saturation"])
def test_each_transform_at_p1_changes_images_sensibly(transform):
    channels = 3 if transform in ("hue", "saturation") else 1
    torch.manual_seed(1)
    x = pattern(16, channels)
    y = only(transform, channels)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    changed = (y - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.float().mean() >= 0.5, f"{transform} changed only {int(changed.sum())} of 16 images"
    assert y.abs().max() < 8                                        # no blow-up of the [-1, 1] range
    if transform in ("xflip", "rotate90", "xint", "cutout"):
        assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6   # moves or removes pixels only


def test_one_channel_pipe_skips_hue_and_saturation():
    assert "hue" not in AugmentPipe(img_channels=1, pipeline="bgc").enabled
    assert {"hue", "saturation"} <= set(AugmentPipe(img_channels=3, pipeline="bgc").enabled)


def test_gradients_flow_through_the_pipe_to_second_order(device):
    torch.manual_seed(0)
    x = pattern(8).to(device).requires_grad_(True)
    w = torch.randn(1, 1, 3, 3, device=device, requires_grad=True)
    y = torch.nn.functional.conv2d(AugmentPipe(pipeline="bgcfno", p=0.8).to(device)(x), w)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)   # as in R1
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    grad.square().sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("transform,expected", [
    ("xflip", 0.5), ("rotate90", 0.75), ("scale", 1.0), ("rotate", 1.0), ("aniso", 1.0), ("xfrac", 1.0),
    ("brightness", 1.0), ("contrast", 1.0), ("lumaflip", 0.5), ("imgfilter", 1.0), ("noise", 1.0),
])
def test_empirical_rate_matches_p(transform, expected):
    # expected: the share of chosen images that actually change (rotate90 draws k=0 a quarter of the
    # time, xflip and lumaflip flip half of the time, as in the official pipe).
    torch.manual_seed(2)
    p, n = 0.3, 3000
    y = only(transform, p=p)(pattern(n))
    changed = ((y - pattern(n)).flatten(1).abs().amax(dim=1) > 1e-4).float().mean().item()
    assert changed == pytest.approx(p * expected, abs=4 * math.sqrt(p * expected * (1 - p * expected) / n))


@pytest.mark.parametrize("p, share", [(1.0, 0.5), (0.5, 0.25)])
def test_xflip_mirrors_half_of_the_chosen_images(p, share):
    """Official semantics: chosen with probability p, then mirrored with probability 1/2."""
    torch.manual_seed(5)
    n = 4000
    x = pattern(n)
    y = only("xflip", p=p)(x)
    flipped = (y - x.flip(3)).flatten(1).abs().amax(dim=1) == 0
    kept = (y - x).flatten(1).abs().amax(dim=1) == 0
    assert bool((flipped | kept).all())                             # each image is itself or its mirror
    assert flipped.float().mean().item() == pytest.approx(share, abs=4 * math.sqrt(share * (1 - share) / n))


def test_xflip_and_rotate90_are_exact():
    torch.manual_seed(3)
    x = pattern(64)
    y = only("xflip")(x)
    assert all(torch.equal(img, x[0].flip(2)) or torch.equal(img, x[0]) for img in y)
    assert any(torch.equal(img, x[0].flip(2)) for img in y) and any(torch.equal(img, x[0]) for img in y)
    torch.manual_seed(3)
    y = only("rotate90")(x)
    candidates = [torch.rot90(x[0], k, dims=(1, 2)) for k in range(4)]
    assert all(any(torch.equal(img, c) for c in candidates) for img in y)
    assert not all(torch.equal(img, x[0]) for img in y)


def test_integer_translation_is_exact_with_reflection():
    torch.manual_seed(4)
    x = pattern(1).expand(8, 1, SIZE, SIZE).clone()
    y = only("xint")(x)
    for img in y:                                     # every output is a reflected integer shift of x
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                ix = augment._reflect_index(torch.arange(SIZE) - dx, SIZE)
                iy = augment._reflect_index(torch.arange(SIZE) - dy, SIZE)
                found |= torch.equal(img[0], x[0, 0][iy][:, ix])
        assert found


def test_geometric_resampling_is_centred_and_low_pass():
    x = pattern(1)
    lp = augment.windowed_sinc(12, 0.25)
    assert lp.sum().item() == pytest.approx(1.0)
    identity = augment.resample(x, torch.eye(3)[None], lp)
    assert (identity - x).abs().max() < 0.03                       # only a slight blur
    quarter = math.pi / 2
    c, s = math.cos(-quarter), math.sin(-quarter)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])[None]
    turned = augment.resample(x, rot, lp)
    assert (turned - torch.rot90(x, -1, dims=(2, 3))).abs().max() < 0.03
    shift = torch.tensor([[1.0, 0.0, -3 / SIZE], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None]
    moved = augment.resample(x, shift, lp)
    assert (moved - torch.roll(x, 3, dims=3))[..., 6:-6, 6:-6].abs().max() < 0.03
    # A pixel-level checkerboard is above the Nyquist limit of a rotated grid: it must come out grey,
    # not as a moire pattern (aliasing is what would let G learn the augmentation).
    checker = (torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :]) % 2 * 2.0 - 1
    small_turn = torch.tensor([[math.cos(0.3), -math.sin(0.3), 0.0], [math.sin(0.3), math.cos(0.3), 0.0],
                               [0.0, 0.0, 1.0]])[None]
    assert augment.resample(checker[None, None], small_turn, lp)[..., 4:-4, 4:-4].abs().max() < 0.2


def test_bad_pipe_arguments():
    with pytest.raises(ValueError, match="letters bgcfno"):
        AugmentPipe(pipeline="bgx")
    with pytest.raises(ValueError, match=r"expects square images \[N, 1, R, R\]"):
        AugmentPipe(p=0.5)(torch.randn(2, 3, 8, 8))


# ----------------------------------------------------------------------------------------------
# Adaptation of p in training

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("aug_data")
    for i in range(8):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    return dataset.ImageDataset(root, resolution=16, log=lambda m: None)


def make_trainer(data, **extra):
    args = dict(resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16, batch=4, aug="ada")
    args.update(extra)
    cfg = config.parse_args([f"--{k}={v}" for k, v in args.items()])
    return train.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)


def test_p_rises_when_d_is_overconfident_and_falls_otherwise(tiny_data):
    trainer = make_trainer(tiny_data, p=0.5)
    step = 4 * 4 / (trainer.cfg.ada_kimg * 1000)                  # batch * interval / (ada_kimg * 1000)
    trainer._ada_sum.fill_(16.0)                                  # r_t = 1 > 0.6
    trainer._ada_count = 16
    trainer.ada_update()
    assert trainer.ada_p == pytest.approx(0.5 + step)
    trainer._ada_sum.fill_(-16.0)                                 # r_t = -1 < 0.6
    trainer._ada_count = 16
    trainer.ada_update()
    trainer._ada_sum.fill_(4.0)                                   # r_t = 0.25 < 0.6
    trainer._ada_count = 16
    trainer.ada_update()
    assert trainer.ada_p == pytest.approx(0.5 - step)


def test_ada_in_the_loop_follows_d_outputs(tiny_data, monkeypatch):
    trainer = make_trainer(tiny_data, ada_kimg=0.1)               # fast adaptation for the test
    weight = next(trainer.D.parameters())
    monkeypatch.setattr(trainer.D, "forward",                     # always sure the image is real
                        lambda img, c=None: 5.0 + 1e-3 * img.mean(dim=[1, 2, 3])[:, None] * weight.sum())
    for _ in range(8):
        trainer.step()
    assert trainer.ada_p == pytest.approx(2 * 4 * 4 / 100)        # two updates of batch * 4 / 100 images
    calls = []
    real_pipe = trainer.augment_pipe.forward
    monkeypatch.setattr(trainer.augment_pipe, "forward", lambda x: (calls.append(x.shape[0]), real_pipe(x))[1])
    trainer.r1_step(trainer.data.batch([0, 1, 2, 3]))
    assert calls == [4]                                           # the R1 pass sees augmented reals too


def test_fixed_p_stays_and_noaug_has_no_pipe(tiny_data):
    fixed = make_trainer(tiny_data, aug="fixed", p=0.4)
    for _ in range(8):
        fixed.step()
    assert fixed.ada_p == 0.4 and fixed.augment_pipe.p == 0.4
    assert make_trainer(tiny_data, aug="noaug").augment_pipe is None
