"""Fault-injection findings on predict.py, replayed on 8 px generators that are never trained: labels that are
not numbers or lie outside what the model saw, seed counts that would fill the memory, an export onto a file,
and the temporary folders of killed exports. Each attack ends in one line, and nothing is lost."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import config
import runs

DEAD_PID = 999_999_999                  # above any pid_max: never a live process


def write_checkpoint(path: Path, **labels) -> Path:
    """A checkpoint of an untrained 8 px generator: G_ema only, with the label settings given."""
    cfg = config.TrainConfig(resolution=8, channel_base=64, channel_max=8, z_dim=8, w_dim=8, mapping_layers=1,
                             **labels)
    config.validate(cfg)
    state = {"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
             "config": json.loads(cfg.to_json()), "G_ema": runs.build_networks(cfg)[0].state_dict()}
    runs.save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    return {
        "plain": write_checkpoint(root / "plain.pt"),
        "slice": write_checkpoint(root / "slice.pt", cond="slice", c_dim=1, label_names="slice_position",
                                  label_encoding="fourier"),
        "covariate": write_checkpoint(root / "covariate.pt", cond="json", c_dim=2, label_names="slice_position,age",
                                      label_encoding="fourier", label_range="0.1:0.9,60:90"),
        "fourier": write_checkpoint(root / "fourier.pt", cond="json", c_dim=2, label_names="slice_position,score",
                                    label_encoding="fourier"),
        "official": write_checkpoint(root / "official.pt", cond="json", c_dim=2, label_encoding="none"),
    }


def one_line(code: int, err: str, expected_code: int, *words) -> None:
    assert code == expected_code and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


# ----------------------------------------------------------------------------------------------
# --label: finite, and inside the trained range where the model has one

@pytest.mark.parametrize("model, label, words", [
    ("slice", "nan", ["slice_position must be a finite number, got nan"]),
    ("slice", "inf", ["slice_position must be a finite number, got inf"]),
    ("slice", "1.5", ["slice_position 1.5 is outside [0, 1], the range this model was trained on"]),
    ("slice", "-0.01", ["slice_position -0.01 is outside [0, 1]"]),
    ("covariate", "0.5,95", ["age 95 is outside [60, 90]"]),
    ("covariate", "0.05,70", ["slice_position 0.05 is outside [0.1, 0.9]"]),
    ("covariate", "0.5,-inf", ["age must be a finite number"]),
    ("fourier", "0.5,1.2", ["score 1.2 is outside [0, 1]"]),
    ("official", "nan,0", ["label_0 must be a finite number"]),
])
def test_label_must_be_finite_and_inside_the_trained_range(models, tmp_path, capsys, predict_main, model, label,
                                                           words):
    out = tmp_path / "out"
    code, _, err = predict_main(capsys, "images", "--checkpoint", models[model], "--seeds", "0", "--label", label,
                                "--outdir", out)
    one_line(code, err, 2, f"--label {label!r}", *words)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("model, label", [("slice", "0"), ("slice", "1"), ("covariate", "0.1,90"),
                                          ("covariate", "0.9,60"), ("fourier", "0,1"), ("official", "5,-3")])
def test_labels_inside_the_range_or_without_one_are_drawn(models, tmp_path, capsys, predict_main, model, label):
    """The bounds themselves are trained values; a converted official network's labels have no known range."""
    out = tmp_path / "out"
    code, _, err = predict_main(capsys, "images", "--checkpoint", models[model], "--seeds", "0-1", "--label", label,
                                "--outdir", out)
    assert code == 0, err
    with Image.open(out / "seed0001.png") as im:
        assert np.asarray(im).shape == (8, 8)


# ----------------------------------------------------------------------------------------------
# --num: the cap of --seeds, said before anything is loaded

@pytest.mark.parametrize("mode", [["export", "synthetic"], ["score", "--real", "real"]], ids=["export", "score"])
def test_num_has_the_cap_of_seeds(tmp_path, capsys, predict_main, mode):
    missing = tmp_path / "missing.pt"                           # refused before the checkpoint is looked at
    code, _, err = predict_main(capsys, *mode, "--checkpoint", missing, "--num", "1000001")
    one_line(code, err, 2, "--num 1000001: more than 1,000,000 seeds")
    code, _, err = predict_main(capsys, *mode, "--checkpoint", missing, "--seeds", "0-1000000")
    one_line(code, err, 2, "--seeds '0-1000000': more than 1,000,000 seeds")
    code, _, err = predict_main(capsys, *mode, "--checkpoint", missing, "--num", "1000000")
    one_line(code, err, 1, "missing.pt: no such file")                   # at the cap: on to the checkpoint


# ----------------------------------------------------------------------------------------------
# export: onto a file, onto a folder in use, and the leftovers of killed exports

def test_export_onto_an_existing_file_is_one_line_and_keeps_it(models, tmp_path, capsys, predict_main):
    target = tmp_path / "synthetic"
    target.write_text("precious\n")
    code, _, err = predict_main(capsys, "export", target, "--checkpoint", models["plain"], "--num", "2")
    one_line(code, err, 1, f"export {target}: is a file, not a folder")
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]       # no temporary folder left
    # The earlier spelling reaches the same check.
    code, _, err = predict_main(capsys, "--checkpoint", models["plain"], "--export", target, "--num", "2")
    one_line(code, err, 1, "is a file, not a folder")


def test_export_into_a_folder_in_use_is_refused_before_loading(tmp_path, capsys, predict_main):
    target = tmp_path / "synthetic"
    target.mkdir()
    (target / "mine.png").write_bytes(b"x")
    code, _, err = predict_main(capsys, "export", target, "--checkpoint", tmp_path / "missing.pt", "--num", "2")
    one_line(code, err, 1, "exists and is not empty")
    assert [p.name for p in target.iterdir()] == ["mine.png"]


def test_killed_exports_leave_nothing_after_the_next_run(models, tmp_path, capsys, predict_main):
    target = tmp_path / "synthetic"
    dead, live, other = (tmp_path / f".synthetic.partial-{DEAD_PID}", tmp_path / f".synthetic.partial-{os.getppid()}",
                         tmp_path / f".elsewhere.partial-{DEAD_PID}")
    for folder in (dead, live, other):
        (folder / "keras_png_slices_train").mkdir(parents=True)
        (folder / "keras_png_slices_train" / "case_001_slice_0.nii.png").write_bytes(b"half")
    code, _, err = predict_main(capsys, "export", target, "--checkpoint", models["plain"], "--num", "2")
    assert code == 0, err
    assert f"removed {dead}, left by an export that was killed" in err
    assert not dead.exists()
    assert live.exists() and other.exists()                     # a running export's, and another target's
    assert sorted(p.name for p in (target / "keras_png_slices_train").iterdir()) == [
        "case_001_slice_0.nii.png", "case_001_slice_1.nii.png"]
    assert json.loads((target / "export.json").read_text())["num"] == 2
