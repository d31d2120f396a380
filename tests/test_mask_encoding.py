"""How a mask is generated and shown to D (--mask_encoding onehot | level, --mask_blur), the agreement Dice
tracked while training (--agreement_segmenter) and checkpoints of masked runs made before these options."""

import dataclasses
import json
import math

import pytest
import torch

import config
import dataset
import losses
import metrics
import modules
import ops
import runs
import segment
import trainer as trainer_lib

K = config.MASK_CLASSES
SMALL = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16)


@pytest.fixture(scope="module")
def oasis(tmp_path_factory, make_oasis):
    return make_oasis(tmp_path_factory.mktemp("encoding") / "oasis", subjects=(3, 1, 1), slices=4, size=16)


@pytest.mark.parametrize("encoding", config.MASK_ENCODINGS)
def test_each_encoding_round_trips_real_masks_and_snaps_generated_ones_to_four_classes(encoding):
    labels = torch.randint(0, K, (3, 8, 8), dtype=torch.uint8)
    channels = dataset.mask_channels(labels, K, encoding)
    assert channels.shape == (3, {"onehot": K, "level": 1, "split": 2, "split_dark": 2, "softmax": K}[encoding], 8, 8)
    assert channels.shape[1] == config.mask_channels(config.TrainConfig(masks=True, mask_encoding=encoding))
    assert channels.min() == -1 and channels.max() <= 1
    assert torch.equal(dataset.mask_labels(channels), labels)
    G = modules.Generator(**SMALL, mask_classes=K, mask_encoding=encoding)
    x = G(torch.randn(6, 16) * 5)                                        # large z: extreme outputs too
    assert x.shape == (6, 1 + channels.shape[1], 16, 16) and torch.isfinite(x).all()
    snapped = dataset.mask_labels(x[:, 1:])
    assert snapped.dtype == torch.uint8 and set(snapped.unique().tolist()) <= {0, 1, 2, 3}
    assert set(dataset.mask_to_levels(snapped).unique().tolist()) <= set(dataset.MASK_LEVELS)


def test_a_level_channel_holds_the_oasis_levels_and_snaps_to_the_nearest():
    levels = dataset.mask_channels(torch.arange(K, dtype=torch.uint8).view(1, 1, K), K, "level")
    torch.testing.assert_close(levels.flatten(), torch.tensor([0, 85, 170, 255]) / 127.5 - 1)
    generated = torch.tensor([-5.0, -0.9, -0.5, -0.1, 0.2, 0.4, 0.7, 3.0, float("nan")]).view(1, 1, 1, -1)
    assert dataset.mask_labels(generated).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0]


def test_mask_shape_finds_the_csf_rim_that_snapping_a_blurred_edge_draws():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    labels = torch.where(r < 12, 2, 0).to(torch.uint8)                   # grey matter disk
    labels[(r > 4) & (r < 6)] = 1                                        # a CSF ring inside it
    labels[r <= 4] = 3                                                   # white matter core
    shape = metrics.mask_shape(labels[None])
    assert shape["csf_rim_share"] == 0 and shape["csf_share"] == pytest.approx(
        int((labels == 1).sum()) / int((labels > 0).sum()))
    soft = ops.gaussian_blur(dataset.mask_channels(labels[None], K, "level"), 1.0)
    snapped = metrics.mask_shape(dataset.mask_labels(soft))
    assert snapped["csf_rim_share"] > 0.3 and snapped["csf_share"] > shape["csf_share"]
    assert all(math.isnan(v) for v in metrics.mask_shape(torch.zeros(1, 4, 4, dtype=torch.uint8)).values())
    split = dataset.mask_labels(ops.gaussian_blur(dataset.mask_channels(labels[None], K, "split"), 1.0))
    assert metrics.mask_shape(split)["csf_rim_share"] == 0                 # split: no class between brain and outside


