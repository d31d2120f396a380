"""The fault-injection findings, replayed on tiny CPU configs: every attack ends in one line, with nothing
the user had lost (resume options, NaN weights, shrinking data, full disks, kills between writes, two
processes on one run folder, damaged checkpoints)."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

import config
import losses
import monitor
import runs
import train


def events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"event"' in line]


@pytest.mark.slow
def test_options_given_at_resume_reach_the_optimizer(images, tmp_path, capsys, tiny_args, run_train, weights):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    captured = {}
    real_run_loop = train.run_loop

    def spy(run, stop):
        captured["lr"] = [g["lr"] for g in run.trainer.opt_G.param_groups + run.trainer.opt_D.param_groups]
        captured["betas"] = run.trainer.opt_D.param_groups[0]["betas"]
        return real_run_loop(run, stop)
    train.run_loop = spy
    try:
        run_train([f"--resume={run_dir}", "--kimg=0.08", "--lr=0.001", "--betas=0,0.9"])
    finally:
        train.run_loop = real_run_loop
    assert captured["lr"] == pytest.approx([0.001 * 4 / 5, 0.001 * 16 / 17])     # lazy-regularization correction
    assert captured["betas"][1] == pytest.approx(0.9 ** (16 / 17))
    err = capsys.readouterr().err
    assert "options changed at resume: kimg 0.04 -> 0.08, lr 0.0025 -> 0.001, betas '0,0.99' -> '0,0.9'" in err
    assert weights(run_dir / "checkpoint.pt")["config"]["lr"] == 0.001


def test_weights_that_turn_nan_stop_the_run_and_never_reach_a_checkpoint(images, tmp_path, monkeypatch, capsys,
                                                                         tiny_args, weights):
    real_g_step = train.Trainer.g_step

    def poison_after_a_tick(self):
        real_g_step(self)
        if self.cur_nimg >= 60:                            # finite gradients, non-finite weights (e.g. lr=1e10)
            with torch.no_grad():
                next(self.G.parameters()).fill_(float("inf"))
    monkeypatch.setattr(train.Trainer, "g_step", poison_after_a_tick)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.2)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the weights became NaN or inf (G.") and "try a lower --lr" in err
    run_dir = tmp_path / "runs" / "00000-demo"
    for path in run_dir.glob("*.pt"):
        assert runs.nonfinite_tensor(weights(path)) is None, path
    assert weights(run_dir / "checkpoint.pt")["cur_nimg"] == 40
    assert not (tmp_path / "runs" / "00000-demo" / "predict").exists()


@pytest.mark.slow
def test_no_checkpoint_is_written_inside_a_nonfinite_streak(images, tmp_path, monkeypatch, capsys, tiny_args, weights):
    real = losses.d_logistic_loss
    calls = []

    def nan_from_step_14(r, f):                           # ticks end every 10 steps (40 images)
        calls.append(1)
        return real(r, f) if len(calls) <= 14 else (r + f) * float("nan")
    monkeypatch.setattr(losses, "d_logistic_loss", nan_from_step_14)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.4, max_nonfinite=8)) == 1
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "00000-demo"
    assert "checkpoint deferred at kimg 0.080: 6 non-finite step(s) in a row" in err
    assert f"the last good checkpoint is {run_dir / 'checkpoint.pt'} (kimg 0.04, step 10)" in err
    state = weights(run_dir / "checkpoint.pt")
    assert state["cur_nimg"] == 40 and all(v == 0 for v in state["nonfinite_run"].values())
    assert [e["step"] for e in events(run_dir) if e["event"] == "checkpoint"] == [10]


@pytest.mark.slow
def test_resume_after_the_data_shrank(images, tmp_path, capsys, tiny_args, run_train, weights):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    run_dir = run_train(tiny_args(data, tmp_path / "runs", kimg=0.04))
    for p in sorted(data.glob("*.png"))[8:]:
        p.unlink()
    assert train.main([f"--resume={run_dir}", "--kimg=0.08"]) == 0
    assert "the training data changed" in capsys.readouterr().err
    assert weights(run_dir / "checkpoint.pt")["cur_nimg"] == 80


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(images, tmp_path, monkeypatch, capsys, tiny_args,
                                                                weights):
    real_save = torch.save
    saves = []

    def disk_fills(obj, f, *args, **kw):
        saves.append(Path(f).name)
        if len(saves) > 1:                                 # the first checkpoint fits, then the disk is full
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kw)
    monkeypatch.setattr(torch, "save", disk_fills)
    assert train.main(tiny_args(images, tmp_path / "runs", kimg=0.2, snap=0)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "the disk is full (No space left on device)" in err[-1]
    assert "Traceback" not in "\n".join(err)
    run_dir = tmp_path / "runs" / "00000-demo"
    monkeypatch.setattr(torch, "save", real_save)
    assert weights(run_dir / "checkpoint.pt")["cur_nimg"] == 40
    assert not [p for p in run_dir.iterdir() if runs.TMP_MARK in p.name]


def test_a_failed_plot_costs_no_checkpoint(images, tmp_path, monkeypatch, capsys, tiny_args, run_train, weights):
    def broken_plot(log_path, out):
        raise runs.RunError(f"{out}: cannot be written (Read-only file system)")
    monkeypatch.setattr(monitor, "plot_losses", broken_plot)
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.08))
    assert weights(run_dir / "checkpoint.pt")["cur_nimg"] == 80
    err = capsys.readouterr().err
    assert "warning: " in err and "losses.png: cannot be written (Read-only file system); training goes on" in err


@pytest.mark.slow
def test_snapshot_is_written_before_checkpoint(images, tmp_path, monkeypatch, tiny_args, run_train):
    order = []
    real = runs.save_checkpoint
    monkeypatch.setattr(runs, "save_checkpoint", lambda path, state: (order.append(Path(path).name), real(path, state)))
    run_train(tiny_args(images, tmp_path / "runs", kimg=0.08, snap=1, checkpoint_minutes=1000))
    assert order == ["snapshot-0000.040.pt", "checkpoint.pt", "snapshot-0000.080.pt", "checkpoint.pt"]


@pytest.mark.slow
def test_resume_cleans_temporaries_of_a_killed_write(images, tmp_path, capsys, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    orphan = run_dir / f".checkpoint.pt{runs.TMP_MARK}999999999"
    orphan.write_bytes(b"x" * 1000)
    assert train.main([f"--resume={run_dir}", "--kimg=0.08"]) == 0
    assert not orphan.exists() and "removed 1 temporary file(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_cannot_train_in_one_run_folder(images, tmp_path, capsys, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    before = (run_dir / "log.jsonl").read_text()
    capsys.readouterr()
    with runs.RunLock(run_dir):                           # as if another process were training in it
        assert train.main([f"--resume={run_dir}", "--kimg=0.08"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by process" in err and "wait for it to end" in err
    assert (run_dir / "log.jsonl").read_text() == before


def test_unwritable_outdir_fails_before_the_data_is_read(images, tmp_path, monkeypatch, capsys, tiny_args):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(train, "load_data", lambda *a: pytest.fail("the data was read before the outdir check"))
    assert train.main(tiny_args(images, tmp_path / "a_file" / "runs")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a writable folder" in err


@pytest.mark.slow
@pytest.mark.parametrize("damage,message", [
    (lambda s: s.pop("opt_D"), "damaged checkpoint, the key 'opt_D' is missing"),
    (lambda s: s.pop("sampler"), "damaged checkpoint, the key 'sampler' is missing"),
    (lambda s: s["G"].update({k: torch.zeros(3) for k in list(s["G"])[:1]}), "G does not match its config"),
    (lambda s: s["D"].update({k: v * float("nan") for k, v in list(s["D"].items())[:1]}), "the weights hold NaN"),
    (lambda s: s.update(version=7), "checkpoint version 7, this code reads versions 1 to 3"),
])
def test_damaged_checkpoints_are_refused_at_resume(images, tmp_path, capsys, damage, message, tiny_args, run_train,
                                                   weights):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    state = weights(run_dir / "checkpoint.pt")
    damage(state)
    torch.save(state, run_dir / "checkpoint.pt")
    capsys.readouterr()
    assert train.main([f"--resume={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_resume_reports_random_bytes_as_damaged_not_pickled(images, tmp_path, capsys, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    (run_dir / "checkpoint.pt").write_bytes(bytes(range(256)) * 8)
    assert train.main([f"--resume={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert "unreadable or truncated checkpoint" in err and "pickled" not in err


def test_config_file_errors_name_the_option():
    with pytest.raises(config.ConfigError, match="--cache_dir"):
        config.parse_args(["--cache_dir=tests/test_faults.py"])
