"""Fault injection, round 2, on tiny CPU configs: the end of a run (deferred checkpoints are written, or the
run says why not), full disks as torch.save reports them (RuntimeError) and missing folders for every writer,
TensorBoard as an optional extra that never stops a run, a run folder whose checkpoint.pt is no file, and a
two-node launch simulated on one machine."""

import collections
import errno
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import cache
import losses
import monitor
import project
import runs
import train

REPO = Path(__file__).resolve().parents[1]
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"   # as on a full tmpfs
Usage = collections.namedtuple("Usage", "total used free")


def events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"event"' in line]


def nan_d_loss(monkeypatch, bad) -> None:
    """D's loss is NaN in the steps (batch_idx before the step) for which bad(step) is true."""
    real_step, real_loss = train.Trainer.step, losses.d_logistic_loss
    now = {}

    def step(self):
        now["step"] = self.batch_idx
        real_step(self)
    monkeypatch.setattr(train.Trainer, "step", step)
    monkeypatch.setattr(losses, "d_logistic_loss",
                        lambda r, f: (r + f) * float("nan") if bad(now["step"]) else real_loss(r, f))


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if runs.TMP_MARK in p.name]


# ----------------------------------------------------------------------------------------------
# The end of a run: a deferred checkpoint is written, or the run says why it could not be

@pytest.mark.slow
def test_a_deferred_checkpoint_is_written_as_soon_as_the_steps_are_finite(images, tmp_path, monkeypatch, capsys,
                                                                         tiny_args, weights):
    nan_d_loss(monkeypatch, lambda step: 17 <= step <= 21)          # across the snapshot tick at step 20
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.12, max_nonfinite=8, metrics_num=0)) == 0
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "00000-demo"
    assert "checkpoint deferred at kimg 0.080: 3 non-finite step(s) in a row" in err and "done: " in err
    log = [(e["event"], e["step"], e.get("files"), e.get("streak"), e.get("deferred_at_step")) for e in events(run_dir)]
    assert log[1:] == [
        ("checkpoint", 10, ["checkpoint.pt"], None, None),
        ("checkpoint_deferred", 20, None, 3, None),                  # logged in log.jsonl, not only on stderr
        ("checkpoint", 23, ["snapshot-0000.092.pt", "checkpoint.pt"], None, 20),   # the first finite step
        ("checkpoint", 30, ["snapshot-0000.120.pt", "checkpoint.pt"], None, None)]
    state = weights(run_dir / "snapshot-0000.092.pt")
    assert state["cur_nimg"] == 92 and state["nonfinite_total"] == 5 and set(state["nonfinite_run"].values()) == {0}


@pytest.mark.slow
def test_a_run_that_ends_inside_a_streak_writes_its_final_state(images, tmp_path, monkeypatch, capsys, tiny_args,
                                                                weights):
    nan_d_loss(monkeypatch, lambda step: step >= 26)                # the last 4 steps of 30, and on after a resume
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.12, max_nonfinite=8, metrics_num=0)) == 0
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "00000-demo"
    assert "note: the run ends inside 4 non-finite step(s) in a row; the final checkpoint keeps their count" in err
    assert "done: 0.1 kimg" in err
    last = events(run_dir)[-1]
    assert (last["event"], last["step"], last["nonfinite_run"]) == ("checkpoint", 30, 4)
    state = weights(run_dir / "checkpoint.pt")
    assert state["cur_nimg"] == 120 and state["nonfinite_run"]["D"] == 4 and runs.nonfinite_tensor(state) is None
    # the resume continues the streak's count: the 8th non-finite step in a row is step 33, not 37
    assert train.main([f"--resume={run_dir}", "--kimg=0.2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "8 non-finite steps in a row (last in the D step at kimg 0.1, step 33)" in err
    assert f"the last good checkpoint is {run_dir / 'checkpoint.pt'} (kimg 0.12, step 30)" in err


@pytest.mark.slow
def test_a_final_state_that_cannot_be_written_ends_the_run_non_zero(images, tmp_path, monkeypatch, capsys, tiny_args):
    real_step = train.Trainer.step

    def poison_a_buffer_in_the_last_step(self):
        real_step(self)
        if self.cur_nimg == 120:                                     # weights finite, a buffer not
            self.G.mapping.w_avg.fill_(float("nan"))
    monkeypatch.setattr(train.Trainer, "step", poison_a_buffer_in_the_last_step)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.12, metrics_num=0)) == 1
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "00000-demo"
    assert "done: " not in err
    assert err.strip().splitlines()[-1] == (
        f"error: the final checkpoint was not written: G.mapping.w_avg holds NaN or inf; the last good checkpoint "
        f"is {run_dir / 'checkpoint.pt'} (kimg 0.08, step 20)")
    assert [e["step"] for e in events(run_dir) if e["event"] == "checkpoint"] == [10, 20]


