"""Slice stacks (stacks.py, `predict.py volume`) and their consistency score: a stack loads with nibabel with the
stated shape, spacing and orientation and holds predict's slices level by level; real volumes score as more
consistent than stacks mixed from different subjects' or seeds' slices."""

import json

import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

import config
import dataset
import stacks
import volumes


@pytest.fixture(scope="module")
def oasis(tmp_path_factory, make_oasis):
    return make_oasis(tmp_path_factory.mktemp("stacks") / "oasis", subjects=(3, 1, 1), slices=4, size=16)


@pytest.fixture(scope="module")
def slice_run(oasis, tmp_path_factory, tiny_args, run_train):
    """A tiny model conditioned on the slice position (OASIS names), with tissue masks."""
    return run_train(tiny_args(oasis, tmp_path_factory.mktemp("stacks_run") / "runs", cond="slice", masks=True,
                               kimg=0.02, metrics_num=0))


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.slow
def test_a_stack_loads_as_stated_and_holds_predicts_slices(slice_run, tmp_path, capsys, predict_main):
    code, out, err = predict_main(capsys, "volume", "--checkpoint", slice_run, "--seeds", "0-1", "--slices", "5",
                                  "--outdir", tmp_path / "vol")
    assert code == 0, err
    assert "2 stacks seed0000.nii.gz ... (16 x 16 x 5 voxels" in out and "geometry from the default" in out
    image = nibabel.load(tmp_path / "vol" / "seed0001.nii.gz")
    # The default geometry: a 208 mm square at 16 px; 5 levels over positions 0..1, which a --cond=slice model
    # reads as the slicer's 0.1-0.9 of a 156 mm brain: 124.8 mm in 4 steps.
    assert image.shape == (16, 16, 5) and nibabel.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.header.get_zooms(), (13.0, 13.0, 31.2))
    volume, seg = np.asarray(image.dataobj), np.asarray(nibabel.load(tmp_path / "vol" / "seed0001_seg.nii.gz").dataobj)
    assert volume.dtype == np.uint8 and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 3}
    for k, level in enumerate(np.linspace(0, 1, 5)):
        assert predict_main(capsys, "images", "--checkpoint", slice_run, "--seeds", "1", "--slice", level,
                            "--outdir", tmp_path / f"level{k}")[0] == 0
        # Slice k of the stack, shown anterior up with the subject's left on the left, is predict's slice: the
        # same latent, label and noise; a batch of 5 levels against a batch of one may round a pixel differently.
        stacked, alone = volume[:, :, k].T[::-1].astype(int), png(tmp_path / f"level{k}" / "seed0001.png")
        assert np.abs(stacked - alone).max() <= 1 and (stacked != alone).mean() < 0.01
        assert (seg[:, :, k].T[::-1] * 85 != png(tmp_path / f"level{k}" / "seed0001_seg.png")).mean() < 0.01
    assert not np.array_equal(volume[:, :, 0], volume[:, :, 4])
    for name in ("seed0000_views.png", "seed0001_views.png", "views.png"):
        assert png(tmp_path / "vol" / name).ndim == 3
    info = json.loads((tmp_path / "vol" / "volume.json").read_text())
    assert info["shape"] == [16, 16, 5] and info["levels"] == [0, 0.25, 0.5, 0.75, 1]


@pytest.mark.slow
def test_a_stack_takes_its_geometry_from_the_slicers_dataset_json(slice_run, tmp_path, capsys, predict_main):
    data = tmp_path / "slices"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"labels": [], "slices": {
        "count": 7, "range": [0.1, 0.9], "geometry": {"side_mm": 200.0, "axial_extent_mm": 150.0}}}))
    code, out, err = predict_main(capsys, "--checkpoint", slice_run, "--volume", "--seeds", "3", "--data", data,
                                  "--outdir", tmp_path / "vol")                   # the flag spelling
    assert code == 0, err
    image = nibabel.load(tmp_path / "vol" / "seed0003.nii.gz")
    assert image.shape == (16, 16, 7) and np.allclose(image.header.get_zooms(), (12.5, 12.5, 20.0))
    assert json.loads((tmp_path / "vol" / "volume.json").read_text())["geometry_from"] == str(data / "dataset.json")
    code, out, err = predict_main(capsys, "volume", "--checkpoint", slice_run, "--seeds", "3", "--range", "0.9,0.1",
                                  "--outdir", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "--range must be lo,hi with 0 <= lo < hi <= 1, got '0.9,0.1'" in err


@pytest.fixture(scope="module")
def covariate_run(tmp_path_factory, tiny_args, run_train):
    """A tiny model conditioned on the slice position and an age in years (as dataset.py slices --csv labels)."""
    root = tmp_path_factory.mktemp("covariates") / "slices"
    root.mkdir()
    rng = np.random.default_rng(0)
    labels = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / f"{i}.png")
        labels.append([f"{i}.png", [i / 7, 60 + 4 * i]])
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "label_names": ["slice_position", "age"]}))
    return run_train(tiny_args(root, tmp_path_factory.mktemp("covariates_run") / "runs", cond="json", kimg=0.02,
                               metrics_num=0))


