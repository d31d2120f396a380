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
import scoring
import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_args) -> Path:
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


def test_same_seed_gives_the_same_png_across_runs_and_batches(run_dir, tmp_path, capsys, predict_main):
    assert predict_main(capsys, "images", "--checkpoint", run_dir, "--seeds", "0-5", "--batch", "4",
                        "--outdir", tmp_path / "a")[0] == 0
    # The earlier spelling, with no mode, is `images`.
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


def test_a_run_folder_resolves_to_its_latest_checkpoint(run_dir, tmp_path, capsys, predict_main):
    assert runs.resolve_checkpoint(run_dir) == run_dir / "checkpoint.pt"
    for tag in ("000006", "0000.080", "000012", "000010"):
        (tmp_path / f"snapshot-{tag}.pt").touch()
    (tmp_path / "snapshot-latest.pt").touch()
    assert runs.resolve_checkpoint(tmp_path) == tmp_path / "snapshot-000012.pt"
    (tmp_path / "checkpoint.pt").touch()
    assert runs.resolve_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    # Default outdir: <run folder>/predict.
    code, out, _ = predict_main(capsys, "images", "--checkpoint", run_dir, "--seeds", "2")
    assert code == 0 and png(run_dir / "predict" / "seed0002.png").shape == (16, 16)
    assert str(run_dir / "predict") in out


def test_a_snapshot_without_optimizer_state_generates_the_same_images(run_dir, tmp_path, capsys, predict_main):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    snap = tmp_path / "snaps"
    snap.mkdir()
    runs.save_checkpoint(snap / "snapshot-000001.pt", {k: v for k, v in state.items() if not k.startswith("opt_")})
    assert predict_main(capsys, "images", "--checkpoint", snap, "--seeds", "1", "--outdir", tmp_path / "a")[0] == 0
    assert predict_main(capsys, "images", "--checkpoint", run_dir, "--seeds", "1", "--outdir", tmp_path / "b")[0] == 0
    assert (tmp_path / "a/seed0001.png").read_bytes() == (tmp_path / "b/seed0001.png").read_bytes()


# ----------------------------------------------------------------------------------------------
# Interpolation and style mixing

def test_interpolation_writes_frames_and_a_gif(run_dir, G, tmp_path, capsys, predict_main):
    out = tmp_path / "walk"
    out.mkdir()
    (out / "frame0099.png").write_bytes(b"from an earlier, longer walk")
    (out / "notes.txt").write_text("mine")
    code, stdout, _ = predict_main(capsys, "interpolate", "--checkpoint", run_dir, "--seeds", "0-2", "--frames", "3",
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


def test_style_mix_writes_one_figure_per_band(run_dir, tmp_path, capsys, predict_main):
    code, out, _ = predict_main(capsys, "--checkpoint", run_dir, "--style-mix", "--row-seeds", "0-1",   # earlier
                                "--col-seeds", "2-4", "--outdir", tmp_path)                            # spelling
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


def test_score_on_an_oasis_folder_with_and_without_inception(run_dir, inception, tmp_path, capsys, make_oasis,
                                                             predict_main):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    code, out, _ = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--num", "6",
                                "--outdir", tmp_path / "a")
    assert code == 0 and "FID/KID skipped: pass --inception inception-2015-12-05.pt" in out
    assert "nearest-real SSIM, mean" in out and "memorization share" in out
    scores = json.loads((tmp_path / "a/scores.json").read_text())
    assert (scores["reference"], scores["reference_images"], scores["heldout"], scores["heldout_images"]) == \
        ("train", 4, "validate split", 2)
    assert scores["num_generated"] == 6 and scores["seeds"] == "0-5" and "fid" not in scores and "kid" not in scores
    for key in ("heldout_nearest_ssim_mean", "heldout_nearest_ssim_median", "diversity_ssim", "real_diversity_ssim",
                "diversity_ms_ssim", "real_diversity_ms_ssim"):
        assert np.isfinite(scores[key]), key
    assert scores["memorization_share"] * 6 == pytest.approx(round(scores["memorization_share"] * 6))   # of 6 slices
    assert "axial levels covered (nearest real)" in out                          # OASIS names carry the level
    assert sum(scores["level_counts"].values()) == 6 and set(scores["level_counts"]) == {"0", "1"}
    assert scores["level_coverage"] in (0.5, 1.0) and scores["real_level_coverage"] in (0.5, 1.0)
    assert len(scores["closest_pairs"]) == 6 and scores["closest_pairs"][0]["real"].startswith("case_")
    ssims = [p["ssim"] for p in scores["closest_pairs"]]
    assert ssims == sorted(ssims, reverse=True)
    assert scores["nearest_ssim_mean"] == pytest.approx(np.mean(ssims))          # all 6 slices are listed
    assert scores["nearest_ssim_median"] in ssims
    assert (tmp_path / "a/closest_pairs.png").stat().st_size > 0
    code, out, _ = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--seeds", "0-3",
                                "--inception", inception, "--outdir", tmp_path / "b")
    assert code == 0 and "skipped" not in out and "FID" in out
    scores = json.loads((tmp_path / "b/scores.json").read_text())
    assert scores["num_generated"] == 4 and scores["fid"] > 0 and np.isfinite(scores["kid"])   # unlike sets differ


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
    table = scoring.format_table(scores)
    assert "memorization share" in table and "0.5000" in table and "FID" not in table


