"""Tissue segmentation of brain slices, and the test of synthetic pairs that it makes possible: "train on
synthetic, test on real" (TSTR).

Owns a compact 2D U-Net (Ronneberger et al. 2015) in plain torch, its training on image + mask pairs, the
Dice score per tissue class, and the TSTR protocol. Does not own reading the pairs (dataset.py) or making
synthetic ones (train.py --masks, then predict.py --export).

    python segment.py train --train data/demo --test data/demo              # train split -> test split
    python segment.py tstr --real data/demo --synthetic synth/ --outdir tstr/ --seeds 0-2

TSTR trains the same network, for the same iterations and seed, on each of these sets and scores each on the
real test split: (a) the real train split (the baseline), (b) the synthetic pairs only, (c) both, and, for
when labelled scans are few, (d) a few real training subjects alone (--scarce_subjects, the first case ids
in sorted order) and (e) the same subjects + the synthetic pairs. It also reports agreement: the
real-trained segmenter (a) run on the synthetic images and scored against the generated masks (high when
the generated masks fit the generated anatomy). With several --seeds every row is trained once per seed and
reported as the mean and min-max over seeds.
Dice is computed over all pixels of a set at once, per class (CSF, grey matter, white matter), and their
mean; the background class is not scored.
"""

import json
import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import config as config_lib
import dataset
import errors
import oasis
import predict
import runs

CLASSES = ("background", "CSF", "GM", "WM")        # OASIS mask labels 0..3
SCORED = (1, 2, 3)                                 # Dice is reported for the tissue classes only


# ----------------------------------------------------------------------------------------------
# The network

