"""Projection of slices into the latent space (project.py, predict.py --project / --projected_w) with tiny
generators (16-32 px, channel_base 128)."""

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
import modules
import predict
import project
import runs


def tiny_generator(res: int = 32, **kw) -> modules.Generator:
    """A freshly initialised generator (noise strengths 0, as at the start of training)."""
    torch.manual_seed(0)
    return modules.Generator(z_dim=16, w_dim=16, img_resolution=res, img_channels=1, mapping_layers=2,
                             channel_base=128, channel_max=16, **kw).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_args) -> Path:
    """A run folder whose checkpoint.pt holds an untrained 16 px generator with masks."""
    root = tmp_path_factory.mktemp("project")
    cfg = config.parse_args(tiny_args(root / "unused", root / "runs", masks=True))
    G, _ = runs.build_networks(cfg)
    run = root / "runs" / "00000-demo"
    run.mkdir(parents=True)
    runs.save_checkpoint(run / "checkpoint.pt", {"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
                                                  "config": json.loads(cfg.to_json()), "G_ema": G.state_dict()})
    return run


@pytest.fixture(scope="module")
def slices(tmp_path_factory, run_dir) -> Path:
    """Two of the checkpoint's own images as PNGs, and one 24x20 RGB image (converted and resized)."""
    G = runs.load_generator(run_dir, torch.device("cpu"))[0]
    folder = tmp_path_factory.mktemp("slices")
    for i, image in enumerate(predict.generate(G, [3, 4])):
        Image.fromarray(image[0].numpy()).save(folder / f"slice{i}.png")
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / "odd.png")
    return folder


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------
# The mathematics

def test_schedules_follow_the_paper():
    assert project.learning_rate(0.0) == 0
    assert project.learning_rate(0.025) == pytest.approx(0.05)               # halfway up the linear ramp-up
    assert project.learning_rate(0.5) == pytest.approx(0.1)                  # flat in the middle
    assert project.learning_rate(0.875) == pytest.approx(0.05)               # halfway down the cosine ramp-down
    assert project.learning_rate(0.999) < 1e-5
    assert project.w_noise_scale(0.0, 2.0) == pytest.approx(0.1)             # w_std * 0.05
    assert project.w_noise_scale(0.375, 2.0) == pytest.approx(0.025)         # (1 - 0.5)^2
    assert project.w_noise_scale(0.75, 2.0) == 0 and project.w_noise_scale(0.9, 2.0) == 0


def test_noise_regularizer_zero_for_decorrelated_maps_positive_for_correlated_noise():
    # s s^T with s = 2, 0, 2, 0, -2, 0, -2, 0, ...: every product of neighbours holds a 0 at 16 px, and its 2x2
    # average pooling p p^T (p = 1, 1, -1, -1, ...) has neighbour products averaging 0 at 8 px.
    s = torch.tensor([2.0, 0, 2, 0, -2, 0, -2, 0]).repeat(2)                  # [16]
    decorrelated = s[:, None] * s[None, :]                                    # [16, 16]
    assert project.noise_regularizer([decorrelated]).item() == 0
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 34, 34), 3, 1)[0, 0]       # [32, 32] correlated
    white = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    project.normalize_noise_([smooth, white])                                # both mean 0, std 1
    assert project.noise_regularizer([smooth]) > 10 * project.noise_regularizer([white]) > 0


def test_noise_regularizer_stops_at_8x8():
    x = torch.ones(32, 32)                                                    # every shifted product is 1
    assert project.noise_regularizer([x]).item() == pytest.approx(2 * 3)      # 32, 16, 8: x and y each
    assert project.noise_regularizer([torch.ones(4, 4)]).item() == pytest.approx(2)


def test_normalize_noise():
    noise = [torch.randn(8, 8) * 3 + 2]
    project.normalize_noise_(noise)
    assert noise[0].mean().abs() < 1e-6 and noise[0].square().mean().item() == pytest.approx(1, abs=1e-5)


def test_w_stats_match_their_definition():
    G = tiny_generator(16)
    w_avg, w_std = project.w_stats(G, samples=500, seed=1)
    z = torch.from_numpy(np.random.RandomState(1).randn(500, 16)).float()
    w = G.mapping(z)[:, 0]
    assert torch.allclose(w_avg[0, 0], w.mean(0), atol=1e-5)
    assert w_std == pytest.approx(((w - w.mean(0)).square().sum(1).mean()).sqrt().item(), rel=1e-4)


# ----------------------------------------------------------------------------------------------
# The loop

