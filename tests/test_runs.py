"""Checkpoints and run folders (runs.py): atomic writes, one-line refusals, locks, temporaries, grids."""

import argparse
import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import runs


def ckpt(**extra) -> dict:
    state = {"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
             "config": {"resolution": 16}, "G": {"w": torch.ones(3)}, "D": {"w": torch.ones(2)},
             "G_ema": {"w": torch.ones(3)}}
    state.update(extra)
    return state


def test_save_is_atomic_and_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint(path, ckpt())

    def full_disk(obj, f, *args, **kw):
        Path(f).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(runs.RunError, match=r"checkpoint.pt: the disk is full \(No space left on device\); free "
                                            r"space there and run again \(the previous file, if any, is intact\)"):
        runs.save_checkpoint(path, ckpt(G={"w": torch.zeros(3)}))
    assert torch.equal(runs.load_checkpoint(path)["G"]["w"], torch.ones(3))   # the old one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]          # no temporary left behind


def test_written_files_are_world_readable_and_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    runs.write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert len(synced) == 2                                                   # the file and its folder


def test_nonfinite_weights_are_never_written_nor_loaded(tmp_path):
    with pytest.raises(runs.RunError, match=r"not written, the weights hold NaN or inf \(G.w\)"):
        runs.save_checkpoint(tmp_path / "c.pt", ckpt(G={"w": torch.tensor([1.0, float("nan")])}))
    assert not list(tmp_path.iterdir())
    torch.save(ckpt(D={"w": torch.tensor([float("inf")])}), tmp_path / "nan.pt")
    with pytest.raises(runs.RunError, match=r"nan.pt: the weights hold NaN or inf \(D.w\); use an earlier snapshot"):
        runs.load_checkpoint(tmp_path / "nan.pt")


@pytest.mark.parametrize("make,message", [
    (lambda p: torch.save(ckpt(obj=argparse.Namespace(a=1)), p),
     r"holds pickled Python objects \(argparse.Namespace\), which are refused"),
    (lambda p: pickle.dump({"obj": argparse.Namespace(a=1)}, open(p, "wb")),
     r"holds pickled Python objects \(argparse.Namespace\)"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     r"unreadable or truncated checkpoint \(not a torch file, or a damaged one\)"),
    (lambda p: p.write_bytes(b"PK\x03\x04 broken"), r"unreadable or truncated checkpoint"),
    (lambda p: torch.save({"weights": torch.ones(1)}, p), r"not a checkpoint of this project"),
    (lambda p: torch.save(ckpt(version=99), p), r"checkpoint version 99, this code reads versions 1 to 3"),
    (lambda p: torch.save({k: v for k, v in ckpt().items() if k != "G_ema"}, p),
     r"damaged checkpoint, the key 'G_ema' is missing"),
])
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, make, message, recwarn):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(runs.RunError, match=message) as e:
        runs.load_checkpoint(path)
    assert "\n" not in str(e.value)
    assert not [w for w in recwarn.list if "torch" in str(w.filename)]       # no torch warning printed first


def test_one_rule_from_run_folder_to_checkpoint(tmp_path):
    with pytest.raises(runs.RunError, match="no checkpoint.pt or snapshot"):
        runs.resolve_checkpoint(tmp_path)
    for name in ("snapshot-000004.pt", "snapshot-000012.pt", "snapshot-0000.500.pt"):
        (tmp_path / name).write_bytes(b"")
    assert runs.resolve_checkpoint(tmp_path).name == "snapshot-000012.pt"
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert runs.resolve_checkpoint(tmp_path).name == "checkpoint.pt"
    with pytest.raises(runs.RunError, match=r"--resume .*missing: no such file or folder"):
        runs.resolve_checkpoint(tmp_path / "missing", "--resume")


def test_run_folder_lock_excludes_a_second_process(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(runs.RunError, match=rf"in use by process {os.getpid()}, which is training in it"):
            runs.RunLock(tmp_path).acquire()
    with runs.RunLock(tmp_path):                                              # released: free again
        pass


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.tmp-999999999").write_bytes(b"x" * 10)      # a dead process's
    (tmp_path / f".keep.pt.tmp-{os.getppid()}").write_bytes(b"x")           # a live process's
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert runs.remove_stale_temporaries(tmp_path) == [".checkpoint.pt.tmp-999999999"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".keep.pt.tmp-{os.getppid()}", "checkpoint.pt"]


def test_unwritable_outdir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(runs.RunError, match=r"--outdir .*file/runs: not a writable folder"):
        runs.check_writable(tmp_path / "file" / "runs")
    with pytest.raises(runs.RunError, match=r"--outdir .*file: cannot create"):
        runs.new_run_dir(tmp_path / "file", "demo")


def test_grid_tiles_uint8_without_conversion(tmp_path):
    images = torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 1, 4, 4)
    grid = runs.tile(images, cols=3)
    assert grid.shape == (8, 12) and grid.dtype == np.uint8
    assert np.array_equal(grid[4:8, 0:4], images[3, 0].numpy()) and not grid[4:8, 8:12].any()
    runs.save_grid(images, tmp_path / "g.png", 3)
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
    with pytest.raises(TypeError):
        runs.tile(images.float(), 3)


def test_log_reader_keeps_the_replayed_ticks(tmp_path):
    log = tmp_path / "log.jsonl"
    runs.append_log(log, {"event": "start", "tick": 0})
    runs.append_log(log, {"tick": 1, "kimg": 1})
    runs.append_log(log, {"tick": 2, "kimg": 2})
    runs.append_log(log, {"tick": 2, "kimg": 2.5})
    with open(log, "a") as f:
        f.write('{"tick": 3, "kim')                                           # cut off by a crash
    assert [r["kimg"] for r in runs.read_log(log)] == [1, 2.5]


def test_device_rule_and_command_line_style():
    assert str(config.resolve_device("cpu")) == "cpu"
    for bad in ("tpu", "cpu:1", "cuda:x"):
        with pytest.raises(config.ConfigError, match="use auto, cpu, cuda or cuda:N"):
            config.parse_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(config.ConfigError, match="--device cuda:1: no CUDA GPU is visible"):
            config.resolve_device("cuda:1")
    assert config.normalize_argv(["--noise-mode=const", "--row-seeds", "0-3", "-h", "x-y"]) == \
        ["--noise_mode=const", "--row_seeds", "0-3", "-h", "x-y"]
    parser = config.Parser(prog="x.py")
    parser.add_argument("--max_real", type=int)
    assert parser.parse_args(["--max-real", "3"]).max_real == 3
    with pytest.raises(config.ConfigError, match=r"unrecognized arguments: --nope \(see python x.py --help\)"):
        parser.parse_args(["--nope"])
