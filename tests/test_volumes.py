"""Volumes to slices (volumes.py, `python dataset.py slices`) on synthetic NIfTI volumes made here."""

import json

import nibabel
import numpy as np
import pytest
from PIL import Image

import dataset
import oasis
import volumes

SHAPE = (24, 20, 30)                                          # X (left -> right), Y (post -> ant), Z (inf -> sup)


def phantom():
    """A box brain in z 5..24 whose intensity rises with z, with a bright marker at the left-anterior corner
    of every slice, and a label map (class = z % 4 inside the brain)."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    brain = (z >= 5) & (z <= 24) & (x >= 2) & (x < 22) & (y >= 2) & (y < 18)
    data = np.where(brain, 100.0 + 10 * z, 0.0)
    data[2:5, 15:18, 5:25] = 900                               # left (small x), anterior (large y)
    labels = np.where(brain, 1 + z % 3, 0).astype(np.int16)
    return data.astype(np.float32), labels


def save(folder, name, array, affine=np.eye(4)):
    folder.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, affine), str(folder / name))


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_slices_of_a_synthetic_volume(tmp_path):
    data, labels = phantom()
    save(tmp_path / "vols", "sub01.nii.gz", data)
    save(tmp_path / "segs", "sub01_seg.nii.gz", labels)
    out = volumes.make_slices(tmp_path / "vols", tmp_path / "out", tmp_path / "segs", count=3, lo=0, hi=1,
                              resolution=32, shares=(1, 0, 0), log=lambda m: None)
    img_dir, seg_dir = out / "keras_png_slices_train", out / "keras_png_slices_seg_train"
    slices = [png(img_dir / f"case_001_slice_{k}.nii.png") for k in range(3)]
    # Slices at z = 5, 14 (rint of 14.5) and 24: the intensity rises with z, the top slice is the brightest.
    means = [s[12:20, 12:20].mean() for s in slices]                            # the middle of the brain
    assert means[0] < means[1] < means[2]
    # Orientation: anterior up, the subject's left on the image's left: the marker sits top-left.
    s = slices[1]
    assert s.shape == (32, 32) and s[:16, :16].max() == 255 and s[16:, 16:].max() < 255
    masks = [png(seg_dir / f"seg_001_slice_{k}.nii.png") for k in range(3)]
    expected = [dataset.MASK_LEVELS[1 + z % 3] for z in (5, 14, 24)]
    for m, level in zip(masks, expected):
        assert set(np.unique(m).tolist()) == {0, level}
    info = json.loads((out / "dataset.json").read_text())
    assert info["label_names"] == ["slice_position"] and info["subjects"] == {"case_001": "sub01"}
    assert [lab for _, lab in info["labels"]] == [[0.0], [0.5], [1.0]]
    assert dataset.main(["check", "--data", str(out)]) == 0


def test_a_flipped_affine_gives_the_same_slices(tmp_path):
    data, labels = phantom()
    save(tmp_path / "a", "s.nii", data)
    flip = np.diag([-1.0, 1, -1, 1])                           # x and z stored reversed (LPI-like order)
    flip[0, 3], flip[2, 3] = SHAPE[0] - 1, SHAPE[2] - 1
    save(tmp_path / "b", "s.nii", data[::-1, :, ::-1].copy(), flip)
    for name in "ab":
        volumes.make_slices(tmp_path / name, tmp_path / f"out_{name}", count=4, resolution=32, shares=(1, 0, 0),
                            log=lambda m: None)
    for k in range(4):
        rel = f"keras_png_slices_train/case_001_slice_{k}.nii.png"
        assert np.array_equal(png(tmp_path / "out_a" / rel), png(tmp_path / "out_b" / rel))


def test_label_map_and_its_errors(tmp_path, capsys):
    data, labels = phantom()
    save(tmp_path / "vols", "s.nii.gz", data)
    save(tmp_path / "segs", "s_fseg.nii.gz", (labels * 10).astype(np.int16))          # values 0, 10, 20, 30
    code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--segs", str(tmp_path / "segs"),
                         "--outdir", str(tmp_path / "o1"), "--slices", "2", "--resolution", "16"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "s_fseg.nii.gz: label value(s) 10, 20, 30 are not in" in err
    code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--segs", str(tmp_path / "segs"),
                         "--outdir", str(tmp_path / "o2"), "--slices", "2", "--resolution", "16",
                         "--label-map", "0:0,10:3,20:2,30:1", "--shares", "1,0,0"])
    assert code == 0
    mask = png(tmp_path / "o2" / "keras_png_slices_seg_train" / "seg_001_slice_0.nii.png")
    assert set(np.unique(mask).tolist()) <= {0, 85, 170, 255} and len(np.unique(mask)) == 2


def test_bad_volumes_are_one_line_and_skip_bad_goes_on(tmp_path, capsys):
    data, _ = phantom()
    vols = tmp_path / "vols"
    save(vols, "good.nii.gz", data)
    save(vols, "empty.nii.gz", np.zeros(SHAPE, np.float32))
    save(vols, "flat.nii.gz", data[:, :, 10].copy()[:, :, None, None].repeat(2, axis=3))   # 4D, 2 frames
    (vols / "broken.nii").write_bytes(b"not a volume")
    args = ["slices", "--volumes", str(vols), "--outdir", str(tmp_path / "o"), "--slices", "2", "--resolution", "16"]
    assert dataset.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.nii: unreadable volume" in err and "--skip_bad" in err
    assert dataset.main(args + ["--skip_bad", "--shares", "1,0,0"]) == 0
    err = capsys.readouterr().err
    for text in ("broken.nii: unreadable volume", "empty.nii.gz: the brain is empty", "flat.nii.gz: not a 3D volume"):
        assert f"warning: skipped: {tmp_path / 'vols'}/{text}" in err, err
    assert len(list((tmp_path / "o" / "keras_png_slices_train").iterdir())) == 2
    assert dataset.main(args) == 1 and "exists and is not empty" in capsys.readouterr().err


def test_covariates_split_by_subject_and_usage_errors(tmp_path, capsys):
    data, _ = phantom()
    for i in range(5):
        save(tmp_path / "vols", f"OAS1_000{i}_MR1.nii.gz", data)
    (tmp_path / "cov.csv").write_text("subject,age,cdr\nOAS1_0000_MR1,70,0\nOAS1_0001_MR1,81,0.5\nOAS1_0002_MR1,65,0\n"
                                      "OAS1_0003_MR1,90,1\nOAS1_0004_MR1,77,0.5\n")           # exact names
    out = volumes.make_slices(tmp_path / "vols", tmp_path / "out", count=2, resolution=16, shares=(0.6, 0.2, 0.2),
                              csv_path=tmp_path / "cov.csv", log=lambda m: None)
    info = json.loads((out / "dataset.json").read_text())
    assert info["label_names"] == ["slice_position", "age", "cdr"]
    by_case = {path.split("/")[1][:8]: (path.split("/")[0], lab) for path, lab in info["labels"]}
    assert sorted(s for s, _ in by_case.values()).count("keras_png_slices_train") == 3       # 5 subjects: 3/1/1
    assert by_case["case_002"][1][1:] == [81.0, 0.5]                                         # OAS1_0001
    (tmp_path / "bad.csv").write_text("subject,age\nOAS1_0009,70\n")
    with pytest.raises(volumes.VolumeError, match=r"bad.csv: line 2 names 'OAS1_0009', which matches no volume"):
        volumes.make_slices(tmp_path / "vols", tmp_path / "out2", csv_path=tmp_path / "bad.csv", log=lambda m: None)
    for extra, message in ((["--range", "0.9,0.1"], "--range must be lo,hi"),
                           (["--shares", "0.5,0.5"], "--shares must be three shares"),
                           (["--split", "0.5,0.5"], "--shares must be three shares"),       # the older spelling
                           (["--resolution", "30"], "--resolution must be a power of two >= 8")):
        code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--outdir", str(tmp_path / "o3"), *extra])
        assert code == 2 and message in capsys.readouterr().err


def test_analyze_volumes_read_like_nifti(tmp_path):
    data, _ = phantom()
    save(tmp_path / "nii", "s.nii.gz", data)
    (tmp_path / "analyze").mkdir()
    # Analyze stores no orientation; nibabel reads it as LAS (radiological, like the OASIS-1 release), so the
    # same anatomy is the array with x reversed.
    nibabel.save(nibabel.AnalyzeImage(data[::-1].copy(), np.eye(4)), str(tmp_path / "analyze" / "s.hdr"))
    for name in ("nii", "analyze"):
        volumes.make_slices(tmp_path / name, tmp_path / f"out_{name}", count=2, resolution=16, shares=(1, 0, 0),
                            log=lambda m: None)
    rel = "keras_png_slices_train/case_001_slice_1.nii.png"
    assert np.array_equal(png(tmp_path / "out_nii" / rel), png(tmp_path / "out_analyze" / rel))


def test_the_command_line_program_gives_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "dataset.py", "slices", "--volumes", str(tmp_path / "nope"), "--outdir",
                             str(tmp_path / "out")], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "--volumes" in result.stderr and "no such folder" in result.stderr


def test_a_volume_error_is_a_data_error(tmp_path, capsys):
    assert issubclass(volumes.VolumeError, dataset.DataError) and dataset.DataError is oasis.DataError
    with pytest.raises(dataset.DataError, match="no such folder") as info:
        volumes.find_volumes(tmp_path / "nope")
    assert type(info.value) is volumes.VolumeError                      # still caught as itself, not re-wrapped
    data, _ = phantom()
    save(tmp_path / "vols", "s.nii.gz", data)
    for option, share_option in (("--outdir", "--shares"), ("--out", "--split")):   # new and older spellings
        out = tmp_path / f"o{option}"
        args = ["slices", "--volumes", str(tmp_path / "vols"), option, str(out), "--slices", "2", "--resolution",
                "16", share_option, "1,0,0"]
        assert dataset.main(args) == 0 and len(list((out / "keras_png_slices_train").iterdir())) == 2
        assert dataset.main(args) == 1
        assert f"--outdir {out}: exists and is not empty" in capsys.readouterr().err