def test_softmax_masks_are_class_probabilities_whose_soft_outline_draws_no_csf():
    G_soft = modules.Generator(**SMALL, mask_classes=K, mask_encoding="softmax")
    G_hard = modules.Generator(**SMALL, mask_classes=K, mask_encoding="onehot")
    assert modules.count_params(G_soft) == modules.count_params(G_hard)          # the same network, another read-out
    G_hard.load_state_dict(G_soft.state_dict())
    z = torch.randn(3, 16)
    soft, hard = G_soft(z, noise_mode="const")[:, 1:], G_hard(z, noise_mode="const")[:, 1:]
    torch.testing.assert_close(((soft + 1) / 2).sum(dim=1), torch.ones(3, 16, 16))   # probabilities
    assert soft.abs().max() < 1 and set(hard.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(dataset.mask_labels(soft), dataset.mask_labels(hard))       # written as the same classes
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    labels = torch.where(((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 144, 2, 0).to(torch.uint8)[None]   # grey disk
    for sigma in (1.0, 2.0):                               # an outline as soft as D's blur, or softer
        blurred = ops.gaussian_blur(dataset.mask_channels(labels, K, "softmax"), sigma)
        assert (dataset.mask_labels(blurred) == 1).sum() == 0
        assert (dataset.mask_labels(ops.gaussian_blur(dataset.mask_channels(labels, K, "level"), sigma)) == 1).sum() > 40


def test_split_dark_keeps_a_thin_outer_csf_rim_through_the_blur_that_split_erases():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    labels = torch.where(r < 12, 1, 0).to(torch.uint8)                   # a 1-pixel CSF rim round the brain
    labels[r < 11] = 2
    labels[r < 6] = 3
    found = {}
    for encoding in ("level", "split", "split_dark"):
        snapped = dataset.mask_labels(ops.gaussian_blur(dataset.mask_channels(labels[None], K, encoding), 1.0))
        found[encoding] = segment.dice_scores(snapped, labels[None])
    assert found["split"]["CSF"] < 0.1                    # the rim lies between two 0s of the tissue channel
    assert found["split_dark"]["CSF"] > 0.6               # it continues the outside's -1, so the blur keeps it
    assert found["split_dark"]["mean"] > max(found["level"]["mean"], found["split"]["mean"])


@pytest.mark.parametrize("encoding, outside", [("split", 0), ("split_dark", -1)])
def test_split_puts_background_on_its_own_channel_and_the_tissue_levels_on_the_other(encoding, outside):
    labels = torch.tensor([0, 1, 2, 3], dtype=torch.uint8).view(1, 1, 4)
    channels = dataset.mask_channels(labels, K, encoding)
    assert channels[0, 0].flatten().tolist() == [-1, 1, 1, 1]
    assert channels[0, 1].flatten().tolist() == [outside, -1, 0, 1]
    generated = torch.tensor([[[[-0.1, 0.1, 0.1, 0.1, float("nan")]], [[-1.0, -0.6, 0.4, 0.6, 0.0]]]])
    assert dataset.mask_labels(generated).flatten().tolist() == [0, 1, 2, 3, 0]


def test_the_level_encoding_adds_one_channel_and_the_image_only_networks_are_unchanged():
    assert (modules.count_params(modules.Generator()), modules.count_params(modules.Discriminator())) == \
        (24_762_452, 24_000_961)
    G1 = modules.Generator(**SMALL)
    G_level = modules.Generator(**SMALL, mask_classes=K, mask_encoding="level")
    extra = sum(b.torgb.weight.shape[1] + 1 for b in G1.synthesis.blocks.values())   # one more ToRGB output
    assert modules.count_params(G_level) - modules.count_params(G1) == extra
    D1 = modules.Discriminator(img_resolution=16, channel_base=128, channel_max=16)
    D_level = modules.Discriminator(img_resolution=16, channel_base=128, channel_max=16, mask_classes=K,
                                    mask_encoding="level")
    assert modules.count_params(D_level) - modules.count_params(D1) == D1.blocks["b16"].fromrgb.weight.shape[0]
    assert D_level(torch.randn(4, 2, 16, 16)).shape == (4, 1)
    with pytest.raises(ValueError, match="mask_encoding must be one of"):
        modules.Generator(**SMALL, mask_classes=K, mask_encoding="levels")


def test_gaussian_blur_keeps_constants_and_is_twice_differentiable():
    const = torch.full((2, 1, 12, 12), -1.0)
    torch.testing.assert_close(ops.gaussian_blur(const, 1.0), const)   # background stays background at the edges
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1
    out = ops.gaussian_blur(impulse, 1.0)
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))
    assert out[0, 0, 7, 7] == out.max() and torch.equal(out, out.flip(-1)) and torch.equal(out, out.transpose(-1, -2))
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.gaussian_blur(t, 0.8), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.gaussian_blur(t, 0.8), (x,))


