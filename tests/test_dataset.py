"""Data loading, validation, the cache, the sampler (dataset.py, decode.py, cache.py), the demo builder (demo.py)
and `python dataset.py`, on tiny PNG fixtures."""

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cache
import dataset
import decode
import demo
import runs
import volumes
from dataset import DataError, ImageDataset, InfiniteSampler


@pytest.fixture
def oasis(tmp_path, make_oasis) -> Path:
    return make_oasis(tmp_path / "oasis")


def load(data, **kw) -> ImageDataset:
    kw.setdefault("resolution", 32)
    kw.setdefault("log", lambda msg: None)
    return ImageDataset(data, **kw)


# ----------------------------------------------------------------------------------------------
# Loading

def test_oasis_splits_load_with_exact_pixels(oasis, slice_pixels):
    train = load(oasis, split="train")
    assert len(train) == 4 and train.images.shape == (4, 1, 32, 32) and train.images.dtype == np.uint8
    assert train.files[0] == "case_001_slice_0.nii.png"
    np.testing.assert_array_equal(train.images[0, 0], slice_pixels(1, 0, 32))
    x = train.batch([0, 1])
    assert x.dtype == torch.float32 and x.shape == (2, 1, 32, 32)
    expected = torch.from_numpy(slice_pixels(1, 0, 32)).float() / 127.5 - 1
    torch.testing.assert_close(x[0, 0], expected)
    assert x.min() >= -1 and x.max() <= 1
    assert len(load(oasis, split="validate")) == 2 and len(load(oasis, split="test")) == 2


def test_plain_folder_is_searched_recursively(tmp_path):
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".cache").mkdir()
    for i, (sub, ext) in enumerate([("", "png"), ("a", "jpg"), ("a/b", "bmp"), ("a/b", "tif")]):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / sub / f"img{i}.{ext}")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / ".cache" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    ds = load(root, resolution=16)
    assert sorted(Path(f).name for f in ds.files) == ["img0.png", "img1.jpg", "img2.bmp", "img3.tif"]


def test_16_bit_png_maps_full_range(tmp_path):
    root = tmp_path / "d16"
    root.mkdir()
    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(values * 257).save(root / "x.png")       # 16-bit: 0..65535
    assert Image.open(root / "x.png").mode.startswith("I")
    ds = load(root, resolution=16)
    np.testing.assert_array_equal(ds.images[0, 0], values.astype(np.uint8))


def test_rgb_is_converted_to_luminance_and_the_user_told_once(tmp_path):
    root = tmp_path / "rgb"
    root.mkdir()
    for i in range(3):
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[..., i] = 200
        Image.fromarray(rgb).save(root / f"c{i}.png")
    notes = []
    ds = load(root, resolution=16, log=notes.append)
    assert len(notes) == 1 and "3 colour image(s) converted to grayscale" in notes[0]
    expected = [round(200 * w) for w in (0.299, 0.587, 0.114)]  # ITU-R 601 luminance
    assert [int(ds.images[i, 0, 0, 0]) for i in range(3)] == pytest.approx(expected, abs=1)
    assert load(root, resolution=16, img_channels=3, cache_dir=root / ".c3").images.shape == (3, 3, 16, 16)


