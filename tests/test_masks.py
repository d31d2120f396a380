"""Image + tissue-mask pairs (--masks): generation, augmentation, training, resume, errors."""

import pytest
import torch

import augment
import config
import dataset
import modules
import runs
import train

K = config.MASK_CLASSES


@pytest.fixture(scope="module")
def oasis(tmp_path_factory, make_oasis):
    return make_oasis(tmp_path_factory.mktemp("masks") / "oasis", subjects=(3, 1, 1), slices=4, size=16)


def test_generated_masks_hold_only_the_four_classes(device):
    G = modules.Generator(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16,
                          mask_classes=K).to(device)
    for noise_mode in ("random", "const"):
        x = G(torch.randn(6, 16, device=device) * 5, noise_mode=noise_mode)      # large z: extreme logits too
        assert x.shape == (6, 1 + K, 16, 16) and torch.isfinite(x).all()
        onehot = (x[:, 1:] + 1) / 2                                             # exactly one class per pixel
        assert set(onehot.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(onehot.sum(dim=1), torch.ones(6, 16, 16, device=device))
        labels = dataset.mask_labels(x[:, 1:])
        assert labels.dtype == torch.uint8 and set(labels.unique().tolist()) <= {0, 1, 2, 3}
        levels = dataset.mask_to_levels(labels)
        assert set(levels.unique().tolist()) <= set(dataset.MASK_LEVELS)


def test_mask_gradients_reach_the_logits_through_the_softmax():
    logits = torch.randn(2, K, 4, 4, requires_grad=True)
    out = modules.mask_activation(logits)
    assert torch.equal(out, dataset.mask_channels(logits.argmax(dim=1), K))          # forward: a real-like mask
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    soft = torch.softmax(logits, dim=1)
    (expected,) = torch.autograd.grad((soft * 2 * weights).sum(), logits)            # backward: the softmax's
    torch.testing.assert_close(grad, expected)


def test_image_only_networks_are_unchanged_and_masks_add_only_rgb_outputs():
    G0, D0 = modules.Generator(), modules.Discriminator()
    assert (modules.count_params(G0), modules.count_params(D0)) == (24_762_452, 24_000_961)
    G4 = modules.Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16, mask_classes=K)
    G1 = modules.Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16)
    # Each ToRGB gains K output channels: K * (in_channels weights + 1 bias); the style affine is unchanged.
    extra = sum(K * (b.torgb.weight.shape[1] + 1) for b in G1.synthesis.blocks.values())
    assert modules.count_params(G4) - modules.count_params(G1) == extra
    D4 = modules.Discriminator(img_resolution=32, channel_base=256, channel_max=16, mask_classes=K)
    D1 = modules.Discriminator(img_resolution=32, channel_base=256, channel_max=16)
    fromrgb = D1.blocks["b32"].fromrgb.weight.shape[0]
    assert modules.count_params(D4) - modules.count_params(D1) == K * fromrgb
    with pytest.raises(ValueError, match="mask_classes must be 0"):
        modules.Generator(img_resolution=16, mask_classes=1)


def pair(n=4, size=32):
    """An asymmetric image and the mask of its bright half, in the training form."""
    img = torch.linspace(-1, 1, size).expand(n, 1, size, size).clone() * torch.linspace(0.2, 1, size)[:, None]
    labels = (img[:, 0] > 0).to(torch.uint8) * 3                                  # WM where bright, else bg
    return torch.cat([img, dataset.mask_channels(labels, K)], dim=1), labels


@pytest.mark.parametrize("transform", ["xflip", "rotate90", "xint", "rotate"])
def test_geometric_augmentation_moves_image_and_mask_together(transform):
    x, _ = pair()
    pipe = augment.AugmentPipe(img_channels=1, pipeline="bg", p=1.0, mask_channels=K)
    pipe.enabled = [transform]
    torch.manual_seed(3)
    y = pipe(x)
    moved_labels = dataset.mask_labels(y[:, 1:])
    bright = y[:, 0] > 0.05
    dark = y[:, 0] < -0.05
    assert (moved_labels[bright] == 3).float().mean() > 0.97          # the mask followed the image
    assert (moved_labels[dark] == 0).float().mean() > 0.97
    assert not torch.equal(y[:, 0], x[:, 0])


@pytest.mark.parametrize("groups,transform", [("c", "brightness"), ("c", "contrast"), ("c", "lumaflip"),
                                              ("f", "imgfilter"), ("n", "noise"), ("o", "cutout")])
def test_colour_filter_noise_and_cutout_leave_the_mask_untouched(groups, transform):
    x, _ = pair()
    pipe = augment.AugmentPipe(img_channels=1, pipeline=groups, p=1.0, mask_channels=K)
    pipe.enabled = [transform]
    y = pipe(x)
    assert torch.equal(y[:, 1:], x[:, 1:])
    assert not torch.equal(y[:, 0], x[:, 0])


