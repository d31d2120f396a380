"""The training loop (train.py) and its configuration (config.py), on tiny CPU configs."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import config
import losses
import runs
import train
from trainer import HEALTH_CHECK_INTERVAL, NonFiniteGuard, RandomStreams, TrainingStopped

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Losses and penalties against hand-computed values

def test_logistic_losses():
    torch.testing.assert_close(losses.g_nonsaturating_loss(torch.tensor([0.0, 2.0])),
                               torch.tensor([math.log(2), math.log(1 + math.exp(-2))]))
    torch.testing.assert_close(losses.d_logistic_loss(torch.tensor([1.0]), torch.tensor([-1.0])),
                               torch.tensor([2 * math.log(1 + math.exp(-1))]))


def test_r1_penalty_of_a_linear_discriminator():
    w = torch.randn(1, 1, 4, 4)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])                    # grad_x D(x) = w for every sample
    torch.testing.assert_close(losses.r1_penalty(x, logits), w.square().sum().expand(3))


def test_path_length_of_a_scaled_identity_generator():
    ws = torch.randn(2, 1, 16, requires_grad=True)         # num_ws 1, w_dim 16 = 4x4 pixels
    img = 3.0 * ws[:, 0].reshape(2, 1, 4, 4)
    torch.manual_seed(5)
    lengths = losses.path_lengths(img, ws)
    torch.manual_seed(5)
    y = torch.randn(2, 1, 4, 4) / 4                        # the same noise: N(0, I) / sqrt(H W)
    torch.testing.assert_close(lengths, 3.0 * y.square().sum(dim=[1, 2, 3]).sqrt())


def test_path_length_penalty_and_running_mean():
    penalty, a = losses.path_length_penalty(torch.tensor([1.0, 3.0]), torch.tensor(0.0), 0.01)
    assert a.item() == pytest.approx(0.02)                 # lerp(0, mean 2, 0.01)
    torch.testing.assert_close(penalty, torch.tensor([0.98 ** 2, 2.98 ** 2]))


def test_lazy_regularization_adam_correction():
    lr, betas = losses.lazy_adam_hparams(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert losses.lazy_adam_hparams(0.002, (0.0, 0.99), 4)[0] == pytest.approx(0.002 * 0.8)


def test_ema_beta_and_update():
    assert losses.ema_beta(16, 10, 0.05, 1000) == pytest.approx(0.5 ** (16 / 50))     # ramped: min(10000, 50)
    assert losses.ema_beta(16, 10, 0.0, 1000) == pytest.approx(0.5 ** (16 / 10000))
    G = torch.nn.Linear(3, 2)
    G.register_buffer("w_avg", torch.ones(2))
    G_ema = torch.nn.Linear(3, 2)
    G_ema.register_buffer("w_avg", torch.zeros(2))
    expected = G.weight.detach().lerp(G_ema.weight.detach(), 0.9)
    losses.update_ema(G_ema, G, 0.9)
    torch.testing.assert_close(G_ema.weight, expected)
    torch.testing.assert_close(G_ema.w_avg, torch.ones(2))                      # buffers are copied


def test_ada_adjustment():
    assert losses.ada_adjust(0.1, 0.8, 0.6, 16, 4, 500) == pytest.approx(0.1 + 64 / 500_000)
    assert losses.ada_adjust(0.1, 0.2, 0.6, 16, 4, 500) == pytest.approx(0.1 - 64 / 500_000)
    assert losses.ada_adjust(0.0, 0.2, 0.6, 16, 4, 500) == 0.0


# ----------------------------------------------------------------------------------------------
# The loop

def test_lazy_intervals_and_optimizer_settings(images, monkeypatch, device, make_trainer):
    trainer = make_trainer(images, device)
    calls = {"r1": [], "pl": []}
    real_r1, real_pl = trainer.r1_step, trainer.pl_step
    monkeypatch.setattr(trainer, "r1_step",
                        lambda reals, c=None: (calls["r1"].append(trainer.batch_idx), real_r1(reals)))
    monkeypatch.setattr(trainer, "pl_step", lambda: (calls["pl"].append(trainer.batch_idx), real_pl()))
    for _ in range(17):
        trainer.step()
    assert calls["r1"] == [0, 16] and calls["pl"] == [0, 4, 8, 12, 16]
    assert trainer.cur_nimg == 17 * 4
    d_group, g_group = trainer.opt_D.param_groups[0], trainer.opt_G.param_groups[0]
    assert d_group["lr"] == pytest.approx(0.0025 * 16 / 17) and g_group["lr"] == pytest.approx(0.0025 * 4 / 5)
    assert d_group["betas"][1] == pytest.approx(0.99 ** (16 / 17)) and d_group["eps"] == 1e-8
    assert trainer.r1_gamma == 1.0                                            # the demo preset's
    assert config.TrainConfig(r1_gamma=0, resolution=16, batch=4).resolved_r1_gamma() == pytest.approx(
        0.0002 * 16 ** 2 / 4)                                                    # the auto rule
    assert trainer.pl_mean.item() > 0
    assert trainer.G.mapping.w_avg.abs().sum() > 0                            # w_avg is tracked


@pytest.mark.slow
def test_a_few_ticks_write_every_file(images, tmp_path, tiny_args, run_train, weights):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.12))
    assert run_dir.name == "00000-demo"
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "log.jsonl", "reals.png", "fakes000000.png", "losses.png", "checkpoint.pt"} <= names
    assert "fakes0000.080.png" in names and "snapshot-0000.080.pt" in names       # snap=2 ticks
    assert "fakes0000.120.png" in names                                          # and at the end
    assert json.loads((run_dir / "config.json").read_text())["resolution"] == 16
    records = runs.read_log(run_dir / "log.jsonl")
    assert [r["tick"] for r in records] == [1, 2, 3]
    for key in ("kimg", "seconds", "sec_per_kimg", "images_per_s", "loss_G", "loss_D", "r1_penalty",
                "pl_penalty", "ada_p", "peak_mem_gb", "nonfinite_skipped"):
        assert key in records[0], key
    state = weights(run_dir / "checkpoint.pt")
    assert state["config"]["resolution"] == 16 and state["cur_nimg"] == 120
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "pl_mean", "ada_p", "rng", "sampler", "tick"} <= set(state)
    with Image.open(run_dir / "fakes0000.120.png") as im:
        assert im.size == (4 * 16, 2 * 16)
    again = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    assert again.name == "00001-demo"                                            # never reuses a folder


@pytest.mark.slow
def test_resume_is_bit_exact_in_process(images, tmp_path, tiny_args, run_train, weights, assert_same_weights):
    full = run_train(tiny_args(images, tmp_path / "runs", kimg=0.2))
    part = run_train(tiny_args(images, tmp_path / "runs", kimg=0.1))
    resumed = run_train([f"--resume={part}", "--kimg=0.2"])
    assert resumed == part
    assert_same_weights(weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt"))
    events = [json.loads(line).get("event") for line in (part / "log.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1


@pytest.mark.slow
def test_a_version_1_checkpoint_resumes_with_fresh_streams(images, tmp_path, capsys, tiny_args, run_train,
                                                           weights):
    """Version 1 checkpoints held the global RNG's state ({"cpu": [...]}) under "rng"; they still resume."""
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    state = weights(run_dir / "checkpoint.pt")
    state.update(version=1, rng={"cpu": [torch.get_rng_state()]})
    torch.save(state, run_dir / "checkpoint.pt")
    capsys.readouterr()
    assert train.main([f"--resume={run_dir}", "--kimg=0.08"]) == 0
    assert "written by an older version" in capsys.readouterr().err
    state = weights(run_dir / "checkpoint.pt")
    assert state["cur_nimg"] == 80 and state["version"] == runs.CHECKPOINT_VERSION
    assert set(state["rng"]) == set(RandomStreams.NAMES)


