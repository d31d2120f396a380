"""Sampling and scoring (predict.py) from a tiny 16 px checkpoint, on tiny PNG fixtures."""

import argparse
import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
import dataset
import metrics
import predict
import runs
import train
from test_dataset import make_oasis
from test_train import tiny_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with checkpoint.pt of a 16 px generator trained for one step (so w_avg is not zero)."""
    root = tmp_path_factory.mktemp("predict")
    images = root / "imgs"
    images.mkdir()
    for i in range(8):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    cfg = config.parse_args(tiny_args(images, root / "runs"))
    data = dataset.ImageDataset(images, resolution=16, log=lambda m: None)
    trainer = train.Trainer(cfg, torch.device("cpu"), data=data, log=lambda m: None)
    trainer.step()
    run = root / "runs" / "00000-demo"
    run.mkdir(parents=True)
    runs.save_checkpoint(run / "checkpoint.pt", trainer.state_dict())
    return run


@pytest.fixture(scope="module")
def G(run_dir):
    return runs.load_generator(run_dir / "checkpoint.pt", torch.device("cpu"))[0]


def predict_main(capsys, *args):
    """(exit code, stdout, stderr) of predict.main."""
    code = predict.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------
# Seeds and generation

def test_parse_seeds_ranges_and_lists():
    assert predict.parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert predict.parse_seeds(" 5 ") == [5] and predict.parse_seeds("3,1") == [3, 1]
    assert predict.parse_seeds("4294967295") == [2 ** 32 - 1]


@pytest.mark.parametrize("text,message", [
    ("5-2", "the range 5-2 runs backwards"), ("a-b", "'a-b' is not a seed"), ("-", "'-' is not a seed"),
    ("", "'' is not a seed"), ("1,,2", "'' is not a seed"), ("-3", "'-3' is not a seed"),
    ("4294967296", "below 2^32"), ("0-9999999", "more than 1,000,000 seeds"),
])
def test_parse_seeds_errors_name_the_option(text, message):
    with pytest.raises(config.ConfigError, match="^--seeds ") as e:
        predict.parse_seeds(text)
    assert message in str(e.value)


def test_z_is_the_official_tools_latent():
    z = predict.z_from_seed(7, 16)
    assert z.shape == (1, 16) and z.dtype == torch.float32
    np.testing.assert_array_equal(z.numpy(), np.random.RandomState(7).randn(1, 16).astype(np.float32))


def test_same_seed_gives_the_same_png_across_runs_and_batches(run_dir, tmp_path, capsys):
    assert predict_main(capsys, "--checkpoint", run_dir, "--seeds", "0-5", "--batch", "4",
                        "--outdir", tmp_path / "a")[0] == 0
    assert predict_main(capsys, "--checkpoint", run_dir / "checkpoint.pt", "--seeds", "5,3,0-2,4", "--batch", "1",
                        "--outdir", tmp_path / "b")[0] == 0
    for s in range(6):
        name = f"seed{s:04d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert png(tmp_path / "a" / name).shape == (16, 16)
    assert not np.array_equal(png(tmp_path / "a/seed0000.png"), png(tmp_path / "a/seed0001.png"))
    grid = png(tmp_path / "a/grid.png")                                          # 6 images: 3 columns x 2 rows
    assert grid.shape == (32, 48)
    np.testing.assert_array_equal(grid[16:, :16], png(tmp_path / "a/seed0003.png"))
    assert {p.name for p in (tmp_path / "a").iterdir()} == {f"seed{s:04d}.png" for s in range(6)} | {"grid.png"}


def test_random_noise_is_fixed_per_seed_and_leaves_the_global_rng_alone(G):
    G = copy.deepcopy(G)
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)                                                    # make the noise visible
    state = torch.get_rng_state()
    a = predict.generate(G, [3, 4, 5], noise_mode="random", batch=3)
    b = predict.generate(G, [5, 4], noise_mode="random", batch=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[1:].flip(0), b)
    assert not torch.equal(a, predict.generate(G, [3, 4, 5], noise_mode="const"))


def test_truncation_zero_gives_w_avg_for_every_seed(G):
    assert G.mapping.w_avg.abs().sum() > 0
    same = predict.generate(G, [0, 1, 2, 3], psi=0.0)
    assert all(torch.equal(same[0], x) for x in same[1:])
    ws = predict.seeds_to_ws(G, [0, 1], psi=0.0)
    torch.testing.assert_close(ws, G.mapping.w_avg.expand_as(ws))
    free = predict.generate(G, [0, 1, 2, 3], psi=1.0)
    assert not all(torch.equal(free[0], x) for x in free[1:])


def test_a_run_folder_resolves_to_its_latest_checkpoint(run_dir, tmp_path, capsys):
    assert runs.resolve_checkpoint(run_dir) == run_dir / "checkpoint.pt"
    for tag in ("000006", "0000.080", "000012", "000010"):
        (tmp_path / f"snapshot-{tag}.pt").touch()
    (tmp_path / "snapshot-latest.pt").touch()
    assert runs.resolve_checkpoint(tmp_path) == tmp_path / "snapshot-000012.pt"
    (tmp_path / "checkpoint.pt").touch()
    assert runs.resolve_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    # Default outdir: <run folder>/predict.
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--seeds", "2")
    assert code == 0 and png(run_dir / "predict" / "seed0002.png").shape == (16, 16)
    assert str(run_dir / "predict") in out


def test_a_snapshot_without_optimizer_state_generates_the_same_images(run_dir, tmp_path, capsys):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    snap = tmp_path / "snaps"
    snap.mkdir()
    runs.save_checkpoint(snap / "snapshot-000001.pt", {k: v for k, v in state.items() if not k.startswith("opt_")})
    assert predict_main(capsys, "--checkpoint", snap, "--seeds", "1", "--outdir", tmp_path / "a")[0] == 0
    assert predict_main(capsys, "--checkpoint", run_dir, "--seeds", "1", "--outdir", tmp_path / "b")[0] == 0
    assert (tmp_path / "a/seed0001.png").read_bytes() == (tmp_path / "b/seed0001.png").read_bytes()


# ----------------------------------------------------------------------------------------------
# Interpolation and style mixing

def test_interpolation_writes_frames_and_a_gif(run_dir, G, tmp_path, capsys):
    out = tmp_path / "walk"
    out.mkdir()
    (out / "frame0099.png").write_bytes(b"from an earlier, longer walk")
    (out / "notes.txt").write_text("mine")
    code, stdout, _ = predict_main(capsys, "--checkpoint", run_dir, "--interpolate", "--seeds", "0-2", "--frames", "3",
                                   "--outdir", out)
    assert code == 0 and "9 frames" in stdout
    frames = sorted(p.name for p in out.glob("frame*.png"))
    assert frames == [f"frame{i:04d}.png" for i in range(9)]                    # the stale frame0099 is gone
    assert (out / "notes.txt").read_text() == "mine"                            # other files are not touched
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (16, 16)
    seeds = predict.generate(G, [0, 1, 2])                                       # each segment starts at its seed
    for k in range(3):
        np.testing.assert_array_equal(png(out / f"frame{3 * k:04d}.png"), seeds[k, 0].numpy())
    ws = predict.interpolation_ws(G, [0, 1], frames=4)
    end = predict.seeds_to_ws(G, [0, 1])
    torch.testing.assert_close(ws[2], (end[0] + end[1]) / 2)                     # halfway = the midpoint in W


def test_style_bands_follow_resolution():
    assert predict.style_bands(14) == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 14)}   # 256 px
    assert predict.style_bands(10) == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 10)}   # 64 px
    assert predict.style_bands(6) == {"coarse": (0, 4), "middle": (4, 6)}                      # 16 px
    assert predict.style_bands(4) == {"coarse": (0, 4)}                                        # 8 px


def test_style_mix_grid_swaps_the_chosen_layers(G):
    rows, cols = [0, 1], [2, 3, 4]
    images = predict.generate(G, rows + cols)
    everything = predict.style_mix_grid(G, rows, cols, (0, G.num_ws))            # all layers from the columns
    nothing = predict.style_mix_grid(G, rows, cols, (0, 0))
    assert everything.shape == (3 * 4, 1, 16, 16) and everything[0].sum() == 0   # blank corner
    for j in range(3):
        assert torch.equal(everything[1 + j], images[2 + j])                     # top row: column seeds
    for i in range(2):
        assert torch.equal(everything[4 * (i + 1)], images[i])                   # left column: row seeds
        for j in range(3):
            assert torch.equal(everything[4 * (i + 1) + 1 + j], images[2 + j])
            assert torch.equal(nothing[4 * (i + 1) + 1 + j], images[i])
    coarse = predict.style_mix_grid(G, rows, cols, (0, 4))
    assert not torch.equal(coarse[5], images[0]) and not torch.equal(coarse[5], images[2])


def test_style_mix_writes_one_figure_per_band(run_dir, tmp_path, capsys):
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--style-mix", "--row-seeds", "0-1",
                                "--col-seeds", "2-4", "--outdir", tmp_path)
    assert code == 0 and "no fine" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stylemix-coarse.png", "stylemix-middle.png"]
    assert png(tmp_path / "stylemix-coarse.png").shape == (3 * 16, 4 * 16)


# ----------------------------------------------------------------------------------------------
# Scoring

class FakeInception(torch.nn.Module):
    """Stands in for the TorchScript Inception-v3: per image (min, max, mean, height, width) of its input."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        n = x.shape[0]
        size = torch.tensor([x.shape[2], x.shape[3]], dtype=x.dtype).expand(n, 2)
        return torch.cat([x.flatten(1).amin(1, keepdim=True), x.flatten(1).amax(1, keepdim=True),
                          x.mean(dim=[1, 2, 3])[:, None], size], dim=1)


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "fake-inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                      # torch.jit.script
        torch.jit.script(FakeInception()).save(str(path))
    return path


