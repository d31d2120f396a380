"""Label-conditioned training and generation (--cond, c_dim): labels from OASIS names or dataset.json,
bit-exact resume, predict.py's --class / --label / --slice and its sweep mode."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config
from modules import Discriminator as modules_Discriminator
from modules import Generator as modules_Generator
import dataset
import metrics
import predict
import runs


@pytest.fixture(scope="module")
def oasis(tmp_path_factory, make_oasis):
    return make_oasis(tmp_path_factory.mktemp("cond") / "oasis", subjects=(3, 1, 1), slices=4, size=16)


def test_slice_positions_from_oasis_names(oasis):
    data = dataset.ImageDataset(oasis, resolution=16, mirror=True, log=lambda m: None, cond="slice")
    assert data.c_dim == 1 and data.label_names == ["slice_position"]
    by_name = {Path(f).name: float(v) for f, v in zip(data.files, data.labels[:, 0])}
    assert by_name["case_001_slice_0.nii.png"] == 0 and by_name["case_001_slice_3.nii.png"] == 1
    assert by_name["case_002_slice_1.nii.png"] == pytest.approx(1 / 3)
    n = data.num_images
    assert torch.equal(data.label_batch([1, n + 1]), data.label_batch([1, 1]))         # flipped copy: same label


def test_labels_from_dataset_json(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(root / f"{i}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i % 3] for i in range(4)]}))
    data = dataset.ImageDataset(root, resolution=16, log=lambda m: None, cond="json")
    assert data.label_names == ["class_0", "class_1", "class_2"]
    assert data.labels.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    (root / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", [i, 2.5]] for i in range(4)],
                                                   "label_names": ["age", "cdr"]}))
    data = dataset.ImageDataset(root, resolution=16, log=lambda m: None, cond="json")
    assert data.label_names == ["age", "cdr"] and data.labels[3].tolist() == [3, 2.5]
    assert config.data_label_range(data.labels) == "0:3,2.5:3.5"     # outside [0, 1]: min:max (constant: +1)
    assert config.data_label_range(np.array([[0.1], [0.9]])) == ""   # within [0, 1]: used as given
    (root / "dataset.json").write_text(json.dumps({"labels": [["0.png", 1]]}))
    with pytest.raises(dataset.DataError, match=r"dataset.json: no label for 1.png"):
        dataset.ImageDataset(root, resolution=16, log=lambda m: None, cond="json")
    with pytest.raises(dataset.DataError, match="--cond=slice needs OASIS names"):
        dataset.ImageDataset(root, resolution=16, log=lambda m: None, cond="slice")


@pytest.mark.slow
def test_a_conditional_run_resumes_bit_exactly_and_stores_its_labels(oasis, tmp_path, tiny_args, run_train, weights,
                                                                     assert_same_weights):
    args = tiny_args(oasis, tmp_path / "runs", cond="slice", metrics_num=8)
    full = run_train(args + ["--kimg=0.12"])
    part = run_train(args + ["--kimg=0.06"])
    run_train([f"--resume={part}", "--kimg=0.12"])
    assert_same_weights(weights(full / "checkpoint.pt"), weights(part / "checkpoint.pt"))
    saved = weights(full / "checkpoint.pt")["config"]
    assert (saved["cond"], saved["c_dim"], saved["label_names"]) == ("slice", 1, "slice_position")
    assert saved["label_encoding"] == "fourier"                       # "auto" is stored resolved
    G = runs.load_generator(full, torch.device("cpu"))[0]
    assert G.c_dim == 1 and G.mapping.embed.weight.shape[1] == 8      # sin / cos at 4 frequencies
    with pytest.raises(config.ConfigError, match="--cond cannot change when resuming"):
        run_train([f"--resume={part}", "--cond=none"])


@pytest.fixture(scope="module")
def slice_run(oasis, tmp_path_factory, tiny_args, run_train):
    return run_train(tiny_args(oasis, tmp_path_factory.mktemp("cond_run") / "runs", cond="slice", kimg=0.02,
                               metrics_num=0))


def test_predict_slice_label_and_sweep(slice_run, tmp_path, capsys):
    base = ["images", "--checkpoint", str(slice_run), "--seeds", "0-1", "--outdir"]
    assert predict.main(base + [str(tmp_path / "low"), "--slice", "0"]) == 0
    assert predict.main(base + [str(tmp_path / "high"), "--slice", "1"]) == 0
    assert predict.main(base + [str(tmp_path / "lab"), "--label", "1"]) == 0
    low, high, lab = (np.asarray(Image.open(tmp_path / d / "seed0000.png")) for d in ("low", "high", "lab"))
    assert not np.array_equal(low, high) and np.array_equal(high, lab)
    assert predict.main(["sweep", "--checkpoint", str(slice_run), "--seeds", "0-2", "--positions", "5",
                         "--outdir", str(tmp_path / "sw")]) == 0
    assert "columns: slice positions 0.00, 0.25, 0.50, 0.75, 1.00" in capsys.readouterr().out
    with Image.open(tmp_path / "sw" / "sweep.png") as im:
        assert im.size == (5 * 16, 3 * 16)
    assert predict.main(["--checkpoint", str(slice_run), "--sweep", "--seeds", "0", "--steps", "3",   # earlier
                         "--sweep_range",
                         "0.1,0.9", "--outdir", str(tmp_path / "sw2")]) == 0
    assert "columns: slice positions 0.10, 0.50, 0.90" in capsys.readouterr().out
    assert predict.main(["sweep", "--checkpoint", str(slice_run), "--sweep_range", "0.9,0.1"]) == 2
    assert "argument --sweep_range: must be lo,hi" in capsys.readouterr().err
    for extra, message in ((["--label", "0.1,0.2"], "takes 1 value(s) (slice_position), got 2"),
                           (["--class", "1"], "this model's labels are slice_position; use --label or --slice"),
                           (["--slice", "1.5"], "give a position in [0, 1]"),
                           (["--slice", "0.5", "--label", "0.5"], "--label: not allowed with argument --slice")):
        assert predict.main(base + [str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_unconditional_models_refuse_labels(images, tmp_path, capsys, tiny_args, run_train):
    run_dir = run_train(tiny_args(images, tmp_path / "runs", kimg=0.02, metrics_num=0))
    assert predict.main(["--checkpoint", str(run_dir), "--slice", "0.5"]) == 2
    assert "this model is unconditional" in capsys.readouterr().err
    assert predict.main(["sweep", "--checkpoint", str(run_dir)]) == 2
    assert "sweep needs a model conditioned" in capsys.readouterr().err


def label_part(G, c) -> torch.Tensor:
    """What the first mapping layer reads of the label: normalize(embed(features of c)). [N, w_dim]"""
    return G.mapping._input(torch.zeros(len(c), G.z_dim) + 1, c)[:, G.z_dim:]


def test_fourier_labels_keep_slice_positions_apart():
    torch.manual_seed(0)
    kw = dict(z_dim=16, w_dim=32, img_resolution=8, channel_base=64, channel_max=16, mapping_layers=2, c_dim=1)
    positions = torch.tensor([[0.1], [0.3], [0.6], [0.9]])
    official = label_part(modules_Generator(**kw), positions)
    # The official embedding of one value v is v * e (its bias starts at 0), and the 2nd-moment normalization
    # divides that by its size: every positive position reaches the network as the same vector.
    assert torch.allclose(official, official[:1].expand_as(official), atol=1e-5)
    fourier = label_part(modules_Generator(label_encoding="fourier", **kw), positions)
    cos = fourier @ fourier.T / fourier.shape[1]                     # rows have unit second moment
    assert cos.diagonal().allclose(torch.ones(4), atol=1e-5)
    assert (cos - torch.eye(4)).abs().max() < 0.9                    # distinct directions for distinct positions
    near = label_part(modules_Generator(label_encoding="fourier", **kw), torch.tensor([[0.5], [0.52]]))
    assert (near[0] - near[1]).abs().max() > 0                       # and it is smooth, not binned
    D = modules_Discriminator(img_resolution=8, channel_base=64, channel_max=16, mapping_layers=2, c_dim=1,
                              label_encoding="fourier")
    assert D.mapping.embed.weight.shape[1] == 8
    # A label outside [0, 1] (age 60-90) is mapped to [0, 1] by its range before the features.
    G = modules_Generator(label_encoding="fourier", **kw)
    aged = modules_Generator(label_encoding="fourier", label_range=[(60, 90)], **kw)
    aged.load_state_dict(G.state_dict())                              # the range is not in the state dict
    assert torch.allclose(label_part(aged, torch.tensor([[75.0], [90.0]])), label_part(G, torch.tensor([[0.5], [1.0]])))
    with pytest.raises(ValueError, match="label_range needs"):
        modules_Generator(label_encoding="fourier", label_range=[(1, 1)], **kw)
    with pytest.raises(ValueError, match="label encoding must be one of none, fourier"):
        modules_Generator(label_encoding="sine", **kw)


def test_label_encoding_resolution_and_old_configs():
    assert config.label_encoding(config.TrainConfig(label_names="slice_position")) == "fourier"
    assert config.label_encoding(config.TrainConfig(label_names="slice_position,age")) == "fourier"
    assert config.label_encoding(config.TrainConfig(label_names="class_0,class_1")) == "none"
    assert config.label_encoding(config.TrainConfig(label_names="class_0,class_1", label_encoding="fourier")) \
        == "fourier"
    old = dataclasses.asdict(config.TrainConfig(cond="slice", c_dim=1, label_names="slice_position"))
    del old["label_encoding"]                                          # saved before the option existed
    assert config.from_dict(old).label_encoding == "none"
    with pytest.raises(config.ConfigError, match="--label_encoding must be auto, none or fourier"):
        config.validate(config.TrainConfig(label_encoding="sin"))
    assert config.label_ranges(config.TrainConfig(c_dim=2, label_range="60:90,0:2")) == [(60, 90), (0, 2)]
    with pytest.raises(config.ConfigError, match="--label_range must be lo:hi"):
        config.validate(config.TrainConfig(c_dim=1, label_range="90:60"))
    with pytest.raises(config.ConfigError, match="--label_range is set from the data's labels"):
        config.validate(config.TrainConfig(label_range="60:90"))           # typed for a new run


def test_a_covariate_outside_0_1_is_ranged_and_stored(tmp_path, tiny_args, run_train, weights):
    root = tmp_path / "ages"
    root.mkdir()
    ages = [60, 70, 80, 90]
    for i, age in enumerate(ages):
        Image.fromarray(np.full((16, 16), 40 + 50 * i, np.uint8)).save(root / f"{i}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", [a]] for i, a in enumerate(ages)],
                                                   "label_names": ["age"]}))
    run_dir = run_train(tiny_args(root, tmp_path / "runs", cond="json", kimg=0.02, metrics_num=0, mirror=False))
    saved = weights(run_dir / "checkpoint.pt")["config"]
    assert (saved["label_names"], saved["label_encoding"], saved["label_range"]) == ("age", "fourier", "60:90")
    G = runs.load_generator(run_dir, torch.device("cpu"))[0]
    assert G.mapping.label_range == [(60.0, 90.0)]
    base = ["images", "--checkpoint", str(run_dir), "--seeds", "0", "--outdir"]
    assert predict.main(base + [str(tmp_path / "young"), "--label", "60"]) == 0
    assert predict.main(base + [str(tmp_path / "old"), "--label", "90"]) == 0
    young, old = (np.asarray(Image.open(tmp_path / d / "seed0000.png")) for d in ("young", "old"))
    assert not np.array_equal(young, old)


def test_scores_of_a_slice_model_report_the_position_error(slice_run, oasis, tmp_path, capsys):
    assert metrics.position_error([0.1, 0.5, 1.0], [0.2, 0.5, 0.6]) == pytest.approx(0.5 / 3)
    out = tmp_path / "score"
    assert predict.main(["score", "--checkpoint", str(slice_run), "--real", str(oasis), "--num", "8",
                         "--outdir", str(out)]) == 0
    assert "slice position error (asked vs real)" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    assert scores["labels"].startswith("those of random reference slices")
    # Positions given on the command line are used as asked: at position 0 the error is the mean position of the
    # nearest real slices (slice K of 4 lies at K / 3), and the real slices' own error does not change.
    assert predict.main(["score", "--checkpoint", str(slice_run), "--real", str(oasis), "--num", "8", "--slice",
                         "0", "--outdir", str(tmp_path / "low")]) == 0
    low = json.loads((tmp_path / "low" / "scores.json").read_text())
    assert "labels" not in low and low["real_position_error"] == scores["real_position_error"]
    found = [int(p["real"].split("_slice_")[1].split(".")[0]) / 3 for p in low["closest_pairs"]]
    assert len(found) == 8 and low["position_error"] == pytest.approx(np.mean(found))


def _official_fc(x, weight, bias, lr_mul, activation=False):
    """One FC layer as the official code computes it: x W^T * lr_mul / sqrt(in) + b * lr_mul (lrelu * sqrt 2)."""
    y = x @ (weight * lr_mul / weight.shape[1] ** 0.5).T + bias * lr_mul
    return torch.nn.functional.leaky_relu(y, 0.2) * 2 ** 0.5 if activation else y


def _normalize(x):
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


@pytest.mark.parametrize("net", ["G", "D"])
def test_label_embedding_is_the_official_lr_1_layer(net):
    """normalize(z) ++ normalize(W c / sqrt(c_dim) + b), then FC layers at lr 0.01: the official conditional
    mapping, by hand, with known embedding weights (G's mapping, and D's label mapping without z)."""
    torch.manual_seed(0)
    kw = dict(img_resolution=8, channel_base=64, channel_max=16, mapping_layers=2, c_dim=3, label_encoding="none")
    model = modules_Generator(z_dim=16, w_dim=16, **kw) if net == "G" else modules_Discriminator(**kw)
    mapping = model.mapping
    with torch.no_grad():
        mapping.embed.weight.copy_(torch.arange(48.0).reshape(16, 3) / 10 - 2)
        mapping.embed.bias.copy_(torch.linspace(-1, 1, 16))
    c = torch.tensor([[0.2, 0.0, 1.0], [0.9, 0.5, 0.0]])
    z = torch.randn(2, 16)
    embedded = _normalize(c @ mapping.embed.weight.T / 3 ** 0.5 + mapping.embed.bias)   # lr multiplier 1
    x = torch.cat([_normalize(z), embedded], dim=1) if net == "G" else embedded
    for layer in mapping.layers:
        x = _official_fc(x, layer.weight, layer.bias, 0.01, activation=True)
    got = mapping(z, c)[:, 0] if net == "G" else mapping(None, c)
    assert torch.allclose(got, x, rtol=1e-5, atol=1e-6)
    # The embedding's bias is what breaks "every positive position is one vector": at lr 1 it is the bias itself.
    assert torch.allclose(mapping.embed.bias * mapping.embed.bias_gain, torch.linspace(-1, 1, 16))


def _as_old_format(state: dict, version: int = 2) -> dict:
    """A checkpoint as versions before runs.EMBED_VERSION stored it: the embedding scaled for lr 0.01."""
    old = dict(state, version=version)
    for key in runs.NETWORK_KEYS:
        old[key] = {name: t / runs.OLD_EMBED_LR_MUL if name in runs.EMBED_KEYS else t for name, t in state[key].items()}
    return old


def test_an_old_conditional_checkpoint_generates_the_same_images(slice_run, tmp_path, monkeypatch, weights):
    state = weights(slice_run / "checkpoint.pt")
    old_file = tmp_path / "old.pt"
    torch.save(_as_old_format(state), old_file)
    z, c = torch.randn(4, 32), torch.tensor([[0.1], [0.4], [0.6], [0.9]])
    # What the old code made of that file: the embedding at lr 0.01 reading the stored tensors as they are.
    import modules
    with monkeypatch.context() as m:
        m.setattr(modules, "EMBED_LR_MUL", runs.OLD_EMBED_LR_MUL)
        G_old = runs.build_networks(runs.checkpoint_config(state, old_file))[0].eval()
        G_old.load_state_dict(torch.load(old_file, weights_only=True)["G_ema"])
    G_new = runs.load_generator(old_file, torch.device("cpu"))[0]
    assert G_new.mapping.embed.weight_gain == pytest.approx(G_new.mapping.embed.weight.shape[1] ** -0.5)  # lr 1 now
    with torch.no_grad():
        before = G_old(z[:, :G_old.z_dim], c, noise_mode="const")
        after = G_new(z[:, :G_new.z_dim], c, noise_mode="const")
    assert (before - after).abs().max() < 1e-5
    # The normalization after the embedding hides its scale in the images (up to its epsilon), so check the
    # embedding itself: rescaled on load it computes what the old layer did; the file read as version 3
    # (no rescale) would compute 100x that.
    features = torch.rand(4, G_new.mapping.embed.weight.shape[1])
    torch.save(dict(_as_old_format(state), version=runs.CHECKPOINT_VERSION), tmp_path / "raw.pt")
    G_raw = runs.load_generator(tmp_path / "raw.pt", torch.device("cpu"))[0]
    with torch.no_grad():
        old_embed, new_embed = G_old.mapping.embed(features), G_new.mapping.embed(features)
        assert torch.allclose(new_embed, old_embed, rtol=1e-5, atol=1e-7)
        assert torch.allclose(G_raw.mapping.embed(features), old_embed / runs.OLD_EMBED_LR_MUL, rtol=1e-4, atol=1e-6)


def test_resuming_an_old_conditional_run_is_refused_in_one_line(slice_run, tmp_path, weights):
    state = weights(slice_run / "checkpoint.pt")
    run = tmp_path / "old_run"
    run.mkdir()
    torch.save(_as_old_format(state), run / "checkpoint.pt")
    with pytest.raises(runs.RunError, match=r"trained the label embedding at lr multiplier 0\.01 .* --init_from"):
        runs.load_for_resume(str(run), {})
    # An old unconditional checkpoint has no embedding: nothing to rescale, nothing refused for it.
    plain = dict(state, version=2, **{key: {n: t for n, t in state[key].items() if n not in runs.EMBED_KEYS}
                                      for key in runs.NETWORK_KEYS})
    assert not runs.old_embedding(plain) and runs.old_embedding(_as_old_format(state))


def test_conditional_parameter_counts_at_the_official_auto_depths():
    """256 px, 1 channel, c_dim 1, the official "auto" config: G's mapping 2 layers, D's label mapping 8."""
    from modules import count_params
    cfg = config.TrainConfig(**dict(config.PRESETS["oasis256"], c_dim=1, cond="json", label_encoding="none"))
    assert (cfg.mapping_layers, cfg.d_mapping_layers) == (2, 8)
    G, D = runs.build_networks(cfg)
    assert (count_params(G), count_params(D)) == (23_449_684, 26_365_376)


def test_a_checkpoint_with_one_shared_mapping_depth_loads_as_trained(tmp_path):
    """Configs saved before d_mapping_layers existed gave D's label mapping G's depth."""
    cfg = config.TrainConfig(resolution=16, channel_base=128, channel_max=16, z_dim=16, w_dim=16, mapping_layers=2,
                             d_mapping_layers=2, c_dim=1, cond="slice", label_encoding="fourier", batch=4,
                             mbstd_group=2)
    G, D = runs.build_networks(cfg)
    saved = dataclasses.asdict(cfg)
    del saved["d_mapping_layers"]
    path = tmp_path / "old.pt"
    torch.save({"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION, "config": saved,
                "G": G.state_dict(), "D": D.state_dict(), "G_ema": G.state_dict()}, path)
    state = runs.load_checkpoint(path)
    loaded = runs.checkpoint_config(state, path)
    assert (loaded.mapping_layers, loaded.d_mapping_layers) == (2, 2)
    G2, D2 = runs.build_networks(loaded)
    runs.load_networks_into({"G": G2, "D": D2}, state, path)
    z, c, img = torch.randn(4, 16), torch.tensor([[0.2], [0.4], [0.6], [0.8]]), torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(G2.eval()(z, c, noise_mode="const"), G.eval()(z, c, noise_mode="const"))
        assert torch.equal(D2(img, c), D(img, c))