def test_non_square_crop_and_pad(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    a = np.zeros((16, 32), np.uint8)
    a[:, :8] = 255                                            # a bright band at the far left
    a[:, 8:24] = 100                                          # the centre square
    Image.fromarray(a).save(root / "w.png")
    cropped = load(root, resolution=16).images[0, 0]
    assert (cropped == 100).all()                             # centre crop drops the band
    padded = load(root, resolution=16, fit="pad", cache_dir=root / ".pad").images[0, 0]
    assert padded[0].max() == 0 and padded[-1].max() == 0     # zero rows above and below
    assert padded[:3].mean() < 5 and padded[-3:].mean() < 5 and padded[5:11, :11].min() > 50
    assert padded[8, :3].mean() > 200                         # the band is kept, shrunk


def test_resize_uses_a_low_pass_filter(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker).save(root / "c.png")
    small = load(root, resolution=16).images[0, 0].astype(float)
    # A pixel-level checkerboard is above the new Nyquist limit: a proper filter averages it to grey
    # (plain subsampling would return pure black or white).
    assert abs(small[4:-4, 4:-4].mean() - 127.5) < 10 and small[4:-4, 4:-4].std() < 10


def test_masks_pair_with_their_slices_and_mirror_flips_both(oasis):
    ds = load(oasis, with_masks=True, mirror=True)
    assert ds.masks.shape == (4, 32, 32) and set(np.unique(ds.masks)) == {0, 1, 2, 3}
    expected = (np.arange(32 * 32).reshape(32, 32) + 1 + 0) % 4          # case 1, slice 0
    np.testing.assert_array_equal(ds.masks[0], expected)
    assert len(ds) == 8
    images, masks = ds.get([0, 4])
    torch.testing.assert_close(images[1], images[0].flip(-1))
    torch.testing.assert_close(masks[1], masks[0].flip(-1))
    with pytest.raises(IndexError):
        ds.get([8])


# ----------------------------------------------------------------------------------------------
# Clear errors

def _expect(match, data, **kw):
    with pytest.raises(DataError, match=match):
        load(data, **kw)


def test_missing_and_empty_inputs(tmp_path):
    _expect(r"--data .*nope: no such file or folder", tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    _expect(r"is a file, not a folder", tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    _expect(r"empty: is empty; point --data at a folder of images", tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hi")
    _expect(r"has no png/jpg/jpeg/bmp/tif/tiff images \(found: a.txt\)", tmp_path / "txt")


def test_oasis_split_errors(oasis):
    _expect(r"unknown split 'training'", oasis, split="training")
    import shutil
    shutil.rmtree(oasis / "keras_png_slices_test")
    _expect(r"has no keras_png_slices_test folder \(found splits: train, validate\)", oasis, split="test")


def test_bad_resolution_and_options(oasis):
    _expect(r"--resolution must be a power of two >= 8.*got 100", oasis, resolution=100)
    _expect(r"img_channels must be 1 \(grayscale\) or 3", oasis, img_channels=2)
    _expect(r"fit must be one of crop, pad", oasis, fit="stretch")


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "corrupt or truncated"), ("garbage", "not an image file"), ("text", "not an image file"),
    ("zero_bytes", "empty file"),
])
def test_a_bad_file_stops_the_run_with_its_name(oasis, kind, reason):
    bad = oasis / "keras_png_slices_train" / "case_002_slice_1.nii.png"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(300),
                     "text": b"this is not a png\n", "zero_bytes": b""}[kind])
    with pytest.raises(DataError) as info:
        load(oasis)
    message = str(info.value)
    assert "\n" not in message
    assert "1 unreadable image file(s)" in message and "case_002_slice_1.nii.png" in message
    assert reason in message and "--skip_bad" in message
    notes = []
    ds = load(oasis, skip_bad=True, log=notes.append)           # the option trains without it
    assert len(ds) == 3 and "case_002_slice_1.nii.png" not in ds.files
    assert any("skipping 1 unreadable" in n for n in notes)
    with pytest.raises(DataError, match="1 unreadable"):        # the cache remembers the bad file
        load(oasis)
    notes = []
    assert load(oasis, skip_bad=True, log=notes.append).info["from_cache"]
    assert any("skipping 1 unreadable" in n for n in notes)     # and the warning comes every run


@pytest.mark.parametrize("kind,reason", [("broken", "a broken symbolic link"), ("loop", "a symbolic link loop")])
def test_a_bad_symlink_is_a_bad_file_not_a_traceback(oasis, kind, reason):
    folder = oasis / "keras_png_slices_train"
    link = folder / "case_009_slice_0.nii.png"
    if kind == "broken":
        link.symlink_to(folder / "gone.png")
    else:
        link.symlink_to(folder / "case_009_slice_1.nii.png")
        (folder / "case_009_slice_1.nii.png").symlink_to(link)
    bad = 1 if kind == "broken" else 2
    with pytest.raises(DataError) as info:
        load(oasis)
    message = str(info.value)
    assert "\n" not in message and f"{bad} unreadable image file(s)" in message
    assert "case_009_slice_0.nii.png" in message and reason in message and "--skip_bad" in message
    notes = []
    ds = load(oasis, skip_bad=True, log=notes.append)
    assert len(ds) == 4 and any(f"skipping {bad} unreadable" in n for n in notes)
    lines, problems = dataset.check(oasis)                      # check names it too
    assert any(reason in line for line in lines) and problems