def test_inception_features_see_three_channels_at_299_in_the_uint8_range(inception):
    model = metrics.load_inception(inception, torch.device("cpu"))
    images = torch.full((5, 1, 16, 16), 200, dtype=torch.uint8)
    images[0, 0, 0, 0] = 0
    f = metrics.inception_features(model, images, batch=2)
    assert f.shape == (5, 5)
    assert f[1].tolist() == pytest.approx([200, 200, 200, 299, 299]) and f[0, 0] == 0


def test_score_on_an_oasis_folder_with_and_without_inception(run_dir, inception, tmp_path, capsys):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--num", "6",
                                "--outdir", tmp_path / "a")
    assert code == 0 and "FID/KID skipped: pass --inception inception-2015-12-05.pt" in out
    assert "nearest-real SSIM, mean" in out and "memorization share" in out
    scores = json.loads((tmp_path / "a/scores.json").read_text())
    assert (scores["reference"], scores["reference_images"], scores["heldout"], scores["heldout_images"]) == \
        ("train", 4, "validate split", 2)
    assert scores["num_generated"] == 6 and scores["seeds"] == "0-5" and "fid" not in scores and "kid" not in scores
    for key in ("nearest_ssim_mean", "nearest_ssim_median", "heldout_nearest_ssim_mean", "heldout_nearest_ssim_median",
                "diversity_ssim", "real_diversity_ssim", "diversity_ms_ssim", "real_diversity_ms_ssim"):
        assert -1 <= scores[key] <= 1, key
    assert 0 <= scores["memorization_share"] <= 1
    assert "axial levels covered (nearest real)" in out                          # OASIS names carry the level
    assert sum(scores["level_counts"].values()) == 6 and set(scores["level_counts"]) == {"0", "1"}
    assert scores["level_coverage"] in (0.5, 1.0) and scores["real_level_coverage"] in (0.5, 1.0)
    assert len(scores["closest_pairs"]) == 6 and scores["closest_pairs"][0]["real"].startswith("case_")
    ssims = [p["ssim"] for p in scores["closest_pairs"]]
    assert ssims == sorted(ssims, reverse=True)
    assert (tmp_path / "a/closest_pairs.png").stat().st_size > 0
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--seeds", "0-3",
                                "--inception", inception, "--outdir", tmp_path / "b")
    assert code == 0 and "skipped" not in out and "FID" in out
    scores = json.loads((tmp_path / "b/scores.json").read_text())
    assert scores["num_generated"] == 4 and scores["fid"] >= 0 and np.isfinite(scores["kid"])