def _wait_for_ticks(log_path: Path, ticks: int, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {proc.stderr.read()}")
        if log_path.is_file() and len(runs.read_log(log_path)) >= ticks:
            return
        time.sleep(0.05)
    pytest.fail("training did not reach the tick in time")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "SIGINT"])
def test_interrupted_run_resumes_bit_exact(images, tmp_path, how, tiny_args, run_train, weights, assert_same_weights):
    args = tiny_args(images, tmp_path / "runs", kimg=0.4)
    reference = run_train(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "00001-demo"
    _wait_for_ticks(run_dir / "log.jsonl", 3, proc)
    proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if how == "SIGINT":
        assert proc.returncode == 130 and "checkpoint saved" in stderr and "--resume" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = weights(run_dir / "checkpoint.pt")["cur_nimg"]
    assert 0 < stopped_at < 400
    result = subprocess.run([sys.executable, "train.py", f"--resume={run_dir}"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert_same_weights(weights(reference / "checkpoint.pt"), weights(run_dir / "checkpoint.pt"))


def test_nonfinite_steps_are_skipped_then_stop_the_run(images, tmp_path, monkeypatch, make_trainer):
    trainer = make_trainer(images, max_nonfinite=3)
    trainer.step()
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    monkeypatch.setattr(losses, "d_logistic_loss", lambda r, f: (r + f) * float("nan"))
    trainer.step()                                        # D step skipped, G step still taken
    assert trainer.guard.total == 1
    for k, v in trainer.D.state_dict().items():
        assert torch.equal(v, before[k]), f"D.{k} changed by a non-finite step"
    trainer.step()
    trainer.check_nonfinite()                             # 2 in a row: still going
    assert HEALTH_CHECK_INTERVAL == 4 and trainer.batch_idx == 3
    with pytest.raises(train.TrainingStopped, match=r"3 non-finite steps in a row \(last in the D step at kimg "
                                                    r"0.0, step 3\); try a lower --lr"):
        trainer.step()                                    # the 3rd in a row; step 4 reads the counters
    assert trainer.guard.total == 3                       # the G steps stayed finite and were taken


@pytest.mark.slow
def test_a_run_that_goes_nonfinite_keeps_its_last_checkpoint(images, tmp_path, monkeypatch, tiny_args, weights):
    real = losses.d_logistic_loss
    calls = []

    def nan_after_two_ticks(r, f):
        calls.append(1)
        return real(r, f) if len(calls) <= 20 else (r + f) * float("nan")
    monkeypatch.setattr(losses, "d_logistic_loss", nan_after_two_ticks)
    args = tiny_args(images, tmp_path / "runs", kimg=0.4, max_nonfinite=4)
    assert train.main(args) == 1
    run_dir = tmp_path / "runs" / "00000-demo"
    state = weights(run_dir / "checkpoint.pt")
    assert state["cur_nimg"] == 80 and all(torch.isfinite(v).all() for v in state["G"].values())


# ----------------------------------------------------------------------------------------------
# Configuration

def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of train.main, in process."""
    code = train.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_presets_and_override_forms():
    cfg = config.parse_args(["--preset", "oasis256", "--batch=32", "--kimg", "100", "--mirror"])
    assert (cfg.resolution, cfg.batch, cfg.kimg, cfg.mirror, cfg.mapping_layers) == (256, 32, 100.0, True, 2)
    auto = config.parse_args(["--preset=oasis256"])
    assert auto.resolved_r1_gamma() == pytest.approx(0.8192) and auto.resolved_ema_kimg() == pytest.approx(5)
    assert auto.auto_rule_line() == ("r1_gamma 0.8192 (auto rule from batch 16), ema_kimg 5 (auto rule from "
                                     "batch 16), ema_rampup 0.05")
    bigger = config.parse_args(["--preset=oasis256", "--batch=32"])            # the rule follows the given batch
    assert (bigger.resolved_r1_gamma(), bigger.resolved_ema_kimg()) == (pytest.approx(0.4096), pytest.approx(10))
    paper = config.parse_args(["--preset=paper256"])
    assert "r1_gamma 1 (given), ema_kimg 20 (given)" in paper.auto_rule_line()
    assert (paper.batch, paper.mbstd_group, paper.resolved_r1_gamma(), paper.resolved_ema_kimg(),
            paper.mapping_layers) == (64, 8, 1.0, 20.0, 8)
    assert config.parse_args([]).preset == "demo"


@pytest.mark.parametrize("args,message", [
    (["--bacth=8"], "unknown option --bacth (did you mean --batch?); see --help"),
    (["--batch=eight"], "--batch expects an integer, got 'eight'"),
    (["--lr=fast"], "--lr expects a number, got 'fast'"),
    (["--batch=6"], "--batch=6 gives 6 images per GPU, which the minibatch-stddev group of 4"),
    (["--resolution=100"], "--resolution must be a power of two >= 8"),
    (["--preset=huge"], "unknown preset 'huge'; choose one of demo, oasis256, paper256"),
    (["--mixed_precision=fp16"], "--mixed_precision must be auto, bf16 or fp32"),
    (["--kimg"], "--kimg needs a value"),
    (["--seed=-1"], "--seed must be in [0, 2^31), got -1"),
    (["--pl_batch_shrink=0"], "--pl_batch_shrink must be > 0, got 0"),
    (["--device=tpu"], "--device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--pl_decay=nan"], "--pl_decay must be a finite number, got nan"),
    (["--lr=inf"], "--lr must be a finite number, got inf"),
    (["--lr=1e10"], "--lr=10000000000.0 is far above any working Adam rate"),
    (["--cache_dir=train.py"], "--cache_dir train.py: is a file, not a folder"),
])
def test_config_errors_are_one_line_with_exit_code_2(args, message, capsys):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err


def test_help_lists_every_field_with_its_comment():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("preset", "data", "outdir", "resume", "resolution", "kimg", "batch", "channel_base",
                 "channel_max", "mapping_layers", "seed", "device", "snap", "aug", "p"):
        assert f"--{name} " in result.stdout
    assert "training length in thousands of real images shown to D" in result.stdout


def test_dry_run_prints_config_and_parameter_counts(capsys):
    code, out, err = run_cli(capsys, "--preset=paper256", "--img-channels=1", "--dry_run")
    assert code == 0, err
    assert '"batch": 64' in out
    assert "G 24,762,452 parameters, D 24,000,961 parameters, num_ws 14" in out
    assert "r1_gamma 1 (given), ema_kimg 20 (given), ema_rampup 0" in out


@pytest.mark.slow
def test_resume_refuses_a_different_architecture_or_a_snapshot(images, tmp_path, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.08))
    with pytest.raises(config.ConfigError, match=r"--channel_max cannot change when resuming"):
        run_train([f"--resume={run_dir}", "--channel_max=32"])
    with pytest.raises(runs.RunError, match=r"a snapshot keeps the networks but not the optimizer state"):
        run_train([f"--resume={run_dir / 'snapshot-0000.080.pt'}"])


# ----------------------------------------------------------------------------------------------
# Two processes with the gloo backend

@pytest.mark.slow
def test_two_process_gloo_run_stays_in_sync(images, tmp_path, tiny_args, weights):
    args = tiny_args(images, tmp_path / "runs", kimg=0.08, batch=8, snap=1, mbstd_group=4)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1                                   # only rank 0 writes
    records = runs.read_log(run_dirs[0] / "log.jsonl")
    assert [r["tick"] for r in records] == [1, 2]
    assert all(r["ranks_in_sync"] for r in records)
    state = weights(run_dirs[0] / "checkpoint.pt")
    assert state["world_size"] == 2 and {k: len(v) for k, v in state["rng"].items()} == \
        {"latents": 2, "choices": 2, "layers": 2}
    assert not torch.equal(state["rng"]["latents"][0], state["rng"]["latents"][1])   # each rank its own draws
    assert state["cur_nimg"] == 80


# ----------------------------------------------------------------------------------------------
# The loop's pieces: precision, memory layout, seeding, signals, the penalty the loop really uses

def test_bf16_step_with_r1_and_path_length(images, device, make_trainer):
    """The GPU default (bf16 autocast, second-order gradients under it) runs on the CPU too."""
    trainer = make_trainer(images, device, mixed_precision="bf16")
    assert trainer.amp_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.step()                                        # batch_idx 0: D, R1, G and path length all run
    trainer.check_nonfinite()
    stats = trainer.pop_stats()
    assert {"loss_D", "r1_penalty", "loss_G", "pl_penalty"} <= set(stats)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert trainer.guard.total == 0
    assert any(not torch.equal(v, before[k]) for k, v in trainer.G.state_dict().items())


def test_channels_last_on_and_off_agree(images, make_trainer):
    a = make_trainer(images, channels_last=True)
    b = make_trainer(images, channels_last=False)
    conv_a, conv_b = (next(p for p in t.D.parameters() if p.ndim == 4 and p.shape[-1] == 3) for t in (a, b))
    assert conv_a.is_contiguous(memory_format=torch.channels_last) and not \
        conv_b.is_contiguous(memory_format=torch.channels_last)
    for net in ("G", "D"):
        for (name, p), q in zip(getattr(a, net).state_dict().items(), getattr(b, net).state_dict().values()):
            assert torch.equal(p, q), f"{net}.{name} starts differently"
    for _ in range(2):                                    # the same seed: the same random streams
        a.step()
        b.step()
    for net in ("G", "D"):
        for (name, p), q in zip(getattr(a, net).state_dict().items(), getattr(b, net).state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{net}.{name}")


def test_seed_alone_sets_the_initial_networks(images, make_trainer):
    torch.manual_seed(123)
    a = make_trainer(images, seed=3)
    torch.manual_seed(456)                                # whatever the global state was before
    b = make_trainer(images, seed=3)
    for p, q in zip(a.G.parameters(), b.G.parameters()):
        assert torch.equal(p, q)
    c = make_trainer(images, seed=4)
    assert not all(torch.equal(p, q) for p, q in zip(a.G.parameters(), c.G.parameters()))


def test_training_leaves_the_global_rng_alone(images, make_trainer):
    """Trainer draws from its own streams: building it and training (noise, mixing, augmentation, path
    length) neither reads nor moves the global torch RNG, so training goes the same whatever it holds."""
    state = torch.get_rng_state()
    a = make_trainer(images, p=0.5)                       # augmentations too
    for _ in range(3):
        a.step()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    b = make_trainer(images, p=0.5)
    for _ in range(3):
        b.step()
    for (name, p), q in zip(a.G.state_dict().items(), b.G.state_dict().values()):
        assert torch.equal(p, q), f"G.{name}"


def test_random_streams_are_independent_and_round_trip():
    streams = RandomStreams(3, torch.device("cpu"))
    draws = [torch.randn(4, generator=getattr(streams, name)) for name in RandomStreams.NAMES]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    saved = streams.state_dict()
    after = torch.randn(4, generator=streams.latents)
    with streams.scope():
        noise = torch.randn(4)                            # code that takes no generator: the layers stream
    again = RandomStreams(0, torch.device("cpu"))
    again.load_state_dict(saved)
    assert torch.equal(torch.randn(4, generator=again.latents), after)
    with again.scope():
        assert torch.equal(torch.randn(4), noise)


def test_nonfinite_guard_counts_stops_and_round_trips():
    guard = NonFiniteGuard(max_nonfinite=3, batch=4, device=torch.device("cpu"))
    grads = [torch.ones(2)]
    nets = {"G": torch.nn.Linear(2, 2)}
    assert guard.record("G", 0, torch.tensor(1.0), grads)               # finite: taken
    assert not guard.record("D", 1, torch.tensor(float("nan")), grads)  # a NaN loss: skipped and counted
    assert not guard.record("D", 2, torch.tensor(1.0), [torch.tensor([float("inf")])])   # an inf gradient
    assert int(guard.total) == 2 and guard.streak() == 2
    guard.check(2, nets)                                                # 2 in a row: still going
    state = guard.state_dict()
    assert state == {"nonfinite_total": 2, "nonfinite_run": {"G": 0, "D": 2}}
    again = NonFiniteGuard(max_nonfinite=3, batch=4, device=torch.device("cpu"))
    again.load_state_dict(state)
    assert again.state_dict() == state and again.streak() == 2
    assert not again.record("D", 250, torch.tensor(float("inf")), grads)      # the 3rd in a row
    with pytest.raises(TrainingStopped, match=r"^3 non-finite steps in a row \(last in the D step at kimg 1.0, "
                                              r"step 250\); try a lower --lr, a larger --r1_gamma or "
                                              r"--mixed_precision=fp32$"):
        again.check(250, nets)
    assert guard.record("D", 3, torch.tensor(1.0), grads) and guard.streak() == 0      # a finite step ends it
    with torch.no_grad():
        nets["G"].bias.fill_(float("nan"))
    with pytest.raises(TrainingStopped, match=r"the weights became NaN or inf \(G.bias\) by step 3"):
        guard.check(3, nets)


def test_training_calls_the_tested_path_length_penalty(images, monkeypatch, make_trainer):
    trainer = make_trainer(images)
    seen = []
    real = losses.path_length_penalty

    def spy(lengths, pl_mean, decay, batch_mean=None):
        penalty, a = real(lengths, pl_mean, decay, batch_mean)
        seen.append(a.detach().clone())
        return penalty, a
    monkeypatch.setattr(losses, "path_length_penalty", spy)
    trainer.step()
    assert len(seen) == 1 and torch.equal(trainer.pl_mean, seen[0])


def test_signal_handlers_are_restored_after_a_run(images, tmp_path, tiny_args, run_train):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run_train(tiny_args(images, tmp_path / "runs", kimg=0.04))
    assert {s: signal.getsignal(s) for s in before} == before
    with train.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]


def test_training_without_noise_inputs_keeps_their_strengths_at_zero(images, make_trainer):
    trainer = make_trainer(images, noise=False)
    for _ in range(5):
        trainer.step()
    strengths = {k: v for k, v in trainer.G.state_dict().items() if k.endswith("noise_strength")}
    assert strengths and all(float(v) == 0 for v in strengths.values())
    with_noise = make_trainer(images)
    for _ in range(5):
        with_noise.step()
    assert any(float(v) != 0 for k, v in with_noise.G.state_dict().items() if k.endswith("noise_strength"))
