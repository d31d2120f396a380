"""--mask_consistency: the segmenter trained on real pairs during a masked run and G's term asking each
generated pair to agree under it (consistency.py)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import config
import consistency
import dataset
import segment
import trainer as trainer_lib

K = config.MASK_CLASSES


@pytest.fixture(scope="module")
def oasis(tmp_path_factory, make_oasis):
    return make_oasis(tmp_path_factory.mktemp("consistency") / "oasis", subjects=(3, 1, 1), slices=4, size=16)


def masked_config(oasis, **extra) -> config.TrainConfig:
    return config.TrainConfig(data=str(oasis), resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16,
                              batch=4, masks=True, aug="noaug", mask_consistency=0.5, **extra)


def test_the_generator_term_is_the_images_cross_entropy_and_the_masks_distance_with_s_held():
    cfg = config.TrainConfig(masks=True, mask_consistency=1.0)                 # level encoding: one mask channel
    c = consistency.Consistency(cfg, torch.device("cpu"))
    fakes = torch.randn(3, 2, 16, 16).requires_grad_(True)
    term = c.generator_term(fakes)
    with torch.no_grad():
        logits = c.net.eval()(fakes[:, :1])
        labels = dataset.mask_labels(fakes[:, 1:], K).long()
        seen = dataset.mask_channels(logits.argmax(dim=1), K, "level")
        expected = F.cross_entropy(logits, labels, reduction="none").mean(dim=[1, 2]) + \
            (fakes[:, 1:] - seen).square().mean(dim=[1, 2, 3])
    torch.testing.assert_close(term, expected)
    term.sum().backward()
    assert fakes.grad[:, :1].abs().sum() > 0 and fakes.grad[:, 1:].abs().sum() > 0   # image and mask both pulled
    assert all(p.grad is None for p in c.net.parameters())                           # S's weights held
    # A mask that already names what S sees leaves only the image's term, whose mask-side gradient is zero.
    agreeing = torch.cat([fakes[:, :1].detach(), seen], dim=1).requires_grad_(True)
    c.generator_term(agreeing).sum().backward()
    assert agreeing.grad[:, 1:].abs().max() == 0
    mask_only = consistency.Consistency(dataclasses.replace(cfg, consistency_image=False), torch.device("cpu"))
    fakes.grad = None
    term = mask_only.generator_term(fakes)
    torch.testing.assert_close(term, (fakes[:, 1:] - seen).square().mean(dim=[1, 2, 3]))
    term.sum().backward()
    assert fakes.grad[:, :1].abs().max() == 0 and fakes.grad[:, 1:].abs().sum() > 0    # the image is left alone


def test_the_masks_term_is_scaled_by_its_weight_and_the_images_term_is_not():
    cfg = config.TrainConfig(masks=True, mask_consistency=1.0)
    one = consistency.Consistency(cfg, torch.device("cpu"))
    eight = consistency.Consistency(dataclasses.replace(cfg, consistency_mask_weight=8.0), torch.device("cpu"))
    eight.net.load_state_dict(one.net.state_dict())                          # the same S
    fakes = torch.randn(3, 2, 16, 16).requires_grad_(True)
    with torch.no_grad():
        seen = dataset.mask_channels(one.net.eval()(fakes[:, :1]).argmax(dim=1), K, "level")
        mask_term = (fakes[:, 1:] - seen).square().mean(dim=[1, 2, 3])
    torch.testing.assert_close(eight.generator_term(fakes), one.generator_term(fakes) + 7 * mask_term)
    g1 = torch.autograd.grad(one.generator_term(fakes).sum(), fakes)[0]
    g8 = torch.autograd.grad(eight.generator_term(fakes).sum(), fakes)[0]
    torch.testing.assert_close(g8[:, :1], g1[:, :1])                         # the image's pull unchanged
    torch.testing.assert_close(g8[:, 1:], 8 * g1[:, 1:])                     # the mask's pull 8 times as strong
    line = config.describe_masks(config.parse_args(["--masks", "--consistency_mask_weight=8"]))
    assert "the mask's term x8" in line
    assert config.parse_args(["--masks"]).consistency_mask_weight == config.MASKS_MASK_WEIGHT == 8   # the default
    assert config.parse_args(["--masks", "--mask_consistency=0"]).consistency_mask_weight == 1           # no term
    assert config.parse_args(["--masks", "--consistency_mask_weight=1"]).consistency_mask_weight == 1    # given
    saved = dataclasses.asdict(config.parse_args(["--masks"]))
    saved.pop("consistency_mask_weight")                                    # a run saved before the option
    assert config.resume_config(saved, {}).consistency_mask_weight == 1     # resumes as it was trained
    resumed = config.parse_args(["--resume", "RUN", "--consistency_mask_weight=2"])   # judged against the run's config
    default = dataclasses.asdict(config.parse_args(["--masks"]))
    assert config.resume_config(default, {"consistency_mask_weight": resumed.consistency_mask_weight,
                                          "resume": "RUN"}).consistency_mask_weight == 2
    off = config.resume_config(default, {"mask_consistency": 0.0})          # the term turned off on resuming
    assert (off.consistency_mask_weight, off.consistency_rim, off.consistency_image) == (1, True, True)


class _SeesBackground(torch.nn.Module):
    """A stand-in S that reads every pixel as background, by a wide margin, whatever the image."""

    def forward(self, image):
        logits = torch.zeros(image.shape[0], K, *image.shape[2:])
        logits[:, 0] = 20.0
        return logits + 0 * image.sum()


def test_with_the_brain_weights_a_small_slice_earns_no_smaller_term_than_a_large_one():
    cfg = config.TrainConfig(masks=True, mask_consistency=1.0)
    plain = consistency.Consistency(cfg, torch.device("cpu"))
    brain = consistency.Consistency(dataclasses.replace(cfg, consistency_brain=True), torch.device("cpu"))
    plain.net = brain.net = _SeesBackground()
    fakes = torch.randn(3, 2, 16, 16)
    fakes[:, 1] = -1.0                                    # background, which S agrees with
    fakes[0, 1, 4:8, 4:8] = 1 / 3                         # 16 pixels of grey matter S does not see ...
    fakes[1, 1, 2:10, 2:10] = 1 / 3                       # ... 64 of them, the same disagreement per pixel
    fakes.requires_grad_(True)                            # sample 2: no brain at all
    a, b = plain.generator_term(fakes), brain.generator_term(fakes)
    assert a[1] > 3.9 * a[0]                              # over the image: 4 times the brain, 4 times the term
    torch.testing.assert_close(b[0], b[1])                # over the brain: equal
    share = torch.tensor([16 / 256, 64 / 256, consistency.MIN_BRAIN_SHARE])    # an empty slice counts as 1 %
    weights = share.mean() / share
    torch.testing.assert_close(b, a * weights)
    ga = torch.autograd.grad(a.sum(), fakes)[0]
    gb = torch.autograd.grad(b.sum(), fakes)[0]
    torch.testing.assert_close(gb, ga * weights[:, None, None, None])     # no gradient through the weight
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    seen = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, :4, :4], seen[0, 4:8, :4] = 2, 1            # the brain is what either calls tissue: 32 pixels
    labels[1, :8, :4] = 3                                 # 32 pixels of the mask's alone
    torch.testing.assert_close(consistency.brain_weights(labels, seen), torch.ones(2))
    line = config.describe_masks(config.parse_args(["--masks", "--consistency_brain"]))
    assert "each over its brain's share" in line and "\n" not in line
    saved = dataclasses.asdict(config.parse_args(["--masks", "--consistency_brain"]))
    assert config.resume_config(saved, {}).consistency_brain is True
    assert config.resume_config(saved, {"mask_consistency": 0.0}).consistency_brain is False   # the term turned off
    saved.pop("consistency_brain")                                          # a run saved before the option
    assert config.resume_config(saved, {}).consistency_brain is False       # resumes as it was trained


def test_the_rim_is_the_csf_next_to_background_that_a_snapped_soft_outline_draws():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disk = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 10 ** 2).float()
    g = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 2)
    g = g / g.sum()                                       # a Gaussian of sigma 1 px, the blur D sees masks through
    soft = F.conv2d(F.pad(disk[None, None], (3, 3, 3, 3), mode="replicate"), (g[:, None] * g[None, :])[None, None])
    level = -1 + soft * (1 / 3 + 1)                       # background -1 stepping softly to grey matter 1/3
    labels = dataset.mask_labels(level, K).long()
    ring = labels == 1
    assert ring.sum() > 60                                # snapping draws CSF round the outline ...
    assert torch.equal(consistency.rim(labels), ring)     # ... all of it rim
    assert not torch.equal(consistency.rim(labels, steps=1), ring)     # one pixel deep is not enough
    inner = torch.zeros(1, 12, 12, dtype=torch.long)
    inner[0, 2:10, 2:10], inner[0, 5:7, 5:7] = 2, 1      # CSF inside grey matter (a ventricle) is not rim
    inner[0, 1, 1] = 1                                    # a lone CSF pixel by the background is
    rim = consistency.rim(inner)
    assert rim[0, 1, 1] and rim.sum() == 1


def test_without_the_rim_the_images_term_averages_over_the_other_pixels_only():
    cfg = config.TrainConfig(masks=True, mask_consistency=1.0, consistency_rim=False)
    c = consistency.Consistency(cfg, torch.device("cpu"))
    fakes = torch.randn(3, 2, 16, 16)
    fakes[:, 1, :, :3] = -1.0                             # background columns, so some CSF has a rim
    fakes[:, 1, :, 3] = -1 / 3
    fakes.requires_grad_(True)
    term = c.generator_term(fakes)
    with torch.no_grad():
        logits = c.net.eval()(fakes[:, :1])
        labels = dataset.mask_labels(fakes[:, 1:], K).long()
        keep = ~consistency.rim(labels)
        assert (~keep).sum() >= 3 * 16
        ce = F.cross_entropy(logits, labels, reduction="none")
        seen = dataset.mask_channels(logits.argmax(dim=1), K, "level")
        expected = (ce * keep).sum(dim=[1, 2]) / keep.sum(dim=[1, 2]) + (fakes[:, 1:] - seen).square().mean(dim=[1, 2, 3])
    torch.testing.assert_close(term, expected)
    image_only = torch.autograd.grad(term.sum() - (fakes[:, 1:] - seen).square().mean(dim=[1, 2, 3]).sum(), fakes)[0]
    assert image_only[:, 0][~keep].abs().max() < image_only[:, 0][keep].abs().max()   # the rim's pixels pull less
    assert config.parse_args(["--masks", "--mask_consistency=1", "--consistency_rim=false"]).consistency_rim is False


def test_the_segmenter_learns_the_real_pairs(oasis):
    cfg = masked_config(oasis)
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    reals = data.batch(list(range(8)), mask_encoding="level")
    c = consistency.Consistency(cfg, torch.device("cpu"))
    first = c.segmenter_loss(reals).item()
    for _ in range(60):
        loss = c.segmenter_loss(reals)
        c.opt.zero_grad()
        loss.backward()
        c.opt.step()
    assert c.segmenter_loss(reals).item() < 0.5 * first
    labels = dataset.mask_labels(reals[:, 1:], K)
    assert segment.dice_scores(segment.segment(c.net, dataset.to_uint8(reals[:, :1])), labels)["mean"] > 0.6


def test_g_gets_the_term_only_after_the_segmenters_warm_up(oasis):
    cfg = masked_config(oasis)
    data = dataset.ImageDataset(oasis, resolution=16, with_masks=True, log=lambda m: None)
    t = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    optimized = []
    t.optimize = lambda module, opt, loss, phase: optimized.append((module, loss)) or torch.tensor(True)
    t.step()
    phases = [m for m, _ in optimized]
    assert t.consistency.net in phases and t.consistency.steps == 1      # S trained on the reals D saw
    assert "G_consistency" not in t.pop_stats()                         # before the warm-up: no term
    t.consistency.steps = consistency.WARMUP_STEPS
    optimized.clear()
    t.g_step()
    stats = t.pop_stats()
    assert stats["G_consistency"] > 0
    (module, loss), = optimized
    assert module is t.G and loss.item() == pytest.approx(stats["loss_G"] + 0.5 * stats["G_consistency"], rel=1e-5)
    off = trainer_lib.Trainer(dataclasses.replace(cfg, mask_consistency=0.0), torch.device("cpu"), data=data,
                              log=lambda m: None)
    assert off.consistency is None and "S" not in off.state_dict()
    notes = []
    resumed = trainer_lib.Trainer(cfg, torch.device("cpu"), data=data, log=notes.append)
    resumed.load_state_dict(off.state_dict())                # the option given on resuming a run without it
    assert resumed.consistency.steps == 0 and "no --mask_consistency segmenter" in notes[0]


def test_a_new_masked_run_has_the_term_without_the_rim_and_old_masked_configs_load_without_it():
    new = config.parse_args(["--masks"])
    assert new.mask_consistency == config.MASKS_CONSISTENCY == 1 and new.consistency_rim is False
    off = config.parse_args(["--masks", "--mask_consistency=0"])
    assert off.mask_consistency == 0 and off.consistency_rim is True
    assert config.parse_args(["--masks", "--consistency_rim=true"]).consistency_rim is True
    assert config.parse_args(["--masks", "--consistency_image=false"]).consistency_rim is True   # no image term
    assert config.parse_args(["--masks", "--mask_encoding=softmax"]).consistency_rim is True     # no snapped ring
    assert config.parse_args([]).mask_consistency == 0                       # image-only runs: nothing to segment
    saved = dataclasses.asdict(config.TrainConfig(masks=True))
    saved.pop("mask_consistency")                                             # a masked run from before the term
    assert config.resume_config(saved, {}).mask_consistency == 0
    assert config.resume_config(saved, {"mask_consistency": 1.0}).mask_consistency == 1    # a training setting


def test_a_masked_run_says_at_its_start_whether_the_segmenter_is_on_and_how_to_turn_it_off():
    line = config.describe_masks(config.parse_args(["--masks"]))
    assert "level encoding" in line and "ADA off" in line and "--mask_consistency 1" in line
    assert "off the CSF rim" in line and "0 turns it off" in line and "\n" not in line
    assert "no in-loop segmenter" in config.describe_masks(config.parse_args(["--masks", "--mask_consistency=0"]))


@pytest.mark.parametrize("options, message", [
    ({"mask_consistency": -1.0}, "--mask_consistency must be a weight >= 0"),
    ({"mask_consistency": float("inf")}, "--mask_consistency must be"),
    ({"mask_consistency": 1.0, "masks": False}, "--mask_consistency scores generated image"),
    ({"consistency_image": False}, "--consistency_image=false chooses the terms"),
    ({"consistency_rim": False}, "--consistency_rim=false shapes the image's term"),
    ({"consistency_rim": False, "mask_consistency": 1.0, "consistency_image": False}, "--consistency_rim=false shapes"),
    ({"consistency_mask_weight": 8.0}, "--consistency_mask_weight weighs the mask's term"),
    ({"consistency_brain": True}, "--consistency_brain weighs the term"),
    ({"consistency_mask_weight": -1.0, "mask_consistency": 1.0}, "--consistency_mask_weight must be a factor >= 0"),
    ({"consistency_mask_weight": float("nan"), "mask_consistency": 1.0}, "--consistency_mask_weight must be"),
])
def test_bad_consistency_options_are_one_line(options, message):
    cfg = config.TrainConfig(**{"masks": True, **options})
    with pytest.raises(config.ConfigError, match=message):
        config.validate(cfg)


@pytest.mark.slow
def test_a_run_with_the_consistency_term_resumes_bit_exactly_with_its_segmenter(
        oasis, tmp_path, tiny_args, run_train, weights, assert_same_weights, monkeypatch):
    monkeypatch.setattr(consistency, "WARMUP_STEPS", 6)                 # the term is on for most of the run
    args = tiny_args(oasis, tmp_path / "runs", masks="true", mask_consistency=0.5, aug="noaug")
    full = run_train(args + ["--kimg=0.12"])
    part = run_train(args + ["--kimg=0.06"])
    run_train([f"--resume={part}", "--kimg=0.12"])
    a, b = weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt")
    assert_same_weights(a, b)
    assert a["S_steps"] == b["S_steps"] == 30
    for name in a["S"]:
        assert torch.equal(a["S"][name], b["S"][name]), f"S.{name} differs"