def test_plain_folder_holds_out_ten_percent_and_max_real_caps_the_reference(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = config.TrainConfig(resolution=16)
    reference, names, heldout, info, _, _ = predict.load_real(folder, cfg, log=lambda m: None)
    assert (len(reference), len(heldout), len(names)) == (18, 2, 18) and info["heldout"].startswith("random 10%")
    held = {bytes(x.numpy()) for x in heldout}
    assert not held & {bytes(x.numpy()) for x in reference}                    # disjoint
    reference, names, _, info, _, _ = predict.load_real(folder, cfg, max_real=5, log=lambda m: None)
    assert len(reference) == len(names) == info["reference_images"] == 5


def test_copies_of_training_slices_count_as_memorized():
    g = torch.Generator().manual_seed(0)
    reference, heldout = torch.rand(6, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    generated = torch.cat([reference[[4, 1]], torch.rand(2, 1, 16, 16, generator=g)])
    scores = metrics.quality_scores(generated, reference, heldout, pairs=20)
    assert scores["memorization_share"] == 0.5
    assert scores["nearest_ssim_mean"] > scores["heldout_nearest_ssim_mean"]
    assert sorted(scores["closest"][:2]) == [(0, 4, pytest.approx(1.0)), (1, 1, pytest.approx(1.0))]
    table = predict.format_table(scores)
    assert "memorization share" in table and "0.5000" in table and "FID" not in table


# ----------------------------------------------------------------------------------------------
# Errors: one line naming the file or option, non-zero exit

def _bad_files(run_dir: Path, tmp: Path) -> dict:
    good = (run_dir / "checkpoint.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(good[:len(good) // 2])
    torch.save({"weights": torch.ones(1)}, tmp / "other.pt")
    torch.save({"format": runs.CHECKPOINT_FORMAT, "obj": argparse.Namespace(a=1)}, tmp / "pickled.pt")
    torch.save({"format": runs.CHECKPOINT_FORMAT, "version": 1, "config": {"resolution": 16}}, tmp / "no_weights.pt")
    (tmp / "empty_run").mkdir()
    return {"cut": "unreadable or truncated checkpoint", "other": "not a checkpoint of this project",
            "pickled": "holds pickled Python objects", "no_weights": "damaged checkpoint, the key 'G_ema' is missing"}


def test_bad_checkpoints_are_one_line_errors(run_dir, tmp_path, capsys):
    for name, message in _bad_files(run_dir, tmp_path).items():
        code, _, err = predict_main(capsys, "--checkpoint", tmp_path / f"{name}.pt", "--outdir", tmp_path / "out")
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert f"{name}.pt" in err
    for path, message in ((tmp_path / "missing.pt", "no such file or folder"),
                          (tmp_path / "empty_run", "no checkpoint.pt or snapshot-<kimg>.pt in this folder")):
        code, _, err = predict_main(capsys, "--checkpoint", path)
        assert code == 1 and err == f"error: --checkpoint {path}: {message}" + \
            ("; give a checkpoint file or its run folder\n" if "missing" in path.name else "\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--seeds", "5-2"], "--seeds '5-2': the range 5-2 runs backwards"),
    (["--seeds", "a-b"], "--seeds 'a-b': 'a-b' is not a seed"),
    (["--score"], "--score needs --real PATH"),
    (["--real", "x"], "--real is used only with --score"),
    (["--frames", "3"], "--frames is used only with --interpolate"),
    (["--interpolate", "--seeds", "4"], "--interpolate needs at least two seeds"),
    (["--style-mix", "--seeds", "4"], "--style_mix takes --row_seeds and --col_seeds"),
    (["--style_mix", "--row-seeds", "3-1"], "--row_seeds '3-1': the range 3-1 runs backwards"),
    (["--skip_bad"], "--skip_bad is used only with --score"),
    (["--device", "tpu"], "--device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--score", "--real", "x", "--num", "5", "--seeds", "0-4"], "--num and --seeds both choose"),
    (["--trunc", "abc"], "argument --trunc: invalid float value: 'abc'"),
    (["--trunc", "nan"], "--trunc must be a finite number"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--noise-mode", "loud"], "argument --noise_mode: invalid choice: 'loud'"),
    (["--interpolate", "--style-mix"], "not allowed with argument"),
])
def test_bad_options_are_one_line_errors(run_dir, args, message, capsys):
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_bad_real_folders_and_inception_files(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_script.pt").write_bytes(b"not a zip")
    torch.save({"w": torch.ones(1)}, tmp_path / "state_dict.pt")
    cases = [(["--real", tmp_path / "empty"], f"{tmp_path / 'empty'}: is empty; point --real at a folder of images"),
             (["--real", tmp_path / "nowhere"], f"--real {tmp_path / 'nowhere'}: no such folder"),
             (["--real", tmp_path / "empty", "--inception", tmp_path / "not_script.pt"],
              f"--inception {tmp_path / 'not_script.pt'}: not a TorchScript file"),
             (["--real", tmp_path / "empty", "--inception", tmp_path / "state_dict.pt"],
              f"--inception {tmp_path / 'state_dict.pt'}: not a TorchScript file"),
             (["--real", tmp_path / "empty", "--inception", tmp_path / "none.pt"], "no such file")]
    for args, message in cases:
        code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--score", "--num", "2", "--outdir",
                                    tmp_path / "out", *args)
        assert code == 1 and err.count("\n") == 1 and message in err, err


