"""Faults in the data, round 2: mask values (levels, class indices, anything else), --csv subjects, --label_map
values, volumes that declare too many voxels, and the temporaries a killed process leaves (slicer, demo, cache).
Every failure is one line and exit 1 (2 for an option), and nothing already built is lost."""

import gzip
import tracemalloc

import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import decode
import demo
import segment
import volumes
from oasis import MASK_LEVELS, DataError

DEAD_PID = 999_999_999                  # above any kernel's pid_max: never a running process
LIVE_PID = 1                            # init: always running
SHAPE = (16, 16, 20)                    # X, Y, Z of the volumes made here


def run_cli(capsys, *args):
    code = dataset.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *args, code: int = 1) -> str:
    """Run dataset.py with args; assert it fails with `code` and one stderr line (after the progress bar, which
    erases itself with carriage returns); return that line."""
    got, _, err = run_cli(capsys, *args)
    line = err.rpartition("\r")[2]
    assert got == code and err.count("\n") == 1 and line.startswith("error: "), err
    return line


# ----------------------------------------------------------------------------------------------
# Mask values

def mask_layout(tmp_path, make_oasis, name: str, write) -> "Path":
    """make_oasis's layout (2 slices of 2 train subjects, 16 px) with every mask rewritten by write(labels, path),
    labels being the classes 0..3 of the original level mask."""
    root = make_oasis(tmp_path / name, subjects=(2, 1, 1), slices=2, size=16)
    for f in root.glob("keras_png_slices_seg_*/*.png"):
        labels = np.searchsorted(MASK_LEVELS, np.asarray(Image.open(f))).astype(np.uint8)
        write(labels, f)
    return root


def levels_8bit(labels, path):
    Image.fromarray(np.asarray(MASK_LEVELS, np.uint8)[labels]).save(path)


def classes_8bit(labels, path):
    Image.fromarray(labels).save(path)


def levels_16bit(labels, path):
    Image.fromarray(np.asarray(MASK_LEVELS, np.uint16)[labels] * 257).save(path)       # 0..65535 stretch


def classes_16bit(labels, path):
    Image.fromarray(labels.astype(np.uint16)).save(path)


def classes_in_a_colour_palette(labels, path):
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0, 0, 0, 255, 0, 255, 0, 255, 128, 0] + [0] * 756)            # index k = class k
    im.save(path)


@pytest.mark.parametrize("write, words", [(levels_8bit, "OASIS levels 0/85/170/255"),
                                          (classes_8bit, "class indices 0..3"),
                                          (levels_16bit, "OASIS levels 0/85/170/255"),
                                          (classes_16bit, "class indices 0..3"),
                                          (classes_in_a_colour_palette, "class indices 0..3")])
def test_level_and_class_index_masks_read_as_the_same_classes(tmp_path, make_oasis, capsys, write, words):
    reference = make_oasis(tmp_path / "reference", subjects=(2, 1, 1), slices=2, size=16)
    root = mask_layout(tmp_path, make_oasis, "data", write)
    want = dataset.ImageDataset(reference, resolution=16, with_masks=True, log=lambda m: None).masks
    got = dataset.ImageDataset(root, resolution=16, with_masks=True, log=lambda m: None).masks
    assert set(np.unique(want).tolist()) == {0, 1, 2, 3} and np.array_equal(got, want)
    _, labels = segment.load_pairs(root, "train", 16, "--real")[:2]               # segment.py reads the same
    assert torch.equal(labels, torch.from_numpy(want))
    code, out, _ = run_cli(capsys, "check", "--data", root)
    assert code == 0 and f"masks stored as {words} x4" in out                      # 4 train masks