# ----------------------------------------------------------------------------------------------
# Full disks (torch.save says RuntimeError) and missing folders, for every writer of the project

def checkpoint(value: float) -> dict:
    return {"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION, "config": {},
            "G": {"w": torch.full([3], value)}, "D": {}, "G_ema": {}}


def figure():
    fig = runs.pyplot().figure(figsize=(1, 1))
    fig.gca().plot([0, 1])
    return fig


# every way the project writes a file: name -> writer(path, value)
WRITERS = {
    "torch.save": lambda p, v: runs.save_checkpoint(p, checkpoint(v)),
    "np.save": lambda p, v: runs.atomic_write(p, lambda tmp: cache._save_npy(tmp, np.full(3, v))),
    "np.savez": lambda p, v: runs.atomic_write(p, lambda tmp: project._savez(tmp, {"w": np.full(3, v)})),
    "PIL png": lambda p, v: runs.save_png(np.full((4, 4), v, np.uint8), p),
    "PIL gif": lambda p, v: project.save_gif(torch.full((2, 1, 4, 4), v, dtype=torch.uint8), p),
    "matplotlib": lambda p, v: runs.save_figure(figure(), p, dpi=10 * v),
    "text": lambda p, v: runs.write_text(p, str(v)),
}
APPEND_LOG = {"log.jsonl": lambda p, v: runs.append_log(p, {"tick": v})}   # in place: test_a_full_disk_leaves_log...


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    """The temporary file is a link to /dev/full, which answers every write with ENOSPC as a full disk does
    (torch.save turns that into a RuntimeError without an errno, judged by the free space)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    path = tmp_path / "file"
    WRITERS[writer](path, 1)
    before = path.read_bytes()
    os.symlink("/dev/full", tmp_path / f".file{runs.TMP_MARK}{os.getpid()}")
    monkeypatch.setattr(runs, "shutil", types.SimpleNamespace(disk_usage=lambda p: Usage(10 ** 9, 10 ** 9, 0)))
    with pytest.raises(runs.RunError) as e:
        WRITERS[writer](path, 2)
    assert str(e.value) == (f"{path}: the disk is full (No space left on device); free space there and run again "
                            f"(the previous file, if any, is intact)")
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and not path.is_symlink()   # never read /dev/full
    assert path.read_bytes() == before


@pytest.mark.parametrize("writer", [*WRITERS, *APPEND_LOG])
def test_every_writer_names_a_missing_folder(tmp_path, writer):
    path = tmp_path / "no" / "such" / "file"
    with pytest.raises(runs.RunError, match=rf"^{path}: the folder {path.parent} does not exist; create it or "
                                            rf"choose another$"):
        {**WRITERS, **APPEND_LOG}[writer](path, 1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("message,free,said", [
    (TORCH_DISK_FULL, 0, "the disk is full (No space left on device)"),
    ("PytorchStreamWriter failed writing file data/0: file write failed", 4096, "the disk is full"),
    ("[enforce fail at inline_container.cc:672] . write: No space left on device", 10 ** 9, "the disk is full"),
    (TORCH_DISK_FULL, 10 ** 9, "cannot be written (unexpected pos 576 vs 534); check"),   # room left: not full
])
def test_torch_save_runtime_errors_are_write_errors(tmp_path, monkeypatch, message, free, said):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint(path, checkpoint(1))

    def torch_fails(obj, f, *args, **kw):
        Path(f).write_bytes(b"part of a file")
        raise RuntimeError(message)
    monkeypatch.setattr(torch, "save", torch_fails)
    monkeypatch.setattr(runs, "shutil", types.SimpleNamespace(disk_usage=lambda p: Usage(10 ** 9, 0, free)))
    with pytest.raises(runs.RunError) as e:
        runs.save_checkpoint(path, checkpoint(2))
    assert str(e.value).startswith(f"{path}: {said}") and "\n" not in str(e.value)
    assert runs.load_checkpoint(path)["G"]["w"][0] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_another_runtime_error_of_torch_save_stays_a_bug(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kw):
        Path(f).write_bytes(b"x")
        raise RuntimeError("an unexpected failure inside torch")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="an unexpected failure inside torch"):
        runs.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint(1))
    assert list(tmp_path.iterdir()) == []                           # its temporary is gone all the same


def test_a_full_disk_leaves_log_jsonl_as_it_was(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    runs.append_log(log, {"tick": 1})
    before = log.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(runs.RunError, match=r"log.jsonl: the disk is full \(No space left on device\)"):
        runs.append_log(log, {"tick": 2, "loss": 1.0})
    monkeypatch.setattr(os, "write", real_write)
    assert log.read_bytes() == before


@pytest.mark.slow
def test_a_full_disk_in_the_middle_of_a_run_as_torch_reports_it(images, tmp_path, monkeypatch, capsys, tiny_args,
                                                               weights):
    real_save = torch.save
    saves = []

    def disk_fills(obj, f, *args, **kw):
        saves.append(Path(f).name)
        if len(saves) > 1:                                           # the first checkpoint fits
            Path(f).write_bytes(b"partial")
            monkeypatch.setattr(runs, "shutil", types.SimpleNamespace(disk_usage=lambda p: Usage(10 ** 9, 10 ** 9, 0)))
            raise RuntimeError(TORCH_DISK_FULL)
        return real_save(obj, f, *args, **kw)
    monkeypatch.setattr(torch, "save", disk_fills)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.2, snap=0, metrics_num=0)) == 1
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "00000-demo"
    assert err.strip().splitlines()[-1] == (f"error: {run_dir / 'checkpoint.pt'}: the disk is full (No space left on "
                                            f"device); free space there and run again (the previous file, if any, "
                                            f"is intact)")
    assert "Traceback" not in err
    monkeypatch.setattr(torch, "save", real_save)
    assert weights(run_dir / "checkpoint.pt")["cur_nimg"] == 40 and no_temporaries(run_dir)


# ----------------------------------------------------------------------------------------------
# TensorBoard: optional, never the end of a run

def board(run_dir: Path):
    lines = []
    return monitor.TensorBoard(run_dir, True, log=lines.append), lines


def use(tb) -> None:
    tb.scalars({"kimg": 0.04, "tick": 1, "loss_G": 1.0, "ranks_in_sync": True})
    tb.image("fakes", np.zeros((8, 8), np.uint8), 0.04)
    tb.close()


def test_tensorboard_in_place_of_a_file_is_one_warning(tmp_path):
    (tmp_path / "tensorboard").write_text("not a folder")
    tb, lines = board(tmp_path)
    use(tb)
    assert lines == [f"warning: TensorBoard turned off, {tmp_path / 'tensorboard'} cannot be written ([Errno 17] "
                     f"File exists: '{tmp_path / 'tensorboard'}'); training goes on without it"]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # none printed
def test_tensorboard_in_a_read_only_folder_is_one_warning(tmp_path, monkeypatch):
    folder = tmp_path / "tensorboard"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:                                            # root writes anyway: refuse as the kernel would
        from tensorboard.compat.tensorflow_stub.io import gfile

        def refused(self, filename, *args, **kw):
            raise PermissionError(errno.EACCES, "Permission denied", filename)
        monkeypatch.setattr(gfile.LocalFileSystem, "write", refused)
    try:
        tb, lines = board(tmp_path)
        use(tb)
    finally:
        folder.chmod(0o755)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and "TensorBoard turned off" in warnings[0] and "Permission denied" in warnings[0]
    assert tb.writer is None


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # none printed
def test_tensorboard_writes_failing_later_turn_it_off_once(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    tb, lines = board(tmp_path)
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    use(tb)
    tb.scalars({"kimg": 0.08, "loss_G": 1.0})
    assert lines[1:] == [f"warning: TensorBoard turned off, {tmp_path / 'tensorboard'} cannot be written ([Errno 28] "
                         f"No space left on device); training goes on without it"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["a file named tensorboard", "add_scalar raises"])
def test_a_run_goes_on_without_tensorboard(images, tmp_path, monkeypatch, capsys, tiny_args, weights, fault):
    if fault == "add_scalar raises":
        from torch.utils.tensorboard import SummaryWriter

        def failing(self, *args, **kw):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(SummaryWriter, "add_scalar", failing)
    else:
        real_new_run_dir = runs.new_run_dir

        def blocked(outdir, preset):
            run_dir = real_new_run_dir(outdir, preset)
            (run_dir / "tensorboard").write_text("")
            return run_dir
        monkeypatch.setattr(runs, "new_run_dir", blocked)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.08, metrics_num=0)) == 0
    err = capsys.readouterr().err
    assert err.count("TensorBoard turned off") == 1 and "done: " in err
    assert weights(tmp_path / "runs" / "00000-demo" / "checkpoint.pt")["cur_nimg"] == 80


# ----------------------------------------------------------------------------------------------
# --resume of a run folder whose checkpoint.pt is no file

@pytest.mark.parametrize("kind,cause", [
    ("dangling link", "a symbolic link to {target}, which does not exist; restore that file or point the link at "
                      "one that exists"),
    ("folder", "a folder, not a checkpoint file; move it away or give the checkpoint file itself"),
])
def test_resume_names_a_checkpoint_that_is_no_file(tmp_path, capsys, kind, cause):
    run_dir = tmp_path / "00000-demo"
    run_dir.mkdir()
    (run_dir / "snapshot-000001.pt").write_bytes(b"")                # no silent fallback to a snapshot
    target = tmp_path / "elsewhere" / "checkpoint.pt"
    if kind == "folder":
        (run_dir / "checkpoint.pt").mkdir()
    else:
        os.symlink(target, run_dir / "checkpoint.pt")
    cause = cause.format(target=target)
    assert train.main([f"--resume={run_dir}"]) == 1
    assert capsys.readouterr().err == f"error: --resume {run_dir}: its checkpoint.pt is {cause}\n"
    assert train.main([f"--resume={run_dir / 'checkpoint.pt'}"]) == 1
    assert capsys.readouterr().err == f"error: --resume {run_dir / 'checkpoint.pt'}: is {cause}\n"
    assert runs.last_checkpoint(run_dir) == f"{run_dir / 'checkpoint.pt'} is {cause}"
    with pytest.raises(runs.RunError, match="its checkpoint.pt is a"):
        runs.resolve_checkpoint(run_dir, "--checkpoint")            # predict.py: the same rule


# ----------------------------------------------------------------------------------------------
# Two nodes, one process each, simulated on one machine (gloo on localhost)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_two_node_launch_trains_and_only_global_rank_0_writes(images, tmp_path, tiny_args, weights):
    port, env = free_port(), dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for node in (0, 1):                                              # each node: its own --outdir and cache folder
        args = tiny_args(images, tmp_path / f"node{node}" / "runs", kimg=0.08, batch=8, snap=1, mbstd_group=4,
                         metrics_num=0, cache_dir=tmp_path / f"node{node}" / "cache")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
             "--master_addr=127.0.0.1", f"--master_port={port}", "train.py", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    run_dirs = list((tmp_path / "node0" / "runs").iterdir())
    assert len(run_dirs) == 1 and not (tmp_path / "node1" / "runs").exists()   # only global rank 0 writes
    assert "run folder" not in results[1][1] and "tick" not in results[1][1]
    records = runs.read_log(run_dirs[0] / "log.jsonl")
    assert [r["tick"] for r in records] == [1, 2] and all(r["ranks_in_sync"] for r in records)
    assert [e["event"] for e in events(run_dirs[0])].count("start") == 1
    state = weights(run_dirs[0] / "checkpoint.pt")
    assert state["world_size"] == 2 and state["cur_nimg"] == 80
    # each node's cache: rank 0 built its own first, then node 1's first process built its node-local one
    indexes = [list((tmp_path / f"node{n}" / "cache").glob("*.json")) for n in (0, 1)]
    assert all(len(i) == 1 for i in indexes)
    assert indexes[0][0].stat().st_mtime_ns <= indexes[1][0].stat().st_mtime_ns


TAKE_TURNS = """
import json, sys, time
from pathlib import Path
import torch, torch.distributed as dist
import distributed, errors
rank, folder = int(sys.argv[1]), Path(sys.argv[2])
local_rank = [0, 0, 1][rank]                            # node 0: rank 0; node 1: ranks 1 and 2
dist.init_process_group("gloo", init_method=f"file://{folder / 'init'}", rank=rank, world_size=3)

