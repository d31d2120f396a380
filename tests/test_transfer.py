"""Transfer learning (transfer.py: --init_from, the RGB -> gray rule, --freeze_d) and --compile."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
import runs
import train
import transfer
from modules import Discriminator, Generator

SIZES = dict(channel_base=128, channel_max=16)


def test_rgb_to_gray_init_is_exact():
    G3 = Generator(z_dim=16, w_dim=16, img_resolution=16, img_channels=3, mapping_layers=2, **SIZES)
    D3 = Discriminator(img_resolution=16, img_channels=3, mapping_layers=2, **SIZES)
    with torch.no_grad():                                  # non-zero biases, so their rule is exercised too
        for net in (G3, D3):
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    G1 = Generator(z_dim=16, w_dim=16, img_resolution=16, img_channels=1, mapping_layers=2, **SIZES)
    G1_ema = Generator(z_dim=16, w_dim=16, img_resolution=16, img_channels=1, mapping_layers=2, **SIZES)
    D1 = Discriminator(img_resolution=16, img_channels=1, mapping_layers=2, **SIZES)
    state = {"G": G3.state_dict(), "D": D3.state_dict(), "G_ema": G3.state_dict()}
    notes = []
    transfer.init_networks({"G": G1, "D": D1, "G_ema": G1_ema}, state, config.TrainConfig(img_channels=3),
                           "rgb.pt", config.TrainConfig(img_channels=1), log=notes.append)
    assert notes and "RGB -> gray" in notes[0]
    z = torch.randn(4, 16)
    with torch.no_grad():
        rgb, gray = G3(z, noise_mode="const"), G1(z, noise_mode="const")
        luma = (torch.tensor(transfer.LUMA).view(1, 3, 1, 1) * rgb).sum(1, keepdim=True)
        torch.testing.assert_close(gray, luma, rtol=1e-5, atol=1e-5)
        img = torch.randn(4, 1, 16, 16)
        torch.testing.assert_close(D1(img), D3(img.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    for name, p in G1.state_dict().items():                       # every other tensor is copied as it is
        if "torgb" not in name:
            assert torch.equal(p, G3.state_dict()[name]), name


def test_freeze_d_keeps_the_frozen_layers_bit_identical(images, make_trainer):
    trainer = make_trainer(images, freeze_d=4)                    # b16: fromrgb, conv0, conv1, skip
    names = [name for name, _ in transfer.d_layers(trainer.D)]
    assert names[:5] == ["blocks.b16.fromrgb", "blocks.b16.conv0", "blocks.b16.conv1", "blocks.b16.skip",
                         "blocks.b8.conv0"]
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    for _ in range(17):                                           # D steps, two lazy R1 steps, G steps
        trainer.step()
    after = trainer.D.state_dict()
    for name, value in after.items():
        frozen = name.startswith("blocks.b16.")
        assert torch.equal(value, before[name]) == frozen, name
    assert all(p.requires_grad for p in trainer.D_trainable)
    with pytest.raises(config.ConfigError, match="--freeze_d=99: this D has 7 layers"):
        make_trainer(images, freeze_d=99)


def _pixels(path: Path):
    with Image.open(path) as im:
        return np.asarray(im).tolist()


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_source_networks(images, tmp_path, tiny_args, run_train):
    source = run_train(tiny_args(images, tmp_path / "runs", kimg=0.08))
    source_files = {p.name: p.stat().st_mtime_ns for p in source.iterdir()}
    run = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04, init_from=source))
    assert run != source
    # Same seed and grid: the new run's first grid is the source's last one, drawn by the copied G_ema.
    assert _pixels(run / "fakes000000.png") == _pixels(source / "fakes0000.080.png")
    state = runs.load_checkpoint(run / "checkpoint.pt", need=())
    assert state["cur_nimg"] == 40 and state["tick"] == 1          # fresh counters
    assert json.loads((run / "config.json").read_text())["init_from"] == str(source)
    assert {p.name: p.stat().st_mtime_ns for p in source.iterdir()} == source_files   # the source is untouched


def test_init_from_takes_the_source_shapes_unless_typed():
    source = config.TrainConfig(resolution=128, channel_base=4096, channel_max=256, mapping_layers=8)
    cfg = transfer.config_for(config.TrainConfig(channel_max=32), {"channel_max": 32}, source)
    assert (cfg.resolution, cfg.channel_base, cfg.channel_max, cfg.mapping_layers) == (128, 4096, 32, 8)
    masked = config.TrainConfig(masks=True, mask_encoding="onehot", mask_head="top")        # another mask form
    cfg = transfer.config_for(config.TrainConfig(masks=True), {"masks": True}, masked)
    assert (cfg.mask_encoding, cfg.mask_head) == ("onehot", "top")
    cfg = transfer.config_for(config.TrainConfig(masks=True), {"masks": True, "mask_head": "skip"}, masked)
    assert (cfg.mask_encoding, cfg.mask_head) == ("onehot", "skip")
    image_only = transfer.config_for(config.TrainConfig(masks=True), {"masks": True},
                                     config.TrainConfig(mask_encoding="split"))
    assert (image_only.mask_encoding, image_only.mask_head) == ("level", "skip")   # nothing to take from it


def test_init_from_applies_the_transfer_recipe_unless_typed():
    """Official resume branch: ADA speed 100 kimg and no EMA ramp-up, unless the user gives them."""
    source, preset = config.TrainConfig(), config.TrainConfig(ada_kimg=500.0, ema_rampup=0.05)
    cfg = transfer.config_for(preset, {}, source)
    assert (cfg.ada_kimg, cfg.ema_rampup) == (100.0, 0.0)
    assert transfer.recipe_line(cfg, {}) == ("--init_from: fine-tuning with ada_kimg 100 (transfer recipe), "
                                             "ema_rampup 0 (transfer recipe)")
    typed = {"ada_kimg": 250.0, "ema_rampup": 0.1}
    cfg = transfer.config_for(config.TrainConfig(ada_kimg=250.0, ema_rampup=0.1), typed, source)
    assert (cfg.ada_kimg, cfg.ema_rampup) == (250.0, 0.1)
    assert "ada_kimg 250 (given)" in transfer.recipe_line(cfg, typed)
    cfg = transfer.config_for(preset, {"ada_kimg": 250.0}, source)                # one typed, one from the recipe
    assert (cfg.ada_kimg, cfg.ema_rampup) == (500.0, 0.0)


def test_init_from_refuses_a_shape_that_cannot_match(images, tmp_path, capsys, tiny_args, run_train):
    source = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    capsys.readouterr()
    code = train.main(tiny_args(images, tmp_path / "runs", kimg=0.04, init_from=source, channel_max=32))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("--init_from: fine-tuning with ada_kimg")           # the recipe line, then the error
    assert code == 1 and len(err) == 2 and err[1].startswith("error: ")
    assert "--init_from" in err[1] and "has shape" in err[1] and "in this run's network" in err[1]
    code = train.main(tiny_args(images, tmp_path / "runs", init_from=tmp_path / "missing"))
    assert code == 1 and "--init_from" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_and_eager_steps_agree(images, monkeypatch, make_trainer):
    # The compiler's code generation takes minutes on two cores; aot_eager traces the same graphs (and
    # fullgraph proves G's synthesis and D compile without a break) in seconds.
    monkeypatch.setattr(train.torch, "compile", functools.partial(torch.compile, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    a = make_trainer(images, compile=True)
    b = make_trainer(images, compile=False)
    assert a.D_fast is not a.D and b.D_fast is b.D
    for _ in range(5):                                            # D, R1, G and path-length steps
        torch.manual_seed(7)
        a.step()
        torch.manual_seed(7)
        b.step()
    for net in ("G", "D", "G_ema"):
        for (name, p), q in zip(getattr(a, net).state_dict().items(), getattr(b, net).state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{net}.{name}")
    torch._dynamo.reset()