def test_a_mask_of_other_values_is_one_line_never_rounded(tmp_path, make_oasis, capsys):
    root = mask_layout(tmp_path, make_oasis, "data", levels_8bit)
    bad = root / "keras_png_slices_seg_train" / "seg_002_slice_1.nii.png"
    values = np.zeros((16, 16), np.uint8)
    values[:8] = 84                                                                  # next to 85: once rounded to CSF
    values[8:, :8] = 170
    Image.fromarray(values).save(bad)
    err = one_line_error(capsys, "check", "--data", root)
    assert f"{bad}: mask values 0, 84, 170 are neither the OASIS levels 0/85/170/255 nor class indices 0..3" in err
    code, out, _ = run_cli(capsys, "check", "--data", root, "--skip_bad")
    assert code == 0 and "1 UNUSABLE MASK(S)" in out and "bad mask: seg_002_slice_1.nii.png" in out
    with pytest.raises(DataError, match=r"case_002_slice_1.nii.png .*mask values 0, 84, 170 are neither") as info:
        dataset.ImageDataset(root, resolution=16, with_masks=True, log=lambda m: None)
    assert "\n" not in str(info.value)
    kept = dataset.ImageDataset(root, resolution=16, with_masks=True, skip_bad=True, log=lambda m: None)
    assert len(kept.files) == 3 and "case_002_slice_1.nii.png" not in kept.files
    with pytest.raises(DataError, match="mask values 0, 84, 170"):
        segment.load_pairs(root, "train", 16, "--real")
    mixed = np.arange(16 * 16).reshape(16, 16) % 5                                     # 0..4: 4 is no class
    Image.fromarray(mixed.astype(np.uint8)).save(bad)
    with pytest.raises(DataError, match=r"mask values 0, 1, 2, 3, 4 are neither"):
        decode.decode_mask(bad, 16)


def test_the_slicer_masks_read_back_as_the_label_map_classes(tmp_path):
    brain, seg = phantom()
    save(tmp_path / "vols", "s.nii.gz", brain)
    save(tmp_path / "segs", "s_seg.nii.gz", seg)
    out = volumes.make_slices(tmp_path / "vols", tmp_path / "out", tmp_path / "segs", count=2, lo=0, hi=1,
                              resolution=16, shares=(1, 0, 0), label_map={0: 0, 7: 2, 9: 3}, log=lambda m: None)
    masks = dataset.ImageDataset(out, resolution=16, with_masks=True, log=lambda m: None).masks
    assert set(np.unique(masks[0]).tolist()) == {0, 2} and set(np.unique(masks[1]).tolist()) == {0, 3}
    assert torch.equal(segment.load_pairs(out, "train", 16, "--real")[1], torch.from_numpy(masks))


# ----------------------------------------------------------------------------------------------
# Volumes made here

def phantom():
    """A box brain, and its label map: 7 in the lower half of the brain, 9 in the upper half."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    inside = (x >= 2) & (x < 14) & (y >= 2) & (y < 14) & (z >= 2) & (z < 18)
    brain = np.where(inside, 100.0 + 5 * z, 0.0).astype(np.float32)
    seg = np.where(inside, np.where(z < 10, 7, 9), 0).astype(np.int32)
    return brain, seg


def save(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(folder / name))
    return folder / name


def covariates(out) -> dict:
    """{subject name: its covariates} from a slicer output's dataset.json."""
    import json
    info = json.loads((out / "dataset.json").read_text())
    by_case = {path.split("/")[1][:8]: labels[1:] for path, labels in info["labels"]}
    return {name: by_case[case] for case, name in info["subjects"].items()}


# ----------------------------------------------------------------------------------------------
# --csv subjects

def test_csv_subjects_match_by_exact_name_never_by_prefix(tmp_path):
    brain, _ = phantom()
    for name in ("sub-1", "sub-10", "sub-100"):
        save(tmp_path / "vols", f"{name}.nii.gz", brain)
    (tmp_path / "cov.csv").write_text("subject,age\nsub-10,10\nsub-1,1\nsub-100,100\n")
    out = volumes.make_slices(tmp_path / "vols", tmp_path / "out", count=1, resolution=16, shares=(1, 0, 0),
                              csv_path=tmp_path / "cov.csv", log=lambda m: None)
    assert covariates(out) == {"sub-1": [1.0], "sub-10": [10.0], "sub-100": [100.0]}
    # The OASIS-1 release: the CSV names the subject's folder, the volume file has a longer name.
    for subject in ("OAS1_0001_MR1", "OAS1_0011_MR1"):
        save(tmp_path / "oasis" / subject / "PROCESSED", f"{subject}_mpr_n4_anon_111_t88_masked_gfc.nii.gz", brain)
    (tmp_path / "oasis.csv").write_text("\ufeffID,age\nOAS1_0011_MR1,81\nOAS1_0001_MR1,70\n")   # with a BOM
    out = volumes.make_slices(tmp_path / "oasis", tmp_path / "out2", count=1, resolution=16, shares=(1, 0, 0),
                              csv_path=tmp_path / "oasis.csv", log=lambda m: None)
    assert covariates(out) == {"OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc": [70.0],
                               "OAS1_0011_MR1_mpr_n4_anon_111_t88_masked_gfc": [81.0]}
    (tmp_path / "short.csv").write_text("subject,age\nOAS1_0001,70\nOAS1_0011,81\n")       # a prefix is no name
    with pytest.raises(volumes.VolumeError, match="line 2 names 'OAS1_0001', which matches no volume"):
        volumes.make_slices(tmp_path / "oasis", tmp_path / "out3", csv_path=tmp_path / "short.csv", log=lambda m: None)