@pytest.mark.parametrize("encoding", config.MASK_ENCODINGS)
def test_d_sees_real_and_fake_masks_through_the_same_blur_and_gain_and_the_image_unchanged(oasis, encoding):
    cfg = config.TrainConfig(data=str(oasis), resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                             batch=4, masks=True, mask_encoding=encoding, mask_blur=1.0, mask_gain=0.5, aug="noaug")
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    t = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    seen = []
    t.D_fast = lambda img, c: seen.append(img) or img.mean(dim=(1, 2, 3))[:, None]
    reals = data.batch([0, 1, 2, 3], mask_encoding=encoding)
    fakes, _ = t.run_G(torch.randn(4, 16))
    for x in (reals, fakes):
        t.run_D(x, fast=True)
        shown = seen.pop()
        assert torch.equal(shown[:, :1], x[:, :1])
        torch.testing.assert_close(shown[:, 1:], ops.gaussian_blur(x[:, 1:], 1.0) * 0.5)
        assert not torch.equal(shown[:, 1:], x[:, 1:])


def test_a_new_masked_run_trains_without_ada_unless_aug_is_given():
    assert config.parse_args(["--masks"]).aug == "noaug"
    assert config.parse_args(["--masks", "--aug=ada"]).aug == "ada"
    assert config.parse_args([]).aug == config.parse_args(["--masks=false"]).aug == "ada"


def test_a_new_masked_demo_run_trains_100_kimg_unless_kimg_or_another_preset_is_given():
    new = config.parse_args(["--masks"])
    assert new.kimg == config.MASKS_DEMO_KIMG == 100 and "100 kimg (--kimg)" in config.describe_masks(new)
    assert config.parse_args([]).kimg == config.parse_args(["--masks=false"]).kimg == 60    # image only
    assert config.parse_args(["--masks", "--kimg=60"]).kimg == 60                            # given wins
    assert config.parse_args(["--masks", "--preset=oasis256"]).kimg == 25000                 # the preset's own
    old = dataclasses.asdict(dataclasses.replace(new, kimg=60.0))      # a masked run saved with the old 60
    assert config.resume_config(old, {}).kimg == 60                     # resumes to its own length
    assert config.resume_config(old, {"kimg": 100.0}).kimg == 100


