"""The command-line entry point of bench.py, its summary included (dataset.py's are in test_dataset.py)."""

import subprocess
import sys

import pytest

import bench


def test_modules_summary_prints_official_totals(capsys):
    assert bench.main(["summary", "--resolution", "256", "--channels", "1", "--mapping-layers", "8"]) == 0
    out = capsys.readouterr().out
    assert "G total 24,762,452 parameters" in out and "D total 24,000,961 parameters" in out
    assert "num_ws = 14, mapping layers = 8" in out


def test_modules_and_bench_share_the_mapping_default(capsys):
    import config
    assert bench.main(["summary", "--resolution", "16", "--channel_base", "128"]) == 0
    assert f"mapping layers = {config.TrainConfig.mapping_layers}" in capsys.readouterr().out
    subcommands = [a for a in bench.build_parser()._actions if a.dest == "what"][0].choices
    assert subcommands["networks"].get_default("mapping_layers") == config.TrainConfig.mapping_layers


def test_modules_summary_bad_resolution_is_one_line():
    result = subprocess.run([sys.executable, "bench.py", "summary", "--resolution", "100"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr == ("error: img_resolution must be a power of two >= 8 "
                             "(e.g. 64, 128, 256), got 100\n")


def test_bench_runs_a_tiny_config_on_cpu(capsys):
    bench.main(["networks", "--device", "cpu", "--resolution", "16", "--channel_base", "128", "--channel_max", "16",
                "--batch", "2", "--iters", "1", "--warmup", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp32") or line.startswith("| bf16")]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0      # images/s
        assert float(cells[5]) < (0.05 if cells[0] == "bf16" else 1e-5)  # error vs float64


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16"], "--precision: unknown value 'fp16'"),
    (["--modconv", "grouped"], "--modconv: unknown value 'grouped'"),
    (["--resolution", "48"], "img_resolution must be a power of two"),
    (["--device", "tpu"], "--device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_bench_rejects_bad_options(args, message, capsys):
    assert bench.main(["networks", "--device", "cpu"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_data_on_a_small_folder(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    from PIL import Image
    import numpy as np
    for i in range(3):
        Image.fromarray(np.full((32, 32), 50 * i, np.uint8)).save(src / f"s{i}.png")
    bench.main(["data", "--data", str(src), "--images", "20", "--resolution", "16", "--batch", "4",
                "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "20 PNG files (copies of 3 slices" in out
    assert "| first-time decode into the cache |" in out and "| later start from the cache |" in out
    assert out.count(" img/s") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["src"]        # the temporary copies are gone


def test_bench_augment_on_a_tiny_config(capsys):
    bench.main(["augment", "--device", "cpu", "--resolution", "16", "--batch", "4", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "training iteration (oasis256 networks, fp32)" in out
    rows = [line for line in out.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
    assert len(rows) == 3 and all("% (3 calls per iteration)" in r for r in rows)


@pytest.mark.parametrize("masks", ["false", "true"])
def test_bench_train_on_a_tiny_config(capsys, masks):
    assert bench.main(["train", "--device", "cpu", "--preset", "demo", "--resolution=16", "--channel_base=256",
                       "--channel_max=16", "--batch=4", "--iters", "2", f"--masks={masks}",
                       "--phase_iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| demo")]
    assert len(rows) == 1
    for row in rows:
        img_s, gflop = float(row[2]), float(row[10])
        assert img_s > 0 and gflop > 0
    assert "FLOPs per image: G forward" in out


def test_bench_train_rejects_a_bad_override(capsys):
    assert bench.main(["train", "--device", "cpu", "--resolution=48"]) == 2
    assert "--resolution must be a power of two" in capsys.readouterr().err
