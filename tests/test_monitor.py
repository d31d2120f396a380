"""Quality tracked while training (monitor.py): scores in log.jsonl, metrics.png, best.json and
predict.py --best, TensorBoard with and without the package."""

import builtins
import json

import numpy as np
import pytest
import torch
from PIL import Image

import monitor
import predict
import runs


@pytest.fixture(scope="module")
def scored_run(images, tmp_path_factory, tiny_args, run_train):
    return run_train(tiny_args(images, tmp_path_factory.mktemp("monitor") / "runs", kimg=0.12, snap=1,
                               metrics_num=16, tensorboard="false"))


@pytest.mark.slow
def test_snapshots_are_scored_into_the_log(scored_run):
    records = runs.read_log(scored_run / "log.jsonl")
    assert [r["tick"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("nearest_ssim", "heldout_nearest_ssim", "diversity_ssim", "real_diversity_ssim",
                    "memorization_share", "quality_gap", "metrics_seconds"):
            assert key in r, key
        assert r["memorization_share"] * 16 == pytest.approx(round(r["memorization_share"] * 16))   # of 16 slices
        assert r["quality_gap"] == pytest.approx(abs(r["nearest_ssim"] - r["heldout_nearest_ssim"]) +
                                                 abs(r["diversity_ssim"] - r["real_diversity_ssim"]))
    assert len({r["heldout_nearest_ssim"] for r in records}) == 1               # the real side is computed once
    assert (scored_run / "metrics.png").is_file() and not (scored_run / "tensorboard").exists()


@pytest.mark.slow
def test_best_json_names_the_best_scored_snapshot_and_predict_uses_it(scored_run, tmp_path, capsys, weights):
    records = runs.read_log(scored_run / "log.jsonl")
    best = json.loads((scored_run / "best.json").read_text())
    winner = min(records, key=lambda r: r["quality_gap"])
    assert best["criterion"] == "quality_gap" and best["value"] == winner["quality_gap"]
    assert best["snapshot"] == f"snapshot-{runs.kimg_tag(round(winner['kimg'] * 1000))}.pt"
    assert runs.best_checkpoint(scored_run) == scored_run / best["snapshot"]
    assert predict.main(["images", "--checkpoint", str(scored_run), "--best", "--seeds", "0", "--outdir",
                         str(tmp_path)]) == 0
    snap = weights(scored_run / best["snapshot"])
    G = runs.load_generator(scored_run / best["snapshot"], torch.device("cpu"))[0]
    with Image.open(tmp_path / "seed0000.png") as written:                      # --best drew with that snapshot
        assert np.array_equal(np.asarray(written), predict.generate(G, [0])[0, 0].numpy())
    assert snap["cur_nimg"] == round(winner["kimg"] * 1000)
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(scored_run / "checkpoint.pt"), "--best"]) == 1
    assert "--best needs a run folder" in capsys.readouterr().err


def test_update_best_keeps_the_lower_score(tmp_path):
    assert monitor.update_best(tmp_path, {"kimg": 1, "quality_gap": 0.5}, "snapshot-000001.pt")
    assert not monitor.update_best(tmp_path, {"kimg": 2, "quality_gap": 0.6}, "snapshot-000002.pt")
    assert monitor.update_best(tmp_path, {"kimg": 3, "quality_gap": 0.2}, "snapshot-000003.pt")
    assert runs.read_best(tmp_path)["snapshot"] == "snapshot-000003.pt"
    assert not monitor.update_best(tmp_path, {"kimg": 4, "loss_G": 1.0}, "snapshot-000004.pt")   # not scored
    assert monitor.criterion({"kid": 0.1, "quality_gap": 0.3}) == ("kid", 0.1)


@pytest.mark.slow
def test_no_scoring_when_off_and_predict_best_says_why(images, tmp_path, capsys, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04, snap=1, metrics_num=0, tensorboard="false"))
    assert "nearest_ssim" not in runs.read_log(run_dir / "log.jsonl")[0] and not (run_dir / "best.json").exists()
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(run_dir), "--best"]) == 1
    assert "no best.json" in capsys.readouterr().err


@pytest.mark.slow
def test_tensorboard_gets_every_scalar_when_installed(images, tmp_path, tiny_args, run_train):
    pytest.importorskip("tensorboard")
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.08, snap=1, metrics_num=8))
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(events[0])).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss_G", "loss_D", "r1_penalty", "ada_p", "nearest_ssim", "quality_gap", "sec_per_kimg"} <= tags
    assert [e.step for e in acc.Scalars("loss_G")] == [40, 80]
    assert "fakes" in acc.Tags()["images"]


@pytest.mark.slow
def test_without_tensorboard_nothing_changes(images, tmp_path, monkeypatch, tiny_args, run_train):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04, snap=1, metrics_num=8))
    assert not (run_dir / "tensorboard").exists() and (run_dir / "checkpoint.pt").is_file()