def test_projecting_the_generators_own_image_recovers_it():
    G = tiny_generator(32)
    target = predict.generate(G, [5])[0]                                     # uint8 [1, 32, 32]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    r = project.project(G, target, project.Settings(steps=100, w_plus=True, seed=0, frame_every=25))
    assert r.ssim > 0.9, r.ssim
    assert r.ws.shape == (G.num_ws, G.w_dim) and r.image.shape == target.shape and r.labels is None
    assert len(r.frames) == 5 and torch.equal(r.frames[-1], r.image)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())   # G is not changed
    start = project.project(G, target, project.Settings(steps=1, w_plus=True, seed=0))
    assert start.ssim < 0.6                                                   # w_avg alone is not the answer


def test_projection_is_reproducible_and_noise_maps_stay_normalized():
    G = tiny_generator(16)
    target = predict.generate(G, [1])[0]
    a, b = (project.project(G, target, project.Settings(steps=5, seed=3)) for _ in range(2))
    assert torch.equal(a.ws, b.ws) and torch.equal(a.image, b.image)
    assert torch.equal(a.ws[0], a.ws[-1])                                     # plain w: one w for every layer
    for n in a.noise.values():
        assert n.mean().abs() < 1e-5 and n.square().mean().item() == pytest.approx(1, abs=1e-4)


def test_masked_generator_compares_the_image_and_returns_the_mask():
    G = tiny_generator(16, mask_classes=4)
    target = predict.generate(G, [2])[0]                                      # image channel only: [1, 16, 16]
    r = project.project(G, target, project.Settings(steps=3))
    assert r.image.shape == (1, 16, 16) and r.labels.shape == (16, 16) and r.labels.max() < 4
    with pytest.raises(ValueError, match=r"target must be \[1, 16, 16\]"):
        project.project(G, torch.zeros(5, 16, 16, dtype=torch.uint8))


def test_conditional_generator_projects_with_its_label():
    G = tiny_generator(16, c_dim=1)
    c = torch.tensor([[0.3]])
    target = predict.synthesize(G, G.mapping(torch.randn(1, 16), c))[0]
    r = project.project(G, target, project.Settings(steps=3), c=c)
    assert r.image.shape == (1, 16, 16)


def test_from_ws_reproduces_the_reconstruction_exactly():
    G = tiny_generator(16)
    target = predict.generate(G, [7])[0]
    r = project.project(G, target, project.Settings(steps=5, w_plus=True))
    images, labels = project.from_ws(G, r.ws[None], {k: v[None] for k, v in r.noise.items()})
    assert torch.equal(images[0], r.image) and labels is None


def test_feature_distance_from_a_torchscript_file(tmp_path):
    class Features(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)                       # [N, 3, R/2, R/2]
    good = tmp_path / "features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                      # torch.jit.script
        torch.jit.script(Features()).save(str(good))
    G = tiny_generator(16)
    net = project.load_feature_net(good, "cpu", 16)
    target = predict.generate(G, [4])[0]
    r = project.project(G, target, project.Settings(steps=20, w_plus=True), feature_net=net)
    assert r.ssim > project.project(G, target, project.Settings(steps=1, w_plus=True), feature_net=net).ssim


def test_feature_network_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")

    class Scalar(torch.nn.Module):
        def forward(self, x):
            return x.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Scalar()).save(str(tmp_path / "scalar.pt"))
    for name, message in (("missing.pt", "no such file"), ("junk.pt", "not a TorchScript file"),
                          ("scalar.pt", r"returned \[\] for 2 images")):
        with pytest.raises(ValueError, match=f"^--distance {tmp_path / name}: {message}"):
            project.load_feature_net(tmp_path / name, "cpu", 16)


# ----------------------------------------------------------------------------------------------
# The command line

@pytest.mark.slow
def test_project_command_writes_every_file(capsys, run_dir, slices, tmp_path, predict_main):
    out = tmp_path / "out"
    code, stdout, err = predict_main(capsys, "project", slices, "--checkpoint", run_dir, "--steps", 10,
                                     "--outdir", out, "--device", "cpu")
    assert code == 0, err
    assert "1 of 3 image(s) resized to 16x16" in err
    summary = json.loads((out / "projection.json").read_text())
    assert [Path(i["name"]).name for i in summary["images"]] == ["odd.png", "slice0.png", "slice1.png"]
    assert summary["ssim_mean"] == pytest.approx(np.mean([i["ssim"] for i in summary["images"]]))
    assert summary["steps"] == 10 and summary["distance"] == "(1 - SSIM) + L1" and summary["w_plus"] is False
    assert f"mean  SSIM {summary['ssim_mean']:.4f}" in stdout
    for i in range(3):
        assert png(out / f"projection{i:04d}.png").shape == (16, 48)          # target | reconstruction | mask
        with Image.open(out / f"projection{i:04d}.gif") as gif:
            assert gif.size == (32, 16) and gif.n_frames > 1                   # target | reconstruction over time
    assert (out / "projections.png").is_file()
    with np.load(out / "projected_w.npz") as f:
        assert f["w"].shape == (3, 6, 16) and len(f["names"]) == 3
        assert sorted(k for k in f.files if k.startswith("noise.")) == sorted("noise." + n for n in
                                                                             project.noise_names(
                                                                                 runs.load_generator(run_dir, "cpu")[0]))

    # from_w round trip: the same reconstructions and masks, bit for bit
    code, stdout, err = predict_main(capsys, "from_w", out / "projected_w.npz", "--checkpoint", run_dir,
                                     "--outdir", out, "--device", "cpu")
    assert code == 0, err
    for i in range(3):
        side = png(out / f"projection{i:04d}.png")
        assert np.array_equal(png(out / f"projected{i:04d}.png"), side[:, 16:32])
        assert np.array_equal(png(out / f"projected{i:04d}_seg.png"), side[:, 32:])