@pytest.mark.parametrize("text, message", [
    (b"subject,age\nsub-1,1\nsub-2,2\nsub-1,3\n", "lines 2 and 4 both name 'sub-1'; give each subject one row"),
    (b"subject,age\nsub-1,1\n", "sub-2.nii.gz: no row in --csv"),
    (b"subject,age\nsub-1,1\nsub-2,nan\n", "line 3 ('sub-2') holds 'nan' for 'age'; covariates must be finite"),
    (b"subject,age\nsub-1,inf\nsub-2,2\n", "line 2 ('sub-1') holds 'inf' for 'age'; covariates must be finite"),
    (b"subject,age\nsub-1,1e999\nsub-2,2\n", "holds '1e999' for 'age'; covariates must be finite"),
    (b"subject,age\nsub-1,\nsub-2,2\n", "line 2 ('sub-1') holds '' for 'age'"),
    (b"subject,age\nsub-1,1\nsub-2,2\ngroup,3\n", "lines 2 and 4 both match sub-1.nii.gz; give each volume one row"),
    ("subject,\u00e2ge\nsub-1,1\nsub-2,2\n".encode("latin-1"), "is not UTF-8 text (byte 0xe2); save it as a UTF-8"),
])
def test_csv_faults_are_one_line(tmp_path, capsys, text, message):
    brain, _ = phantom()
    save(tmp_path / "vols" / "group", "sub-1.nii.gz", brain)
    save(tmp_path / "vols", "sub-2.nii.gz", brain)
    (tmp_path / "cov.csv").write_bytes(text)
    args = ["slices", "--volumes", tmp_path / "vols", "--outdir", tmp_path / "out", "--slices", "1", "--resolution",
            "16", "--csv", tmp_path / "cov.csv"]
    assert message in one_line_error(capsys, *args)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


# ----------------------------------------------------------------------------------------------
# --label_map values

def slice_with_labels(tmp_path, capsys, seg, label_map: str) -> np.ndarray:
    """The mask of the one slice (z = 10, mid brain) that the slicer cuts from the phantom with this label map."""
    brain, _ = phantom()
    save(tmp_path / "vols", "s.nii.gz", brain)
    save(tmp_path / "segs", "s_seg.nii.gz", seg)
    code, _, err = run_cli(capsys, "slices", "--volumes", tmp_path / "vols", "--segs", tmp_path / "segs", "--outdir",
                           tmp_path / "out", "--slices", "1", "--range", "0.5,0.5", "--resolution", "16",
                           "--shares", "1,0,0", f"--label_map={label_map}")
    assert code == 0, err
    return np.asarray(Image.open(tmp_path / "out" / "keras_png_slices_seg_train" / "seg_001_slice_0.nii.png"))


def test_negative_labels_are_labels_never_wrapped(tmp_path, capsys):
    brain, seg = phantom()
    seg = np.where(seg == 9, -1, seg)                                        # mid-brain slice: -1 and 0
    mask = slice_with_labels(tmp_path, capsys, seg, "-1:1,0:0,7:2,9:3")      # -1 is CSF; 9 (WM) is the last label
    assert set(np.unique(mask).tolist()) == {0, MASK_LEVELS[1]}              # a wrapped -1 would read as WM (255)


def test_a_large_label_allocates_no_lookup_table(tmp_path, capsys):
    brain, seg = phantom()
    seg = np.where(seg == 9, 16_000_000, seg)                                 # a lookup table: 16 MB
    tracemalloc.start()
    try:
        mask = slice_with_labels(tmp_path, capsys, seg, "0:0,7:2,16000000:3")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert set(np.unique(mask).tolist()) == {0, MASK_LEVELS[3]} and peak < 8e6, peak


@pytest.mark.parametrize("label_map, message", [
    ("0:0,99999999999:3", "label value 99999999999 is beyond +-16777216"),
    ("0:0,-99999999999:3", "label value -99999999999 is beyond +-16777216"),
    ("0:0,1:1,1:2", "label value 1 is given twice"),
])
def test_label_values_a_label_map_cannot_hold_are_refused_in_one_line(tmp_path, capsys, label_map, message):
    brain, seg = phantom()
    save(tmp_path / "vols", "s.nii.gz", brain)
    err = one_line_error(capsys, "slices", "--volumes", tmp_path / "vols", "--outdir", tmp_path / "out",
                         f"--label_map={label_map}", code=2)
    assert message in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Declared volume sizes