def test_a_new_masked_run_takes_the_minibatch_stddev_over_8_where_the_batch_allows_and_old_runs_keep_theirs():
    new = config.parse_args(["--masks"])
    assert new.mbstd_group == config.MASKS_MBSTD_GROUP == 8 and new.batch == 16
    assert "groups of 8 (--mbstd_group)" in config.describe_masks(new)
    assert config.parse_args(["--masks", "--mbstd_group=4"]).mbstd_group == 4        # given wins
    assert config.parse_args(["--masks", "--batch=12"]).mbstd_group == 4              # 8 would not divide 12
    assert config.parse_args([]).mbstd_group == config.parse_args(["--masks=false"]).mbstd_group == 4   # image only
    assert config.parse_args(["--masks", "--preset=paper256"]).mbstd_group == 8       # the preset's own 8
    for gpus in (2, 4):                                       # 8 or 4 images per GPU: groups of min(8, N)
        config.validate(config.fit_masks_group(new, {}, gpus), world_size=gpus)
        assert config.fit_masks_group(new, {}, gpus).mbstd_group == 8
    wide = config.parse_args(["--masks", "--batch=24"])       # 12 per GPU on 2 GPUs: back to the preset's 4
    assert wide.mbstd_group == 8 and config.fit_masks_group(wide, {}, 2).mbstd_group == 4
    config.validate(config.fit_masks_group(wide, {}, 2), world_size=2)
    given = config.parse_args(["--masks", "--batch=24", "--mbstd_group=8"])    # given: kept, and refused
    assert config.fit_masks_group(given, {"mbstd_group": 8}, 2).mbstd_group == 8
    with pytest.raises(config.ConfigError, match="12 images per GPU, which the minibatch-stddev group of 8"):
        config.validate(given, world_size=2)
    assert modules.MinibatchStd(8, 1)(torch.randn(4, 3, 4, 4)).shape == (4, 4, 4, 4)
    old = dataclasses.asdict(dataclasses.replace(new, mbstd_group=4))   # a masked run saved with groups of 4
    assert config.resume_config(old, {}).mbstd_group == 4               # resumes as it was trained
    assert config.resume_config(old, {"mbstd_group": 8}).mbstd_group == 8   # no parameter depends on it
    shapes = lambda cfg: {k: v.shape for net in runs.build_networks(cfg) for k, v in net.state_dict().items()}
    small = dict(resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16, masks=True)
    assert shapes(config.TrainConfig(**small, mbstd_group=8)) == shapes(config.TrainConfig(**small, mbstd_group=4))


def test_mask_head_needs_masks_and_leaves_the_image_only_networks_unchanged():
    assert config.parse_args(["--masks"]).mask_head == "skip"
    assert config.parse_args(["--masks", "--mask_head=top"]).mask_head == "top"
    with pytest.raises(config.ConfigError, match="--mask_head top places G's mask output; it needs --masks"):
        config.parse_args(["--mask_head=top"])
    with pytest.raises(config.ConfigError, match="--mask_head must be one of skip, top, got 'last'"):
        config.parse_args(["--mask_head=last"])
    size = dict(resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16)
    count = lambda cfg: [sum(p.numel() for p in net.parameters()) for net in runs.build_networks(cfg)]
    image_only = count(config.TrainConfig(**size))
    assert image_only == count(config.TrainConfig(**size, mask_head="top"))
    skip, top = count(config.TrainConfig(**size, masks=True)), count(config.TrainConfig(**size, masks=True, mask_head="top"))
    assert top[1] == skip[1] and top[0] < skip[0]                     # D alike; G lacks the lower mask outputs


def test_mask_blur_kimg_fades_the_blur_d_sees_linearly_to_zero(oasis):
    cfg = config.TrainConfig(data=str(oasis), resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                             batch=4, masks=True, mask_blur=1.0, mask_blur_kimg=2.0, aug="noaug")
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    t = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    seen = []
    t.D_fast = lambda img, c: seen.append(img) or img.mean(dim=(1, 2, 3))[:, None]
    reals = data.batch([0, 1, 2, 3], mask_encoding="level")
    for nimg, sigma in ((0, 1.0), (500, 0.75), (1500, 0.25), (2000, 0.0), (9000, 0.0)):
        t.cur_nimg = nimg
        assert t.mask_sigma() == pytest.approx(sigma)
        t.run_D(reals, fast=True)
        expected = ops.gaussian_blur(reals[:, 1:], sigma) if sigma > 0 else reals[:, 1:]
        torch.testing.assert_close(seen.pop()[:, 1:], expected)