def test_project_w_plus_and_seed(capsys, run_dir, slices, tmp_path, predict_main):
    code, _, err = predict_main(capsys, "--checkpoint", run_dir, "--project", slices / "slice0.png", "--steps", 3,
                                "--w_plus", "--seed", 7, "--outdir", tmp_path, "--device", "cpu")   # earlier spelling
    assert code == 0, err
    summary = json.loads((tmp_path / "projection.json").read_text())
    assert summary["w_plus"] is True and summary["seed"] == 7 and len(summary["images"]) == 1
    with np.load(tmp_path / "projected_w.npz") as f:
        assert not np.array_equal(f["w"][0, 0], f["w"][0, -1])               # one w per layer


def test_bad_inputs_are_one_line_naming_the_file(capsys, run_dir, slices, tmp_path, predict_main):
    broken, empty, oasis = tmp_path / "broken.png", tmp_path / "empty", tmp_path / "oasis"
    broken.write_bytes(b"\x89PNG not really")
    empty.mkdir()
    (oasis / "keras_png_slices_validate").mkdir(parents=True)
    wrong_w = tmp_path / "wrong.npz"
    np.savez(wrong_w, w=np.zeros((2, 5, 16), np.float32))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    common = ("--checkpoint", run_dir, "--outdir", tmp_path / "out", "--device", "cpu")
    for args, message in (
            (("project", slices / "slice0.png", broken), f"{broken}: not an image file"),
            (("project", empty), f"project {empty}: no images"),
            (("project", tmp_path / "nope.png"), f"project {tmp_path / 'nope.png'}: no such file or folder"),
            (("project", oasis), f"project {oasis}: an OASIS folder"),
            (("from_w", wrong_w), f"from_w {wrong_w}: w of shape [2, 5, 16]; this generator takes w of shape "
                                  f"[N, 6, 16]"),
            (("from_w", junk), f"from_w {junk}: not a readable .npz file"),
            (("from_w", tmp_path / "none.npz"), f"from_w {tmp_path / 'none.npz'}: no such file"),
            (("--projected_w", tmp_path / "none.npz"), f"from_w {tmp_path / 'none.npz'}: no such file"),  # earlier
            (("project", slices, "--distance", tmp_path / "none.pt"), f"--distance {tmp_path / 'none.pt'}: no such")):
        code, _, err = predict_main(capsys, *args, *common)
        assert code == 1 and err.startswith(f"error: {message}"), err
        assert len(err.strip().splitlines()) == 1, err


def test_projection_options_are_checked(capsys, run_dir, slices, predict_main):
    for args, message in ((("images", "--w_plus"), "--w_plus is not an option of images; it belongs to project"),
                          (("images", "--seed", 3), "--seed is not an option of images; it belongs to project"),
                          (("project", slices, "--seeds", "0-3"), "--seeds is not an option of project"),
                          (("project", slices, "--seed", 2 ** 32), "argument --seed: must be in [0, 4294967296)"),
                          (("from_w", "w.npz", "--steps", 3), "--steps is not an option of from_w"),
                          (("project",), "the following arguments are required: IMAGE_OR_FOLDER"),
                          (("--seed", 3), "--seed is not an option of images"),                 # earlier spellings
                          (("--project", slices, "--projected_w", "w.npz"), "--project and --projected_w choose two")):
        mode = args[:1] if not args[0].startswith("-") else ()
        code, _, err = predict_main(capsys, *mode, "--checkpoint", run_dir, *args[len(mode):])
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_project_py_does_not_import_predict_py():
    tree = ast.parse(Path(project.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "predict" not in names and "scoring" not in names