def declared_only(path, shape):
    """A .nii.gz whose header declares `shape` (uint8) but which holds 1 MB of voxels only: reading them fails."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\1" * 1_000_000)
    return path


def test_a_volume_declaring_too_many_voxels_is_refused_before_it_is_read(tmp_path, capsys):
    brain, _ = phantom()
    save(tmp_path / "vols", "good.nii.gz", brain)
    big = declared_only(tmp_path / "vols" / "big.nii.gz", (700, 700, 700))
    assert nibabel.load(str(big)).shape == (700, 700, 700)
    args = ["slices", "--volumes", tmp_path / "vols", "--outdir", tmp_path / "out", "--slices", "1", "--resolution",
            "16", "--shares", "1,0,0"]
    tracemalloc.start()
    try:
        err = one_line_error(capsys, *args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (f"{big}: the volume declares 700 x 700 x 700 voxels, more than the slicer's limit of "
            f"{volumes.MAX_VOXELS:,}") in err
    assert peak < 50e6, peak                                                   # 700^3 float32 would be 1.4 GB
    code, _, err = run_cli(capsys, *args, "--skip_bad")
    assert code == 0 and "warning: skipped:" in err and "700 x 700 x 700" in err
    assert len(list((tmp_path / "out" / "keras_png_slices_train").iterdir())) == 1
    assert volumes.MAX_VOXELS >= 320 * 320 * 320                              # a 0.8 mm whole head still fits


# ----------------------------------------------------------------------------------------------
# Temporaries of a killed process

def leftovers(folder, name: str) -> dict:
    """Build folders .<name>.partial-<pid> as a killed (DEAD_PID), a running (LIVE_PID) and a foreign process
    would leave them, each holding a file; returns them by kind."""
    made = {}
    for kind, suffix in (("dead", DEAD_PID), ("live", LIVE_PID), ("foreign", "notapid")):
        p = folder / f".{name}.partial-{suffix}"
        (p / "keras_png_slices_train").mkdir(parents=True)
        (p / "keras_png_slices_train" / "case_001_slice_0.nii.png").write_bytes(b"half")
        made[kind] = p
    return made


def test_the_slicer_removes_the_build_folder_of_a_killed_run(tmp_path):
    brain, _ = phantom()
    save(tmp_path / "vols", "s.nii.gz", brain)
    made = leftovers(tmp_path, "out")
    other = leftovers(tmp_path, "other")["dead"]                              # another place: not this command's
    notes = []
    out = volumes.make_slices(tmp_path / "vols", tmp_path / "out", count=1, resolution=16, shares=(1, 0, 0),
                              log=notes.append)
    assert not made["dead"].exists() and made["live"].is_dir() and made["foreign"].is_dir() and other.is_dir()
    assert any(f"removed {made['dead']}" in n for n in notes)
    assert sorted(p.name for p in (out / "keras_png_slices_train").iterdir()) == ["case_001_slice_0.nii.png"]


def test_the_demo_removes_the_build_folder_of_a_killed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_load_mni152", lambda: torch.full((1, 4, 24, 24, 24), 0.6))   # a tiny template
    monkeypatch.setattr(demo, "DEMO_BOX", (16, 16, 16))                                     # and box, in mm
    made = leftovers(tmp_path, "demo")
    out = demo.build_demo(tmp_path / "demo", subjects=(1, 1, 1), slices=1, resolution=16, log=lambda m: None)
    assert not made["dead"].exists() and made["live"].is_dir() and made["foreign"].is_dir()
    assert (out / demo.DEMO_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["demo", made["live"].name, made["foreign"].name])


def test_the_cache_removes_temporaries_of_a_killed_run(tmp_path, make_oasis, slice_pixels):
    root = make_oasis(tmp_path / "data", subjects=(2, 1, 1), slices=2, size=16)
    dataset.ImageDataset(root, resolution=16, log=lambda m: None)             # builds the cache
    cache = root / ".cache"
    dead = cache / f".train-x-r16-c1-crop.npy.tmp-{DEAD_PID}"
    live = cache / f".train-x-r16-c1-crop.npy.tmp-{LIVE_PID}"
    for p in (dead, live):
        p.write_bytes(b"half a cache")
    data = dataset.ImageDataset(root, resolution=16, log=lambda m: None)       # from the cache, as before
    assert data.info["from_cache"] and np.array_equal(data.images[0, 0], slice_pixels(1, 0, 16))
    assert not dead.exists() and live.exists()