def test_an_image_too_large_to_decode_safely_is_named(tmp_path, monkeypatch):
    root = tmp_path / "huge"
    root.mkdir()
    Image.fromarray(np.zeros((32, 24), np.uint8)).save(root / "error.png")     # 768 px > 2 x limit: an error
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "warning.png")   # 144 px > limit: a warning
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"error.png: too large to decode safely \(24 x 32 pixels"):
        dataset.open_image(root / "error.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # the warning never escapes either
        with pytest.raises(DataError, match=r"warning.png: too large to decode safely \(12 x 12 pixels"):
            dataset.open_image(root / "warning.png")
    assert Image.MAX_IMAGE_PIXELS == 100                         # the limit is left as it was
    with pytest.raises(DataError, match=r"2 unreadable image file\(s\) .*error.png, warning.png .*too large"):
        load(root, resolution=8)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_float_image_with_nan_or_inf_is_a_bad_file(tmp_path, value):
    root = tmp_path / "float"
    root.mkdir()
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(a).save(root / "good.tif")
    a[3, 4] = value
    Image.fromarray(a).save(root / "bad.tif")
    assert Image.open(root / "bad.tif").mode == "F"
    with pytest.raises(DataError, match=r"1 unreadable .*bad.tif: holds NaN or inf pixels"):
        load(root, resolution=16)
    ds = load(root, resolution=16, skip_bad=True)
    assert ds.files == ["good.tif"] and ds.images.max() == 255


def test_many_bad_files_are_counted_and_the_first_named(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(8):
        (root / f"bad{i}.png").write_bytes(b"nope")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "good.png")
    with pytest.raises(DataError, match=r"8 unreadable image file\(s\) in .*: bad0.png, bad1.png, bad2.png, "
                                        r"bad3.png, bad4.png, \.\.\. \(3 more\)"):
        load(root, resolution=16)


def test_mask_folder_that_does_not_match_is_refused(oasis):
    (oasis / "keras_png_slices_seg_train" / "seg_001_slice_1.nii.png").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(oasis / "keras_png_slices_seg_train" / "seg_099_slice_0.nii.png")
    _expect(r"mask folder .*keras_png_slices_seg_train does not match image folder .*: 1 images have no mask "
            r"\(first: case_001_slice_1.nii.png\); 1 masks have no image \(first: seg_099_slice_0.nii.png\)",
            oasis, with_masks=True)
    assert len(load(oasis)) == 4                                  # images alone still load


# ----------------------------------------------------------------------------------------------
# The cache

def test_cache_is_reused_without_decoding(oasis, monkeypatch):
    first = load(oasis, with_masks=True)
    assert not first.info["from_cache"] and Path(first.info["cache"]).is_file()
    assert Path(first.info["cache"]).parent == oasis / ".cache"

    def no_decoding(*args, **kw):
        raise AssertionError("decoded although the cache is current")
    monkeypatch.setattr(decode, "decode_image", no_decoding)
    second = load(oasis, with_masks=True)
    assert second.info["from_cache"]
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.masks, first.masks)


def test_cache_is_rebuilt_when_the_source_changes(oasis):
    first = load(oasis)
    target = oasis / "keras_png_slices_train" / "case_001_slice_0.nii.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))   # a later modification time
    changed = load(oasis)
    assert not changed.info["from_cache"] and (changed.images[0] == 7).all()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(oasis / "keras_png_slices_train" / "case_009_slice_0.nii.png")
    grown = load(oasis)
    assert not grown.info["from_cache"] and len(grown) == len(first) + 1
    other_res = load(oasis, resolution=16)                     # settings are part of the key
    assert not other_res.info["from_cache"] and other_res.images.shape[-1] == 16
    assert load(oasis).info["from_cache"]                       # and the 32 px entry is still there