def test_mask_snap_shows_d_every_mask_on_the_levels_with_the_gradient_straight_through(oasis):
    cfg = config.TrainConfig(data=str(oasis), resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                             batch=4, masks=True, mask_encoding="level", mask_blur=0.0, mask_snap=True, aug="noaug")
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    t = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    seen = []
    t.D_fast = lambda img, c: seen.append(img) or (img * torch.arange(2.0).view(1, 2, 1, 1)).sum(dim=(1, 2, 3))[:, None]
    reals = data.batch([0, 1, 2, 3], mask_encoding="level")
    t.run_D(reals, fast=True)
    assert torch.equal(seen.pop(), reals)                                      # real masks are on the levels
    fakes = t.run_G(torch.randn(4, 16))[0].detach().requires_grad_(True)
    t.run_D(fakes, fast=True).sum().backward()
    shown = seen.pop()
    levels = dataset.mask_channels(torch.arange(K, dtype=torch.uint8).view(1, 1, K), K, "level").flatten()
    assert torch.equal(shown[:, :1], fakes[:, :1]) and torch.isin(shown[:, 1:], levels).all()
    assert torch.equal(dataset.mask_labels(shown[:, 1:]), dataset.mask_labels(fakes[:, 1:]))
    assert torch.equal(fakes.grad[:, 1:], torch.ones_like(fakes[:, 1:]))       # identity in the backward pass


def test_misregistered_pairs_move_each_mask_one_or_two_pixels_and_leave_the_image():
    pairs = torch.randn(64, 2, 12, 12)
    moved = losses.misregistered(pairs, 1, torch.Generator().manual_seed(3))
    assert torch.equal(moved[:, :1], pairs[:, :1])
    rolls = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
             if (dy, dx) != (0, 0) and (abs(dy) == abs(dx) or 0 in (dy, dx))}        # 8 directions, 1 or 2 px
    found = set()
    for i in range(len(pairs)):
        hits = [r for r in rolls if torch.equal(moved[i, 1], torch.roll(pairs[i, 1], r, dims=(0, 1)))]
        assert len(hits) == 1
        found.add(hits[0])
    assert len(found) > 8                                   # both step sizes and several directions are drawn
    again = losses.misregistered(pairs, 1, torch.Generator().manual_seed(3))
    assert torch.equal(again, moved)                        # from the generator alone: resume stays bit-exact


def test_mask_mismatch_adds_a_d_term_calling_real_images_with_moved_masks_fake(oasis):
    cfg = config.TrainConfig(data=str(oasis), resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                             batch=4, masks=True, mask_blur=0.0, mask_mismatch=0.5, aug="noaug")
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    t = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    seen, optimized = [], []
    t.D_fast = lambda img, c: seen.append(img) or (img[:, 1:] * img[:, :1]).mean(dim=(1, 2, 3))[:, None]
    t.optimize = lambda module, opt, loss, phase: optimized.append(loss)
    reals = data.batch([0, 1, 2, 3], mask_encoding="level")
    t.d_step(reals)
    real, fake, wrong = seen
    assert torch.equal(real, reals) and torch.equal(wrong[:, :1], reals[:, :1])
    assert not torch.equal(wrong[:, 1:], reals[:, 1:])
    logits = [t.D_fast(x, None) for x in (real, fake, wrong)]
    expected = losses.d_logistic_loss(logits[0], logits[1]).mean() + 0.5 * torch.nn.functional.softplus(logits[2]).mean()
    torch.testing.assert_close(optimized[0], expected)
    assert "D_mismatch" in t.pop_stats()
    t.cfg = dataclasses.replace(cfg, mask_mismatch=0.0)
    seen.clear()
    t.d_step(reals)
    assert len(seen) == 2                                   # off: D sees the real and the fake batch only


def test_r1_on_the_image_channels_only_leaves_the_mask_gradient_out():
    x = torch.randn(3, 2, 8, 8, requires_grad=True)
    logits = (x[:, :1] * 2).sum(dim=(1, 2, 3)) + (x[:, 1:] * 3).sum(dim=(1, 2, 3))
    torch.testing.assert_close(losses.r1_penalty(x, logits), torch.full((3,), 64 * (4.0 + 9.0)))
    torch.testing.assert_close(losses.r1_penalty(x, logits, channels=1), torch.full((3,), 64 * 4.0))