@pytest.mark.slow
def test_a_covariate_model_stacks_the_covariates_asked_for(covariate_run, tmp_path, capsys, predict_main):
    code, out, err = predict_main(capsys, "volume", "--checkpoint", covariate_run, "--seeds", "2", "--slices", "3",
                                  "--range", "0,1", "--covariates", "age=72", "--outdir", tmp_path / "v72")
    assert code == 0, err
    info = json.loads((tmp_path / "v72" / "volume.json").read_text())
    assert info["covariates"] == {"age": 72.0} and info["levels"] == [0, 0.5, 1]
    volume = np.asarray(nibabel.load(tmp_path / "v72" / "seed0002.nii.gz").dataobj)
    # Slice k of the stack is predict's image of the same seed asked for (level k, age 72).
    code, out, err = predict_main(capsys, "images", "--checkpoint", covariate_run, "--seeds", "2", "--label", "0.5,72",
                                  "--outdir", tmp_path / "one")
    assert code == 0, err
    stacked, alone = volume[:, :, 1].T[::-1].astype(int), png(tmp_path / "one" / "seed0002.png")
    assert np.abs(stacked - alone).max() <= 1
    code, out, err = predict_main(capsys, "volume", "--checkpoint", covariate_run, "--seeds", "2", "--slices", "3",
                                  "--range", "0,1", "--covariates", "age=61", "--outdir", tmp_path / "v61")
    assert code == 0, err
    assert not np.array_equal(volume, np.asarray(nibabel.load(tmp_path / "v61" / "seed0002.nii.gz").dataobj))
    for given, message in (([], "also conditioned on age; give --covariates age=V"),
                           (["--covariates", "sex=1"], "give each of age once as name=value"),
                           (["--covariates", "age=72,age=73"], "give each of age once as name=value"),
                           (["--covariates", "age=x"], "every value must be a number"),
                           (["--covariates", "age=nan"], "age must be a finite number"),
                           (["--covariates", "age=20"], "age 20 is outside [60, 88], the range this model was "
                                                        "trained on")):
        code, out, err = predict_main(capsys, "volume", "--checkpoint", covariate_run, "--outdir", tmp_path / "bad",
                                      *given)
        assert code == 2 and err.count("\n") == 1 and message in err, (given, err)
    assert not (tmp_path / "bad").exists()                 # refused before any folder is made


def test_plans_of_a_model_without_recorded_geometry_and_refusals(tmp_path):
    cfg = config.TrainConfig(cond="json", c_dim=1, label_names="slice_position", resolution=64, data=str(tmp_path))
    plan = stacks.plan(cfg)                                   # no dataset.json: the defaults
    assert len(plan.levels) == 32 and plan.levels[0] == 0.1 and plan.levels[-1] == 0.9
    assert plan.pixel_mm == 208 / 64 and np.isclose(plan.slice_mm, 156 * 0.8 / 31) and "default" in plan.source
    plan = stacks.plan(cfg, slices=3, span="0.2,0.6")
    assert np.allclose(plan.levels, [0.2, 0.4, 0.6]) and np.isclose(plan.slice_mm, 156 * 0.2)
    for bad, message in (({"label_names": "", "c_dim": 0, "cond": "none"}, "this one: unconditional"),
                         ({"label_names": "age,slice_position", "c_dim": 2}, "this one: age,slice_position")):
        with pytest.raises(config.ConfigError, match=message):
            stacks.plan(config.TrainConfig(**{**vars(cfg), **bad}))
    for slices in (0, 1):
        with pytest.raises(config.ConfigError, match=f"--slices must be >= 2, got {slices}"):
            stacks.plan(cfg, slices=slices)