class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class UNet(nn.Module):
    """image [N, in_channels, R, R] -> class logits [N, classes, R, R]; R divisible by 2^depth."""

    def __init__(self,
                 in_channels: int = 1,          # image channels
                 classes: int = 4,              # output classes (OASIS: background, CSF, GM, WM)
                 base: int = 16,                # channels of the first level, doubled at each level down
                 depth: int = 3):               # 2x downsamplings
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([ConvBlock(in_channels, widths[0])] +
                                  [ConvBlock(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([ConvBlock(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"UNet of depth {self.depth} needs sizes divisible by {2 ** self.depth}, "
                             f"got {list(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)                                          # [N, widths[i], R / 2^i, R / 2^i]
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


# ----------------------------------------------------------------------------------------------
# Scores

def dice_scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Dice 2|P & T| / (|P| + |T|) per scored class over all pixels of label maps [N, R, R], and their mean.
    A class absent from both is scored 1."""
    out = {}
    for k in SCORED:
        p, t = pred == k, target == k
        denom = p.sum().item() + t.sum().item()
        out[CLASSES[k]] = 1.0 if denom == 0 else 2 * (p & t).sum().item() / denom
    out["mean"] = float(np.mean([out[CLASSES[k]] for k in SCORED]))
    return out


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice of the tissue classes over the batch (Milletari et al. 2016)."""
    probs = logits.float().softmax(dim=1)[:, 1:]                             # [N, K-1, R, R]
    onehot = F.one_hot(target.long(), probs.shape[1] + 1).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


# ----------------------------------------------------------------------------------------------
# Training and inference

def train_segmenter(images: torch.Tensor, labels: torch.Tensor, iters: int = 2000, batch: int = 16,
                    lr: float = 1e-3, seed: int = 0, device="cpu", desc: str = "segmenter", weights=None,
                    **net) -> UNet:
    """A U-Net trained on uint8 images [N, C, R, R] and labels [N, R, R] with cross-entropy + soft Dice, Adam,
    random batches and left-right flips, all drawn from `seed` (the global RNG is not touched). weights [N]:
    how likely each pair is drawn into a batch (None = all alike)."""
    from tqdm import tqdm
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):                    # built on the CPU, from `seed`
        torch.random.default_generator.manual_seed(seed)
        model = UNet(in_channels=images.shape[1], **net).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters)
    for _ in tqdm(range(iters), desc=desc, unit="it", file=sys.stderr, dynamic_ncols=True, mininterval=1):
        idx = (torch.randint(len(images), (batch,), generator=gen) if weights is None
               else torch.multinomial(weights, batch, replacement=True, generator=gen))
        x, y = dataset.to_float(images[idx]), labels[idx].long()
        flip = torch.rand(batch, generator=gen) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def segment(model: UNet, images: torch.Tensor, batch: int = 64, device="cpu") -> torch.Tensor:
    """uint8 images [N, C, R, R] -> uint8 labels [N, R, R]."""
    model.eval()
    out = [model(dataset.to_float(chunk).to(device)).argmax(dim=1).to(torch.uint8).cpu() for chunk in images.split(batch)]
    return torch.cat(out)


def evaluate(model: UNet, images: torch.Tensor, labels: torch.Tensor, device="cpu") -> dict:
    return dice_scores(segment(model, images, device=device), labels)


def load_pairs(path, split: str, resolution: int, option: str, log=None):
    """(uint8 images [N, 1, R, R], uint8 labels [N, R, R], the N file names) of one split of an OASIS-layout
    folder."""
    try:
        data = dataset.ImageDataset(path, split=split, resolution=resolution, with_masks=True, mirror=False,
                                    log=log or (lambda m: print(m, file=sys.stderr)))
    except dataset.DataError as e:
        raise dataset.DataError(str(e).replace("--data", option)) from None
    return torch.from_numpy(data.images), torch.from_numpy(data.masks), data.files


def native_resolution(path, option: str) -> int:
    """The size of the first training image of an OASIS-layout folder (what --resolution 0 means)."""
    try:
        with dataset.open_image(dataset.find_source(path, "train").files[0]) as im:
            size = min(im.size)
    except dataset.DataError as e:
        raise dataset.DataError(str(e).replace("--data", option)) from None
    try:
        config_lib.check_resolution(size, option)
    except config_lib.ConfigError:
        raise config_lib.ConfigError(f"{option} {path}: images of {size} px; give --resolution (a power of two)") \
            from None
    return size


# ----------------------------------------------------------------------------------------------
# The TSTR protocol

ROWS = {"real": "a", "synthetic": "b", "real + synthetic": "c", "scarce real": "d", "scarce real + synthetic": "e"}
SCARCE_RULE = "the first {n} of the real train split's case ids in sorted order"


def scarce_subjects(files, n: int, path, option: str = "--real") -> tuple:
    """(case ids, indices): the first n subjects of a split in sorted case id order (the case id of an OASIS
    name case_XXX_slice_K is its subject) and the indices in `files` of all their slices."""
    cases = [oasis.case_and_slice(f) for f in files]
    ids = sorted({c[0] for c in cases if c}, key=int)
    if len(ids) <= n:
        found = f"{len(ids)} subjects" if ids else "no case_XXX_slice_K file names"
        raise dataset.DataError(f"{option} {path}: its train split has {found}; --scarce_subjects {n} must be fewer "
                                f"(or 0 to leave rows (d) and (e) out)")
    chosen = ids[:n]
    return chosen, [i for i, c in enumerate(cases) if c and c[0] in chosen]


def pooled(real: tuple, synthetic: tuple, real_share=None) -> tuple:
    """(images, labels, weights) of real and synthetic pairs together: with real_share, a batch draws each pair
    from the real ones with that probability (weights [N]); without it every pair is alike (weights None)."""
    (a, a_labels), (b, b_labels) = real, synthetic
    weights = None
    if real_share is not None:
        weights = torch.cat([torch.full((len(a),), real_share / len(a), dtype=torch.float64),
                             torch.full((len(b),), (1 - real_share) / len(b), dtype=torch.float64)])
    return torch.cat([a, b]), torch.cat([a_labels, b_labels]), weights


def parse_rows(text: str, scarce_subjects: int) -> list:
    """--rows "a,c,e" -> ["a", "c", "e"] in protocol order; (d) and (e) are dropped silently by
    --scarce_subjects 0 only when --rows was left at its default."""
    rows = [r.strip().lower() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS.values()]
    if bad or not rows:
        raise config_lib.ConfigError(f"--rows {text!r}: give letters from a,b,c,d,e separated by commas")
    if not scarce_subjects:
        if text != "a,b,c,d,e" and {"d", "e"} & set(rows):
            raise config_lib.ConfigError(f"--rows {text}: rows d and e need --scarce_subjects > 0")
        rows = [r for r in rows if r not in "de"]
        if not rows:
            raise config_lib.ConfigError("--rows: nothing left to train")
    return [r for r in ROWS.values() if r in rows]


def spread(per_seed: list) -> tuple:
    """Dicts of numbers with the same keys, one per seed -> their (mean, min, max) over seeds, key by key."""
    return tuple({k: float(f([d[k] for d in per_seed])) for k in per_seed[0]} for f in (np.mean, np.min, np.max))


def tstr_seed(sets: dict, test: tuple, synthetic: tuple, seed: int, args) -> dict:
    """One seed of the protocol: a segmenter trained on each set of (images, labels, weights) and scored on
    the real test pairs; the one trained on "real" also scored on the synthetic pairs (the agreement)."""
    dice, agreement = {}, None
    for name, (images, labels, weights) in sets.items():
        model = train_segmenter(images, labels, args.iters, args.batch, args.lr, seed, args.device,
                                desc=f"{name} ({len(images)} pairs), seed {seed}", weights=weights)
        dice[name] = evaluate(model, *test, args.device)
        if name == "real":
            agreement = evaluate(model, *synthetic, args.device)
    ratio = dice["synthetic"]["mean"] / max(dice["real"]["mean"], 1e-12) if {"real", "synthetic"} <= set(dice) else None
    return {"seed": seed, "dice": dice, "agreement": agreement, "synthetic_over_real": ratio}


# ----------------------------------------------------------------------------------------------
# Commands

def run_train(args) -> dict:
    resolution = args.resolution or native_resolution(args.train, "--train")
    images, labels, _ = load_pairs(args.train, args.train_split, resolution, "--train")
    test_images, test_labels, _ = load_pairs(args.test, args.test_split, resolution, "--test")
    model = train_segmenter(images, labels, args.iters, args.batch, args.lr, args.seed, args.device,
                            desc=f"training on {len(images)} pairs")
    scores = evaluate(model, test_images, test_labels, args.device)
    result = {"train": str(args.train), "train_split": args.train_split, "train_pairs": len(images),
              "test": str(args.test), "test_split": args.test_split, "test_pairs": len(test_images),
              "resolution": resolution, "iters": args.iters, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "dice": scores}
    outdir = runs.check_writable(args.outdir)
    runs.atomic_write(outdir / "segmenter.pt", lambda tmp: torch.save(model.state_dict(), tmp))
    runs.write_text(outdir / "segment.json", json.dumps(result, indent=1) + "\n")
    print(format_rows([("trained on " + args.train_split, scores)]))
    print(f"wrote segmenter.pt and segment.json to {outdir}")
    return result


def run_tstr(args) -> dict:
    """Rows (a)-(e) trained once per seed and scored on the real test split, the agreement, their mean and
    min-max over seeds; tstr.json (per seed and aggregate) and tstr.md (the table)."""
    resolution = args.resolution or native_resolution(args.synthetic, "--synthetic")
    real, real_labels, real_files = load_pairs(args.real, "train", resolution, "--real")
    test, test_labels, _ = load_pairs(args.real, args.test_split, resolution, "--real")
    synth, synth_labels, _ = load_pairs(args.synthetic, "train", resolution, "--synthetic")
    sets = {"real": (real, real_labels, None), "synthetic": (synth, synth_labels, None),
            "real + synthetic": pooled((real, real_labels), (synth, synth_labels), args.real_share)}
    scarce = None
    if args.scarce_subjects:
        subjects, idx = scarce_subjects(real_files, args.scarce_subjects, args.real)
        few, few_labels = real[idx], real_labels[idx]
        sets["scarce real"] = (few, few_labels, None)
        sets["scarce real + synthetic"] = pooled((few, few_labels), (synth, synth_labels), args.real_share)
        scarce = {"subjects": subjects, "pairs": len(idx), "rule": SCARCE_RULE.format(n=args.scarce_subjects)}
    sets = {name: pairs for name, pairs in sets.items() if ROWS[name] in args.rows}
    outdir = runs.check_writable(args.outdir)          # after the inputs are checked: no empty folder on a bad input
    per_seed = [tstr_seed(sets, (test, test_labels), (synth, synth_labels), seed, args) for seed in args.seeds]
    dice = {name: spread([r["dice"][name] for r in per_seed]) for name in sets}
    agreement = spread([r["agreement"] for r in per_seed]) if "real" in sets else (None, None, None)
    ratios = [r["synthetic_over_real"] for r in per_seed if r["synthetic_over_real"] is not None]
    mean = {name: d[0]["mean"] for name, d in dice.items()}

    def beats(more: str, less: str):
        return mean[more] > mean[less] if {more, less} <= set(mean) else None
    result = {"real": str(args.real), "synthetic": str(args.synthetic), "test_split": args.test_split,
              "pairs": {"real": len(real), "synthetic": len(synth), "test": len(test)}, "resolution": resolution,
              "iters": args.iters, "batch": args.batch, "lr": args.lr, "seeds": args.seeds, "scarce": scarce,
              "real_share": args.real_share, "rows": args.rows,
              "dice": {name: d[0] for name, d in dice.items()}, "dice_min": {name: d[1] for name, d in dice.items()},
              "dice_max": {name: d[2] for name, d in dice.items()},
              "agreement": agreement[0], "agreement_min": agreement[1], "agreement_max": agreement[2],
              "synthetic_over_real": float(np.mean(ratios)) if ratios else None,
              "synthetic_over_real_min": min(ratios, default=None), "synthetic_over_real_max": max(ratios, default=None),
              "real_plus_synthetic_beats_real": beats("real + synthetic", "real"),
              "scarce_plus_synthetic_beats_scarce": beats("scarce real + synthetic", "scarce real"),
              "per_seed": per_seed}
    table = format_tstr(result)
    runs.write_text(outdir / "tstr.json", json.dumps(result, indent=1) + "\n")
    runs.write_text(outdir / "tstr.md", table + "\n")
    print(table)
    print(f"wrote tstr.json and tstr.md to {outdir}")
    return result


def format_rows(rows) -> str:
    """A markdown table of rows (label, scores) or (label, mean, min, max): Dice per class and their mean, the
    min-max over seeds in brackets when given."""
    def cell(row, key):
        return f"{row[1][key]:.3f}" + (f" ({row[2][key]:.3f}-{row[3][key]:.3f})" if len(row) > 2 else "")
    keys = [CLASSES[k] for k in SCORED] + ["mean"]
    table = [[""] + keys] + [[row[0]] + [cell(row, k) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys) + 1)]
    lines = ["| " + " | ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]) + " |"
             for line in table]
    lines.insert(1, "|" + "-" * (widths[0] + 2) + "|" + "".join("-" * (w + 1) + ":|" for w in widths[1:]))
    return "\n".join(lines)


def format_tstr(r: dict) -> str:
    """tstr.md: the heading, one row per training set and the agreement, the (b)/(a) ratio and the verdicts
    (each where its rows were trained)."""
    n, scarce, seeds = r["pairs"], r["scarce"], r["seeds"]
    spread_shown = len(seeds) > 1
    labels = {"real": f"(a) real -> real test ({n['real']})",
              "synthetic": f"(b) synthetic -> real test ({n['synthetic']})",
              "real + synthetic": f"(c) real + synthetic -> real test ({n['real'] + n['synthetic']})"}
    head = (f"Dice on the real {r['test_split']} split ({n['test']} slices, {r['resolution']} px), {r['iters']} "
            f"iterations, " + (f"seeds {', '.join(map(str, seeds))}: mean (min-max over seeds)" if spread_shown
                               else f"seed {seeds[0]}"))
    if r.get("real_share") is not None:
        head += (f"\n(c), (e): each pair drawn from the real ones with probability {r['real_share']:g}, "
                 f"from the synthetic ones otherwise")
    verdicts = []
    if r["real_plus_synthetic_beats_real"] is not None:
        verdicts.append(f"real + synthetic {beats(r['real_plus_synthetic_beats_real'])} real alone")
    if scarce and {"scarce real", "scarce real + synthetic"} & set(r["dice"]):
        k = len(scarce["subjects"])
        few = f"{k} real subject{'s' if k > 1 else ''}"
        labels["scarce real"] = f"(d) {few} -> real test ({scarce['pairs']})"
        labels["scarce real + synthetic"] = f"(e) {few} + synthetic -> real test ({scarce['pairs'] + n['synthetic']})"
        head += f"\n(d), (e): real subjects {', '.join(scarce['subjects'])}, {scarce['rule']}"
        if r["scarce_plus_synthetic_beats_scarce"] is not None:
            verdicts.append(f"(e) {few} + synthetic {beats(r['scarce_plus_synthetic_beats_scarce'])} (d) {few} alone")
    stats = {labels[name]: (r["dice"][name], r["dice_min"][name], r["dice_max"][name])
             for name in labels if name in r["dice"]}
    if r["agreement"] is not None:
        stats["agreement: (a) on synthetic pairs"] = (r["agreement"], r["agreement_min"], r["agreement_max"])
    rows = [(label,) + s[:3 if spread_shown else 1] for label, s in stats.items()]
    if r["synthetic_over_real"] is not None:
        ratio = f"{r['synthetic_over_real']:.3f}"
        if spread_shown:
            ratio += (f" (min-max {r['synthetic_over_real_min']:.3f}-{r['synthetic_over_real_max']:.3f}, the mean "
                      f"of the per-seed ratios)")
        verdicts.insert(0, f"(b) / (a) mean Dice: {ratio}")
    tail = "; ".join(verdicts) + (" (mean Dice over seeds)" if spread_shown and verdicts else "")
    return head + "\n\n" + format_rows(rows) + ("\n\n" + tail if tail else "")


def beats(yes: bool) -> str:
    return "beats" if yes else "does not beat"


def build_parser() -> config_lib.Parser:
    top = config_lib.Parser(prog="segment.py", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train", help="train on one set of pairs, score on another")
    tr.add_argument("--train", required=True, help="OASIS-layout folder to train on")
    tr.add_argument("--test", required=True, help="OASIS-layout folder to score on")
    tr.add_argument("--train_split", default="train", help="split of --train (default train)")
    tr.add_argument("--test_split", default="test", help="split of --test (default test)")
    tr.add_argument("--outdir", default="segment", help="where segmenter.pt and segment.json go")
    ts = sub.add_parser("tstr", help="train on real / synthetic / both, test on real")
    ts.add_argument("--real", required=True, help="OASIS-layout folder with train and test splits")
    ts.add_argument("--synthetic", required=True, help="OASIS-layout folder of synthetic pairs (predict.py --export)")
    ts.add_argument("--test_split", default="test", help="real split to score on (default test)")
    ts.add_argument("--outdir", required=True, help="where tstr.json and tstr.md go")
    ts.add_argument("--seeds", help="segmenter seeds, every row trained once per seed: 0,1,2 or 0-2 (default: --seed)")
    ts.add_argument("--scarce_subjects", type=int, default=3,
                    help="rows (d) and (e): this many real training subjects, the first case ids in sorted order, "
                         "alone and with the synthetic pairs; 0 leaves them out (default 3)")
    ts.add_argument("--rows", default="a,b,c,d,e",
                    help="the rows to train, e.g. d,e (default a,b,c,d,e; d and e need --scarce_subjects > 0; "
                         "the agreement needs a, the ratio a and b)")
    ts.add_argument("--real_share", type=float, default=None,
                    help="rows (c) and (e): the share of each batch drawn from the real pairs, the rest from the "
                         "synthetic ones, e.g. 0.5 (default: all pairs alike, so the larger set dominates)")
    for p in (tr, ts):
        p.add_argument("--resolution", type=int, default=0, help="pixels (default: the training images' size)")
        p.add_argument("--iters", type=int, default=2000, help="training iterations (default 2000)")
        p.add_argument("--batch", type=int, default=16, help="pairs per iteration (default 16)")
        p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine-annealed (default 1e-3)")
        p.add_argument("--seed", type=int, default=0, help="network initialization and batch order")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return top


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 an input cannot be used (one line), 2 a usage error (one line)."""
    return errors.run_main(_main, argv)


def _main(argv: list) -> None:
    args = build_parser().parse_args(argv)
    for name in ("iters", "batch"):
        if getattr(args, name) < 1:
            raise config_lib.ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.resolution:
        config_lib.check_resolution(args.resolution)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise config_lib.ConfigError(f"--lr must be a positive number, got {args.lr}")
    if args.what == "tstr":
        args.seeds = [args.seed] if args.seeds is None else predict.parse_seeds(args.seeds)
        if len(set(args.seeds)) < len(args.seeds):
            raise config_lib.ConfigError(f"--seeds {','.join(map(str, args.seeds))}: a seed is repeated")
        if args.real_share is not None and not 0 < args.real_share < 1:
            raise config_lib.ConfigError(f"--real_share must be between 0 and 1 (exclusive), got {args.real_share}")
        if args.scarce_subjects < 0:
            raise config_lib.ConfigError(f"--scarce_subjects must be >= 0 (0 leaves rows (d) and (e) out), "
                                         f"got {args.scarce_subjects}")
        args.rows = parse_rows(args.rows, args.scarce_subjects)
    args.device = config_lib.resolve_device(args.device)
    (run_tstr if args.what == "tstr" else run_train)(args)


if __name__ == "__main__":
    sys.exit(main())