def test_mask_head_top_reads_the_mask_off_the_last_block_only():
    """--mask_head top: the lower blocks' ToRGBs output the image alone; the mask is the last block's read-out,
    so it is gone when that ToRGB's mask rows are zero, while the image still sums every resolution."""
    skip = modules.Generator(**SMALL, mask_classes=K, mask_encoding="level")
    top = modules.Generator(**SMALL, mask_classes=K, mask_encoding="level", mask_head="top")
    blocks = list(top.synthesis.blocks.values())
    assert [b.torgb.weight.shape[0] for b in blocks] == [1] * (len(blocks) - 1) + [2]
    assert [b.torgb.weight.shape[0] for b in skip.synthesis.blocks.values()] == [2] * len(blocks)
    z = torch.randn(4, 16)
    x = top(z, noise_mode="const")
    assert x.shape == (4, 2, 16, 16) and torch.isfinite(x).all()
    x.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    with torch.no_grad():
        blocks[-1].torgb.weight[1:].zero_()
        blocks[-1].torgb.bias[1:].zero_()
        y = top(z, noise_mode="const")
        torch.testing.assert_close(y[:, :1], x[:, :1].detach())            # the image did not change
        assert y[:, 1:].abs().max() == 0                                   # the mask came from there alone
        for b in skip.synthesis.blocks.values():
            if b.resolution == 16:
                b.torgb.weight[1:].zero_()
                b.torgb.bias[1:].zero_()
        assert skip(z, noise_mode="const")[:, 1:].abs().max() > 0          # skip: lower blocks add to the mask
    image_only = modules.Generator(**SMALL)
    assert image_only.synthesis.mask_head == "skip" and modules.Generator(**SMALL, mask_head="top").synthesis.blocks[
        "b16"].torgb.weight.shape[0] == 1
    with pytest.raises(ValueError, match="mask_head must be one of"):
        modules.Generator(**SMALL, mask_classes=K, mask_head="last")


def test_old_masked_configs_load_with_one_hot_masks():
    saved = dataclasses.asdict(config.TrainConfig(masks=True))
    for key in ("mask_encoding", "mask_blur", "mask_gain", "mask_snap", "r1_mask", "mask_mismatch",
                "mask_head", "mask_consistency", "consistency_mask_weight", "agreement_segmenter"):
        saved.pop(key)                                                          # written before them
    cfg = config.from_dict(saved)
    assert (cfg.mask_encoding, cfg.mask_blur, cfg.mask_gain, config.mask_channels(cfg)) == ("onehot", 0, 1, K)
    assert (cfg.mask_snap, cfg.r1_mask, cfg.mask_mismatch, cfg.mask_head, cfg.mask_consistency,
            cfg.consistency_mask_weight) == (False, True, 0, "skip", 0, 1)      # as before them
    with pytest.raises(config.ConfigError, match="--mask_encoding cannot change when resuming"):
        config.resume_config(saved, {"mask_encoding": "level"})
    with pytest.raises(config.ConfigError, match="--mask_head cannot change when resuming"):
        config.resume_config(saved, {"mask_head": "top"})