@pytest.mark.parametrize("damage", ["index", "array"])
def test_a_damaged_cache_is_rebuilt(oasis, damage):
    ds = load(oasis)
    target = Path(ds.info["cache"])
    if damage == "index":
        target.with_suffix(".json").write_text("{not json")
    else:
        target.write_bytes(target.read_bytes()[:100])           # a truncated .npy
    notes = []
    again = load(oasis, log=notes.append)
    assert not again.info["from_cache"]
    assert damage == "index" or any("damaged" in n for n in notes)
    np.testing.assert_array_equal(again.images, ds.images)


def test_a_replaced_file_with_the_old_size_and_mtime_is_noticed(oasis, monkeypatch):
    first = load(oasis)
    target = oasis / "keras_png_slices_train" / "case_001_slice_1.nii.png"
    st = target.stat()
    other = oasis / "keras_png_slices_train" / "case_002_slice_0.nii.png"
    target.write_bytes(other.read_bytes())                      # cp -p: same size here, then the mtime restored
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load(oasis)
    assert not again.info["from_cache"]
    np.testing.assert_array_equal(again.images[1], first.images[2])
    os.chmod(target, 0o600)                                     # only the ctime changes: the bytes are hashed,
    monkeypatch.setattr(decode, "decode_image", lambda *a, **k: pytest.fail("decoded an unchanged file"))
    assert load(oasis).info["from_cache"]                       # found equal, and the cache is kept
    monkeypatch.setattr(cache, "file_digest", lambda data: pytest.fail("hashed again"))
    assert load(oasis).info["from_cache"]                       # the new ctime was saved in the index


def test_flipped_bytes_in_the_cached_array_are_detected(oasis):
    ds = load(oasis, with_masks=True)
    for target in [Path(ds.info["cache"]), Path(ds.info["cache"].replace(".npy", "-masks.npy"))]:
        data = bytearray(target.read_bytes())
        data[-5:] = bytes(255 - b for b in data[-5:])           # same shape and header, other pixels
        target.write_bytes(bytes(data))
        notes = []
        again = load(oasis, with_masks=True, log=notes.append)
        assert not again.info["from_cache"]
        assert len(notes) == 1 and notes[0].startswith("warning: the cache") and "damaged" in notes[0]
        np.testing.assert_array_equal(again.images, ds.images)
        np.testing.assert_array_equal(again.masks, ds.masks)
        assert load(oasis, with_masks=True).info["from_cache"]


def test_cache_files_are_readable_by_everyone(oasis):
    umask = os.umask(0o077)
    try:
        ds = load(oasis, with_masks=True)
    finally:
        os.umask(umask)
    cache = Path(ds.info["cache"])
    assert cache.parent.stat().st_mode & 0o777 == 0o755
    for f in cache.parent.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert not [f for f in cache.parent.iterdir() if ".tmp" in f.name]


def _refuse_writes_under(folder: Path, reason: str, monkeypatch):
    """Make runs.atomic_write fail for files under folder, the way a read-only folder or a full disk does."""
    real = runs.atomic_write

    def atomic_write(path, write, mode=0o644):
        if Path(path).is_relative_to(folder):
            raise runs.write_error(Path(path), OSError(errno.ENOSPC if "full" in reason else errno.EACCES, reason))
        return real(path, write, mode)
    monkeypatch.setattr(runs, "atomic_write", atomic_write)