def test_a_volume_is_its_slices_in_ras_order():
    slices = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)          # [N, R, R], anterior up
    volume = stacks.to_volume(slices)
    assert volume.shape == (3, 3, 2)
    assert volume[0, 2, 1] == slices[1, 0, 0]                                # left, anterior, upper level
    axial, coronal, sagittal = stacks.orthogonal_views(volume)
    assert np.array_equal(axial, slices[1])                                  # the middle level as drawn
    assert coronal.shape == (2, 3) and sagittal.shape == (2, 3)
    assert np.array_equal(coronal[0], slices[1, 1])                          # top row: the upper level


# ----------------------------------------------------------------------------------------------
# The consistency score

def subjects_volume(i: int) -> np.ndarray:
    """A smooth ellipsoid brain of subject i: its own size, place and texture."""
    rng = np.random.default_rng(i)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (32, 36, 28)], indexing="ij")
    centre, radii = rng.uniform(13, 19, 3), rng.uniform(9, 13, 3)
    inside = (((np.stack([x, y, z], -1) - centre) / radii) ** 2).sum(-1) < 1
    texture = 150 + 60 * np.sin(x / rng.uniform(2, 4) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(2, 4))
    return np.where(inside, texture + z, 0).astype(np.float32)


@pytest.fixture(scope="module")
def real_volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_stacks")
    for i in range(4):
        nibabel.save(nibabel.Nifti1Image(subjects_volume(i), np.eye(4)), str(root / f"sub{i}.nii.gz"))
    out = volumes.make_slices(root, root / "slices", count=8, resolution=32, shares=(1, 0, 0), log=lambda m: None)
    data = dataset.ImageDataset(out, resolution=32, mirror=False, log=lambda m: None, cond="json")
    return torch.from_numpy(data.images), list(data.files), data.labels[:, 0]


def test_real_volumes_are_more_consistent_than_mixed_stacks(real_volumes):
    images, names, positions = real_volumes
    real, levels = stacks.real_stacks(images, names, positions)
    assert real.shape == (4, 8, 1, 32, 32) and np.allclose(levels, np.linspace(0.1, 0.9, 8))
    order = np.random.default_rng(0).permutation(len(names))                # the order of files does not matter
    shuffled, _ = stacks.real_stacks(images[order], [names[i] for i in order], positions[order])
    assert torch.equal(real, shuffled)
    whole, mixed = stacks.consistency(real), stacks.consistency(stacks.mixed(real))
    assert whole["neighbour_ssim"] > mixed["neighbour_ssim"] + 0.1
    assert whole["outline_dice"] > mixed["outline_dice"] + 0.02
    same = stacks.consistency(real[:, :1].expand(-1, 3, -1, -1, -1))           # a slice repeated
    assert same["neighbour_ssim"] == pytest.approx(1, abs=1e-5) and same["outline_dice"] == 1


def test_mixed_stacks_take_each_level_from_another_stack():
    stack = torch.arange(3)[:, None].expand(3, 4)[..., None]               # [S=3, N=4, 1]: each holds its index
    mixed = stacks.mixed(stack)[..., 0]
    assert mixed.tolist() == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]]
    assert (mixed[:, 1:] != mixed[:, :-1]).all()


@pytest.mark.slow
def test_score_reports_the_consistency_of_stacks(slice_run, oasis, tmp_path, capsys, predict_main):
    code, out, err = predict_main(capsys, "score", "--checkpoint", slice_run, "--real", oasis, "--num", "4",
                                  "--outdir", tmp_path)
    assert code == 0, err
    assert "stacks: SSIM of neighbouring slices" in out and "stacks of different seeds' slices (a floor)" in out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["stack_counts"] == {"generated": 4, "real": 3, "levels": 4}
    for prefix in ("", "real_", "mixed_"):
        assert -1 <= scores[f"{prefix}stack_ssim"] <= 1 and 0 <= scores[f"{prefix}stack_outline_dice"] <= 1