def test_cli_help_and_a_cli_error():
    result = subprocess.run([sys.executable, "predict.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for text in ("--checkpoint", "--seeds", "--trunc", "--noise_mode", "--interpolate", "--style_mix", "--score",
                 "--real", "--inception", "<folder of the checkpoint>/predict"):
        assert text in result.stdout, text
    result = subprocess.run([sys.executable, "predict.py", "--checkpoint", "no/such.pt"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith("error: --checkpoint no/such.pt: no such file")
    assert result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Fault-injection findings: checks before the expensive work, streaming, NaN weights

class NotInception(torch.nn.Module):
    """A TorchScript model that is not a feature network: it takes one argument."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_wrong_inception_and_unwritable_outdir_fail_before_generation(run_dir, tmp_path, capsys, monkeypatch):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(NotInception()).save(str(tmp_path / "not_inception.pt"))
    monkeypatch.setattr(predict, "generate", lambda *a, **k: pytest.fail("generated before the inputs were checked"))
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--num", "4",
                                "--inception", tmp_path / "not_inception.pt", "--outdir", tmp_path / "o")
    assert code == 1 and err.count("\n") == 1 and "not_inception.pt: fails on a [2, 3, 299, 299] batch" in err, err
    (tmp_path / "a_file").write_text("")
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--num", "4",
                                "--outdir", tmp_path / "a_file")
    assert code == 1 and err.count("\n") == 1 and "a_file: not a writable folder" in err, err


def test_images_stream_to_disk_a_batch_at_a_time(run_dir, tmp_path, capsys, monkeypatch):
    sizes = []
    real = predict.synthesize
    monkeypatch.setattr(predict, "synthesize", lambda G, ws, *a, **k: (sizes.append(len(ws)), real(G, ws, *a, **k))[1])
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--seeds", "0-9", "--batch", "3",
                                "--outdir", tmp_path)
    assert code == 0 and sizes == [3, 3, 3, 1]
    assert len(list(tmp_path.glob("seed*.png"))) == 10 and png(tmp_path / "grid.png").shape == (3 * 16, 4 * 16)   # 10 tiles, 4 columns


def test_nan_weights_are_refused_not_drawn_black(run_dir, tmp_path, capsys):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    name = next(iter(state["G_ema"]))
    state["G_ema"][name] = state["G_ema"][name] * float("nan")
    torch.save(state, tmp_path / "nan.pt")
    code, _, err = predict_main(capsys, "--checkpoint", tmp_path / "nan.pt", "--outdir", tmp_path / "out")
    assert code == 1 and f"the weights hold NaN or inf (G_ema.{name})" in err
    assert not (tmp_path / "out").exists()


def test_skip_bad_reaches_the_real_data(run_dir, tmp_path, capsys):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    train_dir = real / "keras_png_slices_train"
    (train_dir / "case_009_slice_0.nii.png").symlink_to(tmp_path / "nowhere.png")
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--num", "4",
                                "--outdir", tmp_path / "a")
    assert code == 1 and "broken symbolic link" in err and "--skip_bad" in err and err.count("\n") == 1, err
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--score", "--real", real, "--num", "4",
                                "--skip-bad", "--outdir", tmp_path / "b")
    assert code == 0 and (tmp_path / "b" / "scores.json").is_file(), err
