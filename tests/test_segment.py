"""The segmenter and the TSTR protocol (segment.py) on tiny fixtures."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import oasis
import segment


def separable(n: int, size: int = 16, seed: int = 0):
    """Images whose class is written in their intensity: blocks of labels 0..3 at four grey levels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, size // 4, size // 4), generator=g)
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2).to(torch.uint8)       # [N, R, R]
    images = (torch.tensor([10, 90, 170, 250])[labels.long()] + torch.randint(-8, 9, labels.shape, generator=g))
    return images.clamp(0, 255).to(torch.uint8)[:, None], labels


def write_pairs(root, split: str, images: torch.Tensor, labels: torch.Tensor, cases, slices: int):
    """Pairs [N, 1, R, R] / [N, R, R] written in the OASIS layout as `slices` consecutive slices of each case in
    `cases` (N = len(cases) * slices)."""
    img_dir, seg_dir = root / oasis.image_folder(split), root / oasis.mask_folder(split)
    img_dir.mkdir(parents=True)
    seg_dir.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        name = oasis.slice_name(cases[i // slices], i % slices)
        Image.fromarray(image[0].numpy()).save(img_dir / name)
        Image.fromarray(np.asarray(oasis.MASK_LEVELS, np.uint8)[label.numpy()]).save(seg_dir / oasis.mask_name(name))
    return root


def test_dice_scores_by_hand():
    t = torch.tensor([[[0, 1, 2, 3]]], dtype=torch.uint8)
    p = torch.tensor([[[0, 1, 3, 3]]], dtype=torch.uint8)
    d = segment.dice_scores(p, t)
    assert d["CSF"] == 1.0 and d["GM"] == 0.0 and d["WM"] == pytest.approx(2 / 3)
    assert d["mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert segment.dice_scores(t, t)["mean"] == 1.0


def test_unet_shapes_and_bad_sizes():
    net = segment.UNet(base=4, depth=2)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 18, 18))


@pytest.mark.slow
def test_unet_learns_a_separable_fixture():
    images, labels = separable(48)
    test_images, test_labels = separable(16, seed=1)
    model = segment.train_segmenter(images, labels, iters=150, batch=8, lr=3e-3, seed=0, base=8, depth=2)
    assert segment.evaluate(model, test_images, test_labels)["mean"] > 0.95


def test_training_is_deterministic_for_a_seed():
    images, labels = separable(8)
    a = segment.train_segmenter(images, labels, iters=3, batch=4, seed=5, base=4, depth=2)
    b = segment.train_segmenter(images, labels, iters=3, batch=4, seed=5, base=4, depth=2)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_tstr_writes_three_rows_ratio_and_agreement(tmp_path, capsys, make_oasis):
    real = make_oasis(tmp_path / "real", subjects=(2, 1, 1), slices=4, size=16)
    synthetic = make_oasis(tmp_path / "synthetic", subjects=(2, 0, 0), slices=4, size=16)
    code = segment.main(["tstr", "--real", str(real), "--synthetic", str(synthetic), "--outdir", str(tmp_path / "o"),
                         "--iters", "4", "--batch", "4", "--scarce_subjects", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(b) / (a) mean Dice:" in out and "agreement: (a) on synthetic pairs" in out and "(d)" not in out
    result = json.loads((tmp_path / "o" / "tstr.json").read_text())
    assert set(result["dice"]) == {"real", "synthetic", "real + synthetic"} and result["scarce"] is None
    assert result["seeds"] == [0] and len(result["per_seed"]) == 1 and result["per_seed"][0]["dice"] == result["dice"]
    assert result["pairs"] == {"real": 8, "synthetic": 8, "test": 4} and result["resolution"] == 16
    assert result["synthetic_over_real"] == pytest.approx(result["dice"]["synthetic"]["mean"] /
                                                          result["dice"]["real"]["mean"])
    # The synthetic folder holds the real training pairs, so both trainings (same seed) score the same, and the
    # agreement is (a) scored on its own training pairs.
    assert result["dice"]["synthetic"] == result["dice"]["real"] and result["synthetic_over_real"] == 1
    assert set(result["agreement"]) == set(result["dice"]["real"])
    assert (tmp_path / "o" / "tstr.md").read_text().count("|") > 20


def test_spread_is_mean_min_max_key_by_key():
    mean, lo, hi = segment.spread([{"a": 1.0, "b": 0.5}, {"a": 4.0, "b": 0.25}, {"a": 1.0, "b": 0.75}])
    assert mean == {"a": 2.0, "b": 0.5} and lo == {"a": 1.0, "b": 0.25} and hi == {"a": 4.0, "b": 0.75}
    assert segment.spread([{"a": 0.3}]) == ({"a": 0.3},) * 3


def test_scarce_subjects_are_the_first_case_ids_with_all_their_slices(tmp_path):
    files = ["keras/case_010_slice_0.nii.png", "case_002_slice_1.nii.png", "case_7_slice_0.nii.png",
             "notes.png", "case_002_slice_0.nii.png", "case_010_slice_1.nii.png", "case_031_slice_4.nii.png"]
    assert segment.scarce_subjects(files, 2, "R") == (["002", "7"], [1, 2, 4])             # numeric order, not names
    assert segment.scarce_subjects(files, 3, "R") == (["002", "7", "010"], [0, 1, 2, 4, 5])
    for n, found in ((4, "has 4 subjects"), (5, "has 4 subjects")):
        with pytest.raises(segment.dataset.DataError, match=f"--real R: its train split {found}; --scarce_subjects {n}"):
            segment.scarce_subjects(files, n, "R")
    with pytest.raises(segment.dataset.DataError, match="no case_XXX_slice_K file names"):
        segment.scarce_subjects(["a.png", "b.png"], 1, "R")


def tstr_folders(root):
    """A real set (train: subjects 9, 4, 7 of 4 slices; test: subject 20) and a synthetic one (subjects 1, 2),
    each from its own draw of the separable fixture; returns the folders and the pairs in file order."""
    real_train, real_test, synthetic = separable(12, seed=0), separable(4, seed=1), separable(8, seed=2)
    write_pairs(root / "real", "train", *real_train, cases=(9, 4, 7), slices=4)
    write_pairs(root / "real", "test", *real_test, cases=(20,), slices=4)
    write_pairs(root / "synthetic", "train", *synthetic, cases=(1, 2), slices=4)
    order = torch.tensor([4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3])         # files sorted: case 004, 007, 009
    return root / "real", root / "synthetic", (real_train[0][order], real_train[1][order]), real_test, synthetic


@pytest.mark.slow
def test_tstr_seeds_aggregate_per_seed_trainings(tmp_path, capsys):
    real, synthetic, train, test, synth = tstr_folders(tmp_path)
    code = segment.main(["tstr", "--real", str(real), "--synthetic", str(synthetic), "--outdir", str(tmp_path / "o"),
                         "--iters", "3", "--batch", "4", "--lr", "1e-2", "--seeds", "0-1,2", "--scarce_subjects", "0"])
    assert code == 0
    result = json.loads((tmp_path / "o" / "tstr.json").read_text())
    assert result["seeds"] == [0, 1, 2] and [r["seed"] for r in result["per_seed"]] == [0, 1, 2]
    # Each seed's rows again, trained here from the pairs in memory.
    both = (torch.cat([train[0], synth[0]]), torch.cat([train[1], synth[1]]))
    expected = []
    for seed in (0, 1, 2):
        models = {name: segment.train_segmenter(*pairs, iters=3, batch=4, lr=1e-2, seed=seed)
                  for name, pairs in (("real", train), ("synthetic", synth), ("real + synthetic", both))}
        expected.append({"dice": {name: segment.evaluate(m, *test) for name, m in models.items()},
                         "agreement": segment.evaluate(models["real"], *synth)})
    for got, want in zip(result["per_seed"], expected):
        assert got["dice"] == want["dice"] and got["agreement"] == want["agreement"]          # same seed, same bits
        assert got["synthetic_over_real"] == pytest.approx(want["dice"]["synthetic"]["mean"] /
                                                           want["dice"]["real"]["mean"])
    for name in ("real", "synthetic", "real + synthetic"):
        for key in ("CSF", "GM", "WM", "mean"):
            values = [e["dice"][name][key] for e in expected]
            assert result["dice"][name][key] == pytest.approx(sum(values) / 3)
            assert (result["dice_min"][name][key], result["dice_max"][name][key]) == pytest.approx((min(values),
                                                                                                    max(values)))
    values = [e["agreement"]["mean"] for e in expected]
    assert (result["agreement"]["mean"], result["agreement_min"]["mean"], result["agreement_max"]["mean"]) == \
        pytest.approx((sum(values) / 3, min(values), max(values)))
    # The seeds differ, so the spread is real; the ratio is the mean of the per-seed ratios, not a ratio of means.
    assert result["dice_min"]["real"]["mean"] < result["dice_max"]["real"]["mean"]
    ratios = [e["dice"]["synthetic"]["mean"] / e["dice"]["real"]["mean"] for e in expected]
    assert (result["synthetic_over_real"], result["synthetic_over_real_min"], result["synthetic_over_real_max"]) == \
        pytest.approx((sum(ratios) / 3, min(ratios), max(ratios)))
    assert result["real_plus_synthetic_beats_real"] == (result["dice"]["real + synthetic"]["mean"] >
                                                        result["dice"]["real"]["mean"])
    table = (tmp_path / "o" / "tstr.md").read_text()
    d = result["dice"]["real"]
    assert "seeds 0, 1, 2: mean (min-max over seeds)" in table
    assert f"{d['mean']:.3f} ({result['dice_min']['real']['mean']:.3f}-{result['dice_max']['real']['mean']:.3f})" \
        in table
    assert f"(b) / (a) mean Dice: {result['synthetic_over_real']:.3f} (min-max" in table
    assert table.strip() in capsys.readouterr().out


@pytest.mark.slow
def test_tstr_scarce_rows_train_on_the_chosen_subjects_only(tmp_path, capsys, monkeypatch):
    real, synthetic, train, test, synth = tstr_folders(tmp_path)
    trained = []
    train_segmenter = segment.train_segmenter

    def recording(images, labels, *args, **kwargs):
        trained.append((kwargs["desc"], images.clone(), labels.clone()))
        return train_segmenter(images, labels, *args, **kwargs)

    monkeypatch.setattr(segment, "train_segmenter", recording)
    code = segment.main(["tstr", "--real", str(real), "--synthetic", str(synthetic), "--outdir", str(tmp_path / "o"),
                         "--iters", "3", "--batch", "4", "--lr", "1e-2", "--seeds", "3,5", "--scarce_subjects", "2"])
    assert code == 0
    result = json.loads((tmp_path / "o" / "tstr.json").read_text())
    assert result["scarce"]["subjects"] == ["004", "007"] and result["scarce"]["pairs"] == 8
    assert "first 2" in result["scarce"]["rule"]
    few = (train[0][:8], train[1][:8])                                            # subjects 004 and 007
    sets = {"real": train, "synthetic": synth, "real + synthetic": (torch.cat([train[0], synth[0]]),
                                                                    torch.cat([train[1], synth[1]])),
            "scarce real": few, "scarce real + synthetic": (torch.cat([few[0], synth[0]]), torch.cat([few[1], synth[1]]))}
    # Every row once per seed, each on exactly its pairs.
    assert [desc for desc, _, _ in trained] == [f"{name} ({len(pairs[0])} pairs), seed {seed}"
                                                for seed in (3, 5) for name, pairs in sets.items()]
    for desc, images, labels in trained:
        images_want, labels_want = sets[desc.split(" (")[0]]
        assert torch.equal(images, images_want) and torch.equal(labels, labels_want), desc
    mean = {name: result["dice"][name]["mean"] for name in sets}
    assert mean["scarce real"] == pytest.approx(sum(r["dice"]["scarce real"]["mean"] for r in result["per_seed"]) / 2)
    assert result["scarce_plus_synthetic_beats_scarce"] == (mean["scarce real + synthetic"] > mean["scarce real"])
    out = capsys.readouterr().out
    assert "(d), (e): real subjects 004, 007, the first 2" in out
    assert "(d) 2 real subjects -> real test (8)" in out and "(e) 2 real subjects + synthetic -> real test (16)" in out
    assert "(e) 2 real subjects + synthetic " in out.split("(b) / (a) mean Dice:")[1]


def test_pooled_pairs_draw_the_real_share_whatever_the_set_sizes():
    real = (torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8))
    synth = (torch.ones(29, 1, 4, 4, dtype=torch.uint8), torch.ones(29, 4, 4, dtype=torch.uint8))
    images, labels, weights = segment.pooled(real, synth)
    assert weights is None and torch.equal(images[:3], real[0]) and torch.equal(labels[3:], synth[1])
    images, labels, weights = segment.pooled(real, synth, real_share=0.25)
    assert len(weights) == 32 and weights[:3].sum().item() == pytest.approx(0.25)
    assert weights[3:].sum().item() == pytest.approx(0.75) and len(set(weights[3:].tolist())) == 1
    draws = torch.multinomial(weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert (draws < 3).float().mean().item() == pytest.approx(0.25, abs=0.01)     # 3 of 32 pairs, a quarter of draws
    # A pair of weight 0 is never trained on: trained on one class's pairs only, a segmenter predicts that class.
    for cls, only in ((0, (weights[:3] > 0).double()), (1, (weights[3:] > 0).double())):
        w = torch.cat([only, torch.zeros(32 - len(only), dtype=torch.float64)]) if cls == 0 else \
            torch.cat([torch.zeros(3, dtype=torch.float64), only])
        model = segment.train_segmenter(images * 200, labels, iters=40, batch=8, lr=1e-2, seed=0, weights=w,
                                        base=4, depth=2)
        assert (segment.segment(model, images * 200) == cls).float().mean() > 0.9, cls


@pytest.mark.slow
def test_tstr_real_share_weights_the_pooled_rows_and_rows_picks_what_is_trained(tmp_path, capsys, monkeypatch):
    real, synthetic, train, test, synth = tstr_folders(tmp_path)
    weights = {}
    train_segmenter = segment.train_segmenter

    def recording(images, labels, *args, **kwargs):
        weights[kwargs["desc"].split(" (")[0]] = kwargs["weights"]
        return train_segmenter(images, labels, *args, **kwargs)

    monkeypatch.setattr(segment, "train_segmenter", recording)
    code = segment.main(["tstr", "--real", str(real), "--synthetic", str(synthetic), "--outdir", str(tmp_path / "o"),
                         "--iters", "3", "--batch", "4", "--scarce_subjects", "2", "--real_share", "0.5",
                         "--rows", "e,c,d"])
    assert code == 0
    assert list(weights) == ["real + synthetic", "scarce real", "scarce real + synthetic"]   # protocol order
    assert weights["scarce real"] is None
    n_real, n_synth = len(train[0]), len(synth[0])
    for name, n_few in (("real + synthetic", n_real), ("scarce real + synthetic", 8)):
        w = weights[name]
        assert len(w) == n_few + n_synth and w[:n_few].sum().item() == pytest.approx(0.5), name
    result = json.loads((tmp_path / "o" / "tstr.json").read_text())
    assert result["real_share"] == 0.5 and result["rows"] == ["c", "d", "e"] and set(result["dice"]) == set(weights)
    assert result["agreement"] is None and result["synthetic_over_real"] is None   # they need rows a and b
    assert result["real_plus_synthetic_beats_real"] is None
    assert result["scarce_plus_synthetic_beats_scarce"] == (result["dice"]["scarce real + synthetic"]["mean"] >
                                                            result["dice"]["scarce real"]["mean"])
    out = capsys.readouterr().out
    assert "drawn from the real ones with probability 0.5" in out and "(a) real" not in out
    assert "agreement" not in out and "(b) / (a)" not in out and "(e) 2 real subjects + synthetic " in out


def test_errors_are_one_line(tmp_path, capsys, make_oasis):
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(plain / "a.png")
    real = make_oasis(tmp_path / "real", subjects=(1, 1, 1), slices=2, size=16)
    cases = [(["tstr", "--real", str(real), "--synthetic", str(plain), "--outdir", str(tmp_path / "o")], 1,
              "no mask folder"),
             (["train", "--train", str(tmp_path / "nowhere"), "--test", str(real)], 1, "--train"),
             (["train", "--train", str(real), "--test", str(real), "--iters", "0"], 2, "--iters must be >= 1"),
             (["train", "--train", str(real), "--test", str(real), "--resolution", "20"], 2, "power of two"),
             (["tstr", "--real", str(real)], 2, "required"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o")], 1,
              "has 1 subjects; --scarce_subjects 3 must be fewer (or 0"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--scarce_subjects", "-1"], 2, "--scarce_subjects must be >= 0"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--seeds", "0,x"], 2, "'x' is not a seed"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--seeds", "0-2,1"], 2, "a seed is repeated"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--real_share", "1"], 2, "--real_share must be between 0 and 1"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--rows", "a,f"], 2, "give letters from a,b,c,d,e"),
             (["tstr", "--real", str(real), "--synthetic", str(real), "--outdir", str(tmp_path / "o"),
               "--rows", "d", "--scarce_subjects", "0"], 2, "rows d and e need --scarce_subjects > 0")]
    for args, code, message in cases:
        assert segment.main(args) == code, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()           # a refused tstr leaves no empty --outdir behind