def test_a_read_only_folder_with_a_stale_cache_falls_back_to_the_user_cache(oasis, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load(oasis, resolution=16)                                  # .cache holds another resolution only
    _refuse_writes_under(oasis, "Permission denied", monkeypatch)
    os.chmod(oasis / ".cache", 0o555)                            # (root ignores modes: the patch stands in)
    try:
        notes = []
        ds = load(oasis, log=notes.append)
        assert Path(ds.info["cache"]).parent == cache.user_cache_dir() == tmp_path / "home/.cache/stylegan2-mri"
        assert len(notes) == 1 and "Permission denied" in notes[0]
        assert load(oasis).info["from_cache"]                    # and found there next time
    finally:
        os.chmod(oasis / ".cache", 0o755)


@pytest.mark.parametrize("where", ["atomic_write", "np.save"])
def test_a_full_disk_only_costs_the_cache(oasis, tmp_path, monkeypatch, where, slice_pixels):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if where == "atomic_write":
        _refuse_writes_under(Path("/"), "No space left on device (disk full)", monkeypatch)
    else:
        def full(*args, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(np, "save", full)
    notes = []
    ds = load(oasis, log=notes.append)
    np.testing.assert_array_equal(ds.images[0, 0], slice_pixels(1, 0, 32))
    assert ds.info["cache"] is None and not ds.info["from_cache"]
    assert len(notes) == 1 and notes[0].startswith("warning: cache not written: ") and "disk is full" in notes[0]
    assert not [f for f in (oasis / ".cache").iterdir() if ".tmp" in f.name]   # no partial files left


# ----------------------------------------------------------------------------------------------
# The sampler

def test_sampler_epochs_are_permutations_and_deterministic():
    s = InfiniteSampler(10, seed=3)
    stream = np.concatenate([s.next(4) for _ in range(5)])      # 20 indices = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not (stream[:10] == stream[10:]).all()               # a new order each epoch
    again = InfiniteSampler(10, seed=3)
    np.testing.assert_array_equal(np.concatenate([again.next(4) for _ in range(5)]), stream)


def test_sampler_resumes_exactly_from_its_state():
    s = InfiniteSampler(7, seed=1)
    s.next(5), s.next(5)
    state = s.state_dict()
    expected = [s.next(3) for _ in range(4)]
    resumed = InfiniteSampler(7, seed=1)
    assert state["size"] == 7 and resumed.load_state_dict(state) is None
    for e in expected:
        np.testing.assert_array_equal(resumed.next(3), e)


@pytest.mark.parametrize("new_size", [6, 12])
def test_sampler_resumes_on_a_changed_data_set_at_the_next_epoch(new_size):
    s = InfiniteSampler(10, seed=2)
    s.next(4), s.next(4)                                        # epoch 0, position 8: past the end of 6 images
    resumed = InfiniteSampler(new_size, seed=2)
    note = resumed.load_state_dict(s.state_dict())
    assert note == f"the training data changed (10 -> {new_size} images): the data order restarts at epoch 1"
    fresh = InfiniteSampler(new_size, seed=2)
    fresh.load_state_dict({"epoch": 1, "position": 0, "size": new_size})
    stream = resumed.next(new_size)
    np.testing.assert_array_equal(stream, fresh.next(new_size))
    assert sorted(stream) == list(range(new_size))              # a whole epoch of the new data set


def test_sampler_resumes_an_old_state_without_a_size():
    s = InfiniteSampler(10, seed=2)
    s.next(4)
    expected = s.next(4)
    ok = InfiniteSampler(10, seed=2)
    assert ok.load_state_dict({"epoch": 0, "position": 4}) is None     # in range: trusted, same order
    np.testing.assert_array_equal(ok.next(4), expected)
    shrunk = InfiniteSampler(6, seed=2)
    note = shrunk.load_state_dict({"epoch": 3, "position": 8})
    assert note == "the training data changed (now 6 images): the data order restarts at epoch 4"
    assert sorted(shrunk.next(6)) == list(range(6))


def test_sampler_ranks_split_the_same_stream():
    single = InfiniteSampler(12, seed=0)
    ranks = [InfiniteSampler(12, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = single.next(4)
        a, b = ranks[0].next(2), ranks[1].next(2)
        np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.sort(whole))
        assert not set(a) & set(b)


# ----------------------------------------------------------------------------------------------
# python dataset.py check

def run_cli(capsys, *args):
    """dataset.main in this process -> (exit code, stdout, stderr)."""
    code = dataset.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_a_usable_data_set(oasis, capsys):
    code, out, err = run_cli(capsys, "check", "--data", oasis, "--resolution", 16)
    assert code == 0, err
    assert "train: 4 images, 4 masks paired" in out
    assert "validate: 2 images, 2 masks paired" in out
    assert "sizes 32x32 x4; modes L (8-bit) x4" in out
    assert "4 images would be cropped/resized to 16x16" in out
    assert "OK: the data can be used for training" in out


def test_check_fails_with_one_line(oasis, capsys):
    (oasis / "keras_png_slices_validate" / "case_003_slice_0.nii.png").write_bytes(b"garbage")
    code, out, err = run_cli(capsys, "check", "--data", oasis)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: 1 unreadable image file(s)")
    assert "case_003_slice_0.nii.png" in err
    assert "validate: 2 images, 2 masks paired, 1 UNREADABLE" in out     # the report still comes
    assert "bad: case_003_slice_0.nii.png: " in out
    assert run_cli(capsys, "check", "--data", oasis, "--skip-bad")[0] == 0  # hyphenated alias
    (oasis / "keras_png_slices_seg_train" / "seg_001_slice_0.nii.png").unlink()
    code, out, err = run_cli(capsys, "check", "--data", oasis)
    assert code == 1 and "(and 1 more problem(s), see above)" in err
    assert "masks DO NOT MATCH" in out
    code, _, err = run_cli(capsys, "check", "--data", oasis, "--resolution", 96)
    assert code == 1 and "--resolution must be a power of two" in err
    code, _, err = run_cli(capsys, "check", "--data", oasis / "nothing")
    assert code == 1 and "no such file or folder" in err


@pytest.mark.parametrize("args,message", [
    (["check"], "the following arguments are required: --data"),
    (["check", "--data", "x", "--img-channels", "2"], "--img_channels: invalid choice: 2"),
    (["check", "--data", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["lint"], "invalid choice: 'lint'"),
    (["demo", "--subjects", "24,4"], "--subjects must be three positive integers like 24,4,4, got '24,4'"),
    (["demo", "--subjects", "a,b,c"], "--subjects must be three positive integers"),
    (["demo", "--subjects", "24,0,4"], "--subjects must be three positive integers"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "dataset.py", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "check" in result.stdout and "demo" in result.stdout


# ----------------------------------------------------------------------------------------------
# The demo data

@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return demo.build_demo(out, seed=5, subjects=(2, 1, 1), slices=4, resolution=64, log=lambda m: None)


def test_demo_has_the_oasis_layout_split_by_subject(small_demo):
    cases = {}
    for split in ("train", "validate", "test"):
        names = sorted(p.name for p in (small_demo / f"keras_png_slices_{split}").iterdir())
        cases[split] = {int(n[5:8]) for n in names}
        assert names == [f"case_{c:03d}_slice_{k}.nii.png" for c in sorted(cases[split]) for k in (0, 1, 2, 3)]
    assert [len(cases[s]) for s in ("train", "validate", "test")] == [2, 1, 1]
    assert set().union(*cases.values()) == {1, 2, 3, 4}                  # each subject in one split only
    labels = json.loads((small_demo / "dataset.json").read_text())        # cut by the volume slicer
    assert labels["label_names"] == ["slice_position"] and len(labels["labels"]) == 16
    ds = load(small_demo, resolution=64, with_masks=True)
    assert ds.images.shape == (8, 1, 64, 64)
    assert set(np.unique(ds.masks)) <= {0, 1, 2, 3} and {0, 2, 3} <= set(np.unique(ds.masks))
    brain = ds.masks > 0
    assert ds.images[:, 0][~brain].max() == 0                    # skull-stripped: black outside the brain
    assert ds.images[:, 0][brain].mean() > 60
    # Different subjects differ (deformation and intensity); same slice index is similar anatomy.
    a, b = ds.images[0, 0].astype(float), ds.images[4, 0].astype(float)
    assert np.abs(a - b).mean() > 2
    assert "NOT OASIS" in (small_demo / demo.DEMO_MARKER).read_text()


def test_demo_is_deterministic_and_never_overwrites(small_demo, tmp_path):
    again = demo.build_demo(tmp_path / "again", seed=5, subjects=(2, 1, 1), slices=4, resolution=64,
                               log=lambda m: None)
    def files(folder):                                               # not the decoded-image cache of other tests
        return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    written = files(small_demo)
    assert written == files(again)
    for name in written:
        if name.suffix != ".json":                                   # demo.json names its folder's settings only
            assert (again / name).read_bytes() == (small_demo / name).read_bytes(), name
    with pytest.raises(DataError, match="already exists and is not empty; choose another --outdir or delete it"):
        demo.build_demo(small_demo, log=lambda m: None)


def test_an_interrupted_demo_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)
    real = demo.demo_subject
    monkeypatch.setattr(demo, "demo_subject", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo(tmp_path / "demo", subjects=(2, 1, 1), slices=2, resolution=32, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_the_demo_build_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import nibabel

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(nibabel, "save", full)
    with pytest.raises(DataError, match=r"demo: the demo data could not be written \(No space left on device\); "
                                        r"free some space in .* or build it elsewhere") as caught:
        demo.build_demo(tmp_path / "demo", subjects=(2, 1, 1), slices=2, resolution=32, log=lambda m: None)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_ensure_demo_reuses_a_finished_demo(small_demo, monkeypatch):
    monkeypatch.setattr(demo, "build_demo", lambda *a, **k: pytest.fail("rebuilt an existing demo"))
    assert demo.ensure_demo(small_demo) == small_demo


@pytest.mark.slow
def test_demo_command_takes_outdir_and_its_older_spelling_out(tmp_path, capsys):
    tiny = ["--subjects", "1,1,1", "--slices", "1", "--resolution", "32"]
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "dataset.py", "demo", "--outdir", str(tmp_path / "a"), *tiny], cwd=repo,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"demo data written to {tmp_path / 'a'}" in result.stdout and (tmp_path / "a" / demo.DEMO_MARKER).is_file()
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path / "b", *tiny)
    assert code == 0, err
    assert f"demo data written to {tmp_path / 'b'}" in out and (tmp_path / "b" / demo.DEMO_MARKER).is_file()
    assert sorted(p.name for p in (tmp_path / "b" / "keras_png_slices_train").iterdir()) == \
        sorted(p.name for p in (tmp_path / "a" / "keras_png_slices_train").iterdir())
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "b", *tiny)               # never overwritten
    assert code == 1 and err.count("\n") == 1 and "choose another --outdir" in err
    for bad, message in ((["--resolution", "48"], "--resolution must be a power of two"),
                         (["--slices", "0"], "--slices must be >= 1")):
        code, _, err = run_cli(capsys, "demo", "--outdir", tmp_path / "c", *tiny, *bad)
        assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "c").exists()


def test_figure_is_written(small_demo, tmp_path, capsys):
    out = dataset.make_figure(small_demo, tmp_path / "fig.png", count=3)
    with Image.open(out) as im:
        assert im.width > 300 and im.height > 150
    out = tmp_path / "sub" / "cli.png"
    code, stdout, _ = run_cli(capsys, "figure", "--data", small_demo, "--out", out)
    assert code == 0 and "figure written to" in stdout and out.stat().st_mode & 0o777 == 0o644


def test_every_file_is_written_through_runs(small_demo, tmp_path, monkeypatch):
    for module in (dataset, decode, cache, demo, volumes):
        text = Path(module.__file__).read_text()
        assert "matplotlib.use" not in text and "_atomic_save" not in text and "assert " not in text, module
    written = []
    real = runs.atomic_write

    def atomic_write(path, write, mode=0o644):
        written.append(Path(path).name)
        return real(path, write, mode)
    monkeypatch.setattr(runs, "atomic_write", atomic_write)
    umask = os.umask(0o077)
    try:
        out = demo.build_demo(tmp_path / "demo", subjects=(1, 1, 1), slices=1, resolution=32, log=lambda m: None)
    finally:
        os.umask(umask)
    assert sorted(written) == sorted(p.name for p in out.rglob("*") if p.is_file())
    assert demo.DEMO_MARKER in written and out.stat().st_mode & 0o777 == 0o755
    load(out, with_masks=True)
    dataset.make_figure(out, tmp_path / "fig.png", count=1)
    assert {n for n in written if n.endswith((".npy", ".json")) and n != demo.DEMO_MARKER} and "fig.png" in written