@pytest.mark.slow
def test_a_masked_run_trains_on_pairs_and_resumes_bit_exactly(oasis, tmp_path, tiny_args, run_train, weights,
                                                              assert_same_weights):
    args = tiny_args(oasis, tmp_path / "runs", masks="true", batch=8)     # D's stddev over the new default 8
    full = run_train(args + ["--kimg=0.12"])
    part = run_train(args + ["--kimg=0.06"])
    run_train([f"--resume={part}", "--kimg=0.12"])
    assert_same_weights(weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt"))
    state = weights(full / "checkpoint.pt")
    assert state["config"]["masks"] is True and state["config"]["mask_encoding"] == "level"   # the default
    assert state["config"]["mbstd_group"] == config.MASKS_MBSTD_GROUP == 8
    G, cfg, _, _ = runs.load_generator(full, torch.device("cpu"))
    x = G(torch.randn(2, 16))                                        # image + one level channel
    assert G.mask_classes == K and x.shape == (2, 2, 16, 16)
    assert set(dataset.mask_labels(x[:, 1:]).unique().tolist()) <= {0, 1, 2, 3}
    from PIL import Image
    with Image.open(full / "reals.png") as im:                       # image | mask tiles
        assert im.size == (4 * 2 * 16, 2 * 16)
    with pytest.raises(config.ConfigError, match="--masks cannot change when resuming"):
        run_train([f"--resume={part}", "--masks=false"])


def test_masks_on_data_without_masks_is_one_line(tmp_path, capsys, tiny_args):
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image
    import numpy as np
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(images / f"{i}.png")
    assert train.main(tiny_args(images, tmp_path / "runs", masks="true")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{images}: no mask folder" in err and "--masks" in err


# ----------------------------------------------------------------------------------------------
# predict.py with a masked model

@pytest.fixture(scope="module")
def masked_run(oasis, tmp_path_factory, tiny_args, run_train):
    return run_train(tiny_args(oasis, tmp_path_factory.mktemp("masked") / "runs", masks="true", kimg=0.02))


@pytest.mark.slow
def test_predict_writes_masks_and_an_overlay(masked_run, tmp_path, capsys):
    import predict
    from PIL import Image
    import numpy as np
    assert predict.main(["images", "--checkpoint", str(masked_run), "--seeds", "0-4", "--outdir", str(tmp_path)]) == 0
    assert "seed0000_seg.png ... and overlay.png" in capsys.readouterr().out
    for s in range(5):
        with Image.open(tmp_path / f"seed{s:04d}_seg.png") as im:
            assert im.mode == "L" and im.size == (16, 16)
            assert set(np.unique(np.asarray(im)).tolist()) <= set(dataset.MASK_LEVELS)
    with Image.open(tmp_path / "overlay.png") as im:
        assert im.mode == "RGB" and im.size == (3 * 2 * 16, 2 * 16)        # 5 pairs, 3 columns
    G = runs.load_generator(masked_run, torch.device("cpu"))[0]
    images, labels = predict.generate(G, [3], with_labels=True)
    with Image.open(tmp_path / "seed0003_seg.png") as im:
        assert np.array_equal(np.asarray(im), dataset.mask_to_levels(labels)[0, 0].numpy())


@pytest.mark.slow
def test_export_round_trips_through_dataset(masked_run, tmp_path, capsys):
    import predict
    out = tmp_path / "synthetic"
    assert predict.main(["export", str(out), "--checkpoint", str(masked_run), "--num", "40", "--batch", "8"]) == 0
    names = sorted(p.name for p in (out / "keras_png_slices_train").iterdir())
    assert len(names) == 40 and "case_001_slice_0.nii.png" in names and "case_002_slice_7.nii.png" in names
    assert (out / "keras_png_slices_seg_train" / "seg_002_slice_7.nii.png").is_file()
    assert dataset.main(["check", "--data", str(out)]) == 0
    data = dataset.ImageDataset(out, resolution=16, with_masks=True, log=lambda m: None)
    G = runs.load_generator(masked_run, torch.device("cpu"))[0]
    # Seed 39 is case 2, slice 7; export samples its own noise. Seeds 32-39 formed one batch of the export:
    # generated the same way, the values are bit-identical at any thread count.
    images, labels = predict.generate(G, list(range(32, 40)), noise_mode="random", batch=8, with_labels=True)
    i = [f.name for f in data.source.files].index("case_002_slice_7.nii.png")
    assert torch.equal(torch.from_numpy(data.images[i]), images[-1])
    assert torch.equal(torch.from_numpy(data.masks[i]), labels[-1])
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(masked_run), "--export", str(out), "--num", "4"]) == 1   # earlier
    assert "exists and is not empty" in capsys.readouterr().err
    assert len(list((out / "keras_png_slices_train").iterdir())) == 40          # nothing overwritten
    assert predict.main(["--checkpoint", str(masked_run), "--export", str(out), "--outdir", str(tmp_path)]) == 2