def test_scorer_computes_the_real_side_once_and_adds_levels_and_positions(monkeypatch):
    g = torch.Generator().manual_seed(0)
    reference = (torch.rand(6, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    heldout = (torch.rand(3, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    names = [f"case_001_slice_{k}.nii.png" for k in (0, 0, 1, 1, 2, 2)]
    labels = np.array([[0.0], [0.0], [0.5], [0.5], [1.0], [1.0]], np.float32)
    real = dataset.RealSets(reference, names, heldout, {}, labels, np.array([[0.0], [0.5], [1.0]], np.float32))
    calls = []
    baseline = metrics.real_baseline
    monkeypatch.setattr(metrics, "real_baseline", lambda *a, **k: (calls.append(1), baseline(*a, **k))[1])
    scorer = scoring.Scorer(real, torch.device("cpu"), pairs=20, position_column=0)
    s = scorer(reference[[1, 2, 5]], asked=np.array([0.0, 0.5, 0.0]))             # copies of slices 0, 1 and 2
    again = scorer(reference[[1, 2, 5]])
    assert len(calls) == 1 and s["nearest_index"] == [1, 2, 5]
    assert s["level_counts"] == {0: 1, 1: 1, 2: 1} and s["level_coverage"] == 1 and s["level_spread"] == 0
    assert s["position_error"] == pytest.approx(1 / 3)                            # asked 0, found 1 for the last
    assert "position_error" not in again and again["nearest_ssim_mean"] == s["nearest_ssim_mean"]
    assert s["nearest_ssim_level_mean"] == pytest.approx(1.0)                     # copies: 1 at every level
    assert 0 < s["heldout_nearest_ssim_level_mean"] <= 1
    assert "nearest_values" not in s and "heldout_nearest_values" not in s        # no per-sample lists leak out
    doubled = scorer(reference[[1, 1, 1, 2]] // 2)                                # level 0 drawn three times
    levels = [scorer.levels[i] for i in doubled["nearest_index"]]
    near = metrics.nearest_ssim((reference[[1, 1, 1, 2]] // 2).float() / 255, reference.float() / 255)[0]
    assert doubled["nearest_ssim_level_mean"] == pytest.approx(metrics.level_mean(near.tolist(), levels))


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


def test_bad_checkpoints_are_one_line_errors(run_dir, tmp_path, capsys, predict_main):
    for name, message in _bad_files(run_dir, tmp_path).items():
        code, _, err = predict_main(capsys, "images", "--checkpoint", tmp_path / f"{name}.pt", "--outdir",
                                    tmp_path / "out")
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert f"{name}.pt" in err
    for path, message in ((tmp_path / "missing.pt", "no such file or folder"),
                          (tmp_path / "empty_run", "no checkpoint.pt or snapshot-<kimg>.pt in this folder")):
        code, _, err = predict_main(capsys, "--checkpoint", path)
        assert code == 1 and err == f"error: --checkpoint {path}: {message}" + \
            ("; give a checkpoint file or its run folder\n" if "missing" in path.name else "\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["images", "--seeds", "5-2"], "--seeds '5-2': the range 5-2 runs backwards"),
    (["images", "--seeds", "a-b"], "--seeds 'a-b': 'a-b' is not a seed"),
    (["score"], "the following arguments are required: --real"),
    (["images", "--real", "x"], "--real is not an option of images; it belongs to score"),
    (["images", "--frames", "3"], "--frames is not an option of images; it belongs to interpolate"),
    (["interpolate", "--seeds", "4"], "interpolate needs at least two seeds"),
    (["style_mix", "--seeds", "4"], "--seeds is not an option of style_mix; it belongs to images, interpolate, "
                                    "sweep, score, export"),
    (["style_mix", "--row-seeds", "3-1"], "--row_seeds '3-1': the range 3-1 runs backwards"),
    (["images", "--skip_bad"], "--skip_bad is not an option of images; it belongs to score"),
    (["project", "x.png", "--trunc", "0.5"], "--trunc is not an option of project"),
    (["from_w", "w.npz", "--slice", "0.5"], "--slice is not an option of from_w"),
    (["export", "out", "--outdir", "o"], "--outdir is not an option of export"),
    (["images", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["images", "--device", "tpu"], "--device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["score", "--real", "x", "--num", "5", "--seeds", "0-4"], "argument --seeds: not allowed with argument --num"),
    (["images", "--class", "1", "--slice", "0.5"], "argument --slice: not allowed with argument --class"),
    (["images", "--trunc", "abc"], "argument --trunc: invalid float value: 'abc'"),
    (["images", "--trunc", "nan"], "argument --trunc: must be a finite number"),
    (["images", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["sweep", "--positions", "1"], "argument --positions/--steps: must be >= 2, got 1"),
    (["project", "x.png", "--seed", "-1"], "argument --seed: must be in [0, 4294967296), got -1"),
    (["images", "--noise-mode", "loud"], "argument --noise_mode: invalid choice: 'loud'"),
    (["--mode_that_is_not"], "unrecognized arguments: --mode_that_is_not"),
    # The earlier spellings reach the same checks.
    (["--score"], "the following arguments are required: --real"),
    (["--real", "x"], "--real is not an option of images; it belongs to score"),
    (["--style-mix", "--seeds", "4"], "--seeds is not an option of style_mix"),
    (["--interpolate", "--seeds", "4"], "interpolate needs at least two seeds"),
    (["--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["--interpolate", "--style-mix"], "--interpolate and --style_mix choose two modes; give one"),
])
def test_bad_options_are_one_line_errors(run_dir, args, message, capsys, predict_main):
    """Errors of the top parser, of a mode's subparser and of predict.py's own checks: all one line, exit 2."""
    mode = args[:1] if not args[0].startswith("-") else []
    code, _, err = predict_main(capsys, *mode, "--checkpoint", run_dir, *args[len(mode):])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_no_mode_and_an_unknown_mode_are_one_line_errors(capsys, predict_main):
    for args, message in (([], "the following arguments are required: MODE"),
                          (["paint", "--checkpoint", "x"], "argument MODE: invalid choice: 'paint'")):
        code, _, err = predict_main(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("old,new", [
    (["--checkpoint", "r", "--seeds", "0-3"], ["images", "--checkpoint", "r", "--seeds", "0-3"]),
    (["--checkpoint", "r", "--score", "--real", "d"], ["score", "--checkpoint", "r", "--real", "d"]),
    (["--interpolate", "--checkpoint", "r"], ["interpolate", "--checkpoint", "r"]),
    (["--checkpoint", "r", "--style-mix", "--row-seeds", "0-1"],
     ["style_mix", "--checkpoint", "r", "--row_seeds", "0-1"]),
    (["--checkpoint", "r", "--sweep", "--steps", "5"], ["sweep", "--checkpoint", "r", "--steps", "5"]),
    (["--checkpoint", "r", "--project", "a.png", "dir", "--steps", "3"],
     ["project", "a.png", "dir", "--checkpoint", "r", "--steps", "3"]),
    (["--checkpoint", "r", "--project=a.png"], ["project", "a.png", "--checkpoint", "r"]),
    (["--projected-w", "w.npz", "--checkpoint", "r"], ["from_w", "w.npz", "--checkpoint", "r"]),
    (["--checkpoint", "r", "--export", "out", "--num", "4"], ["export", "out", "--checkpoint", "r", "--num", "4"]),
    (["score", "--checkpoint", "r", "--real", "d"], ["score", "--checkpoint", "r", "--real", "d"]),   # left as is
    (["--help"], ["--help"]), ([], []),
])
def test_the_earlier_spellings_map_to_the_modes(old, new):
    assert predict.translate_argv(old) == new


def test_an_earlier_spelling_parses_as_its_mode():
    pairs = [(["--checkpoint", "r"], ["images", "--checkpoint", "r"]),
             (["--checkpoint", "r", "--sweep", "--steps", "5"], ["sweep", "--checkpoint", "r", "--positions", "5"]),
             (["--checkpoint", "r", "--project", "a.png", "--seed", "3"],
              ["project", "a.png", "--checkpoint", "r", "--seed", "3"]),
             (["--checkpoint", "r", "--export", "out"], ["export", "out", "--checkpoint", "r"])]
    for old, new in pairs:
        assert vars(predict.parse_args(old)) == vars(predict.parse_args(new)), old
    assert predict.parse_args(["--checkpoint", "r"]).seeds == "0-15"
    assert predict.parse_args(["score", "--checkpoint", "r", "--real", "d"]).noise_mode == "random"


def test_bad_real_folders_and_inception_files(run_dir, tmp_path, capsys, predict_main):
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
        code, _, err = predict_main(capsys, "score", "--checkpoint", run_dir, "--num", "2", "--outdir",
                                    tmp_path / "out", *args)
        assert code == 1 and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_cli_help_and_a_cli_error():
    result = subprocess.run([sys.executable, "predict.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for text in ("images", "interpolate", "style_mix", "sweep", "score", "project", "from_w", "export",
                 "<folder of the checkpoint>/predict"):
        assert text in result.stdout, text
    result = subprocess.run([sys.executable, "predict.py", "score", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0
    for text in ("--checkpoint", "--seeds", "--num", "--trunc", "--noise_mode", "--real", "--inception"):
        assert text in result.stdout, text
    assert "--frames" not in result.stdout and "--w_plus" not in result.stdout       # other modes' options
    result = subprocess.run([sys.executable, "predict.py", "score", "--checkpoint", "x"], cwd=REPO,
                            capture_output=True, text=True)                         # a subparser's error: one line
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--real" in result.stderr
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


def test_wrong_inception_and_unwritable_outdir_fail_before_generation(run_dir, tmp_path, capsys, monkeypatch,
                                                                      make_oasis, predict_main):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(NotInception()).save(str(tmp_path / "not_inception.pt"))
    monkeypatch.setattr(predict, "generate", lambda *a, **k: pytest.fail("generated before the inputs were checked"))
    code, _, err = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--num", "4",
                                "--inception", tmp_path / "not_inception.pt", "--outdir", tmp_path / "o")
    assert code == 1 and err.count("\n") == 1 and "not_inception.pt: fails on a [2, 3, 299, 299] batch" in err, err
    (tmp_path / "a_file").write_text("")
    code, _, err = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--num", "4",
                                "--outdir", tmp_path / "a_file")
    assert code == 1 and err.count("\n") == 1 and "a_file: not a writable folder" in err, err


def test_images_stream_to_disk_a_batch_at_a_time(run_dir, tmp_path, capsys, monkeypatch, predict_main):
    sizes = []
    real = predict.synthesize
    monkeypatch.setattr(predict, "synthesize", lambda G, ws, *a, **k: (sizes.append(len(ws)), real(G, ws, *a, **k))[1])
    code, out, _ = predict_main(capsys, "images", "--checkpoint", run_dir, "--seeds", "0-9", "--batch", "3",
                                "--outdir", tmp_path)
    assert code == 0 and sizes == [3, 3, 3, 1]
    assert len(list(tmp_path.glob("seed*.png"))) == 10 and png(tmp_path / "grid.png").shape == (3 * 16, 4 * 16)   # 10 tiles, 4 columns


def test_nan_weights_are_refused_not_drawn_black(run_dir, tmp_path, capsys, predict_main):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    name = next(iter(state["G_ema"]))
    state["G_ema"][name] = state["G_ema"][name] * float("nan")
    torch.save(state, tmp_path / "nan.pt")
    code, _, err = predict_main(capsys, "images", "--checkpoint", tmp_path / "nan.pt", "--outdir", tmp_path / "out")
    assert code == 1 and f"the weights hold NaN or inf (G_ema.{name})" in err
    assert not (tmp_path / "out").exists()


def test_skip_bad_reaches_the_real_data(run_dir, tmp_path, capsys, make_oasis, predict_main):
    real = make_oasis(tmp_path / "oasis", subjects=(2, 1, 1), slices=2, size=32)
    train_dir = real / "keras_png_slices_train"
    (train_dir / "case_009_slice_0.nii.png").symlink_to(tmp_path / "nowhere.png")
    code, _, err = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--num", "4",
                                "--outdir", tmp_path / "a")
    assert code == 1 and "broken symbolic link" in err and "--skip_bad" in err and err.count("\n") == 1, err
    code, _, err = predict_main(capsys, "score", "--checkpoint", run_dir, "--real", real, "--num", "4",
                                "--skip-bad", "--outdir", tmp_path / "b")
    assert code == 0 and (tmp_path / "b" / "scores.json").is_file(), err