def work(fail):
    with open(folder / "events", "a") as f:
        f.write(f"start {rank}\\n")
    time.sleep(0.3)                                      # long enough for a wrong order to show
    if fail:
        raise errors.ProjectError(f"{rank}: unreadable data")
    with open(folder / "events", "a") as f:
        f.write(f"end {rank}\\n")
    return rank

said = [distributed.in_turns(lambda: work(False), rank, local_rank, 3, torch.device("cpu"))]
dist.barrier()
if rank == 0:
    (folder / "events").rename(folder / "events-ok")
dist.barrier()
try:
    distributed.in_turns(lambda: work(rank == 0), rank, local_rank, 3, torch.device("cpu"))
except errors.ProjectError as e:
    said.append(str(e))
(folder / f"said{rank}").write_text(json.dumps(said))
dist.barrier()                                          # leave together, then close gloo (an exit with peers
dist.destroy_process_group()                            # still connected can abort the process)
"""


@pytest.mark.slow
def test_data_is_read_in_turns_rank_0_then_each_nodes_first_process(tmp_path):
    """Node 0 with rank 0, node 1 with ranks 1 and 2: rank 0 builds what is shared, then node 1's first process
    (rank 1) what is local to its node, then the rest; a failure in a turn stops every process with a line,
    and no later turn starts."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", TAKE_TURNS, str(r), str(tmp_path)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    lines = (tmp_path / "events-ok").read_text().splitlines()
    assert lines == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
    assert (tmp_path / "events").read_text().splitlines() == ["start 0"]
    said = [json.loads((tmp_path / f"said{r}").read_text()) for r in range(3)]
    assert said[0] == [0, "0: unreadable data"]
    for r in (1, 2):
        assert said[r] == [r, f"process {r}: stopped, another process failed first (its message names the cause)"]