@pytest.mark.parametrize("options, message", [
    ({"mask_encoding": "soft"}, "--mask_encoding must be one of onehot, level"),
    ({"mask_blur": -1.0}, "--mask_blur must be a sigma in pixels >= 0"),
    ({"mask_blur_kimg": -5.0}, "--mask_blur_kimg must be a length in kimg >= 0"),
    ({"mask_gain": 0.0}, "--mask_gain must be a factor > 0"),
    ({"mask_gain": float("nan")}, "--mask_gain must be a finite number"),
    ({"agreement_segmenter": "x.pt", "masks": False}, "--agreement_segmenter scores generated masks"),
    ({"mask_snap": True, "mask_encoding": "onehot"}, "--mask_snap snaps a level mask"),
    ({"mask_snap": True, "masks": False}, "--mask_snap snaps a level mask"),
    ({"r1_mask": False, "masks": False}, "--r1_mask=false leaves the mask channels out of R1"),
    ({"mask_mismatch": -1.0}, "--mask_mismatch must be a weight >= 0"),
    ({"mask_mismatch": 1.0, "masks": False}, "--mask_mismatch scores misregistered"),
    ({"mask_head": "last"}, "--mask_head must be one of skip, top"),
    ({"agreement_segmenter": "/nonexistent/segmenter.pt"}, "no such file"),
])
def test_bad_mask_options_are_one_line(options, message):
    cfg = config.TrainConfig(**{"masks": True, **options})
    with pytest.raises(config.ConfigError, match=message):
        config.validate(cfg)


@pytest.mark.slow
def test_a_level_run_with_blur_mask_mismatch_and_top_head_logs_the_agreement_dice_and_resumes_bit_exactly(
        oasis, tmp_path, tiny_args, run_train, weights, assert_same_weights):
    seg = segment.UNet()
    seg_path = tmp_path / "segmenter.pt"
    torch.save(seg.state_dict(), seg_path)
    args = tiny_args(oasis, tmp_path / "runs", masks="true", mask_encoding="level", mask_blur=0.7, mask_mismatch=0.5,
                     mask_head="top", agreement_segmenter=str(seg_path), metrics_num=8)
    full = run_train(args + ["--kimg=0.12"])
    part = run_train(args + ["--kimg=0.06"])
    run_train([f"--resume={part}", "--kimg=0.12"])
    assert_same_weights(weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt"))
    G, cfg, _, _ = runs.load_generator(full, torch.device("cpu"))
    assert (cfg.mask_encoding, cfg.mask_head) == ("level", "top") and G(torch.randn(2, 16)).shape == (2, 2, 16, 16)
    scored = [r for r in map(json.loads, (full / "log.jsonl").read_text().splitlines()) if "agreement_mean" in r]
    assert scored and all(0 <= r["agreement_mean"] <= 1 and "agreement_CSF" in r for r in scored)
    assert all(0 < r["real_csf_share"] < 1 and 0 <= r["real_csf_rim_share"] <= 1 and "csf_rim_share" in r
               for r in scored)
    ticks = [r for r in map(json.loads, (full / "log.jsonl").read_text().splitlines()) if "loss_D" in r]
    assert ticks and all(math.isfinite(r["D_mismatch"]) for r in ticks)


@pytest.mark.slow
def test_a_masked_run_saved_before_the_level_default_resumes_as_it_was_trained(
        oasis, tmp_path, tiny_args, run_train, weights, assert_same_weights):
    """A run from before mask_encoding and mask_blur existed stored neither: it resumes with one-hot masks and
    no blur (not the new defaults), bit-exactly as if it had never stopped."""
    args = tiny_args(oasis, tmp_path / "runs", masks="true", mask_encoding="onehot", mask_blur=0)
    full = run_train(args + ["--kimg=0.12"])
    part = run_train(args + ["--kimg=0.06"])
    state = weights(part / "checkpoint.pt")
    for key in ("mask_encoding", "mask_blur", "mask_gain", "agreement_segmenter"):
        state["config"].pop(key)
    torch.save(state, part / "checkpoint.pt")
    saved = json.loads((part / "config.json").read_text())
    (part / "config.json").write_text(json.dumps({k: v for k, v in saved.items()
                                                  if k not in ("mask_encoding", "mask_blur", "mask_gain", "agreement_segmenter")}))
    G, cfg, _, _ = runs.load_generator(part, torch.device("cpu"))
    assert (cfg.mask_encoding, cfg.mask_blur) == ("onehot", 0) and G(torch.randn(2, 16)).shape == (2, 1 + K, 16, 16)
    run_train([f"--resume={part}", "--kimg=0.12"])
    assert_same_weights(weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt"))
