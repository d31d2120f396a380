"""Tissue segmentation of brain slices, and the test of synthetic pairs that it makes possible: "train on
synthetic, test on real" (TSTR).

Owns a compact 2D U-Net (Ronneberger et al. 2015) in plain torch, its training on image + mask pairs, the
Dice score per tissue class, and the TSTR protocol. Does not own reading the pairs (dataset.py) or making
synthetic ones (train.py --masks, then predict.py --export).

    python segment.py train --train data/demo --test data/demo              # train split -> test split
    python segment.py tstr --real data/demo --synthetic synth/ --outdir tstr/

TSTR trains the same network, for the same iterations and seed, three times and scores each on the real
test split: (a) on the real train split (the baseline), (b) on the synthetic pairs only, (c) on both.
It also reports agreement: the real-trained segmenter (a) run on the synthetic images and scored against
the generated masks (high when the generated masks fit the generated anatomy).
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
                    lr: float = 1e-3, seed: int = 0, device="cpu", desc: str = "segmenter", **net) -> UNet:
    """A U-Net trained on uint8 images [N, C, R, R] and labels [N, R, R] with cross-entropy + soft Dice, Adam,
    random batches and left-right flips, all drawn from `seed` (the global RNG is not touched)."""
    from tqdm import tqdm
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):                    # built on the CPU, from `seed`
        torch.random.default_generator.manual_seed(seed)
        model = UNet(in_channels=images.shape[1], **net).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters)
    for _ in tqdm(range(iters), desc=desc, unit="it", file=sys.stderr, dynamic_ncols=True, mininterval=1):
        idx = torch.randint(len(images), (batch,), generator=gen)
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
    """(uint8 images [N, 1, R, R], uint8 labels [N, R, R]) of one split of an OASIS-layout folder."""
    try:
        data = dataset.ImageDataset(path, split=split, resolution=resolution, with_masks=True, mirror=False,
                                    log=log or (lambda m: print(m, file=sys.stderr)))
    except dataset.DataError as e:
        raise dataset.DataError(str(e).replace("--data", option)) from None
    return torch.from_numpy(data.images), torch.from_numpy(data.masks)


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
# Commands

def run_train(args) -> dict:
    resolution = args.resolution or native_resolution(args.train, "--train")
    images, labels = load_pairs(args.train, args.train_split, resolution, "--train")
    test_images, test_labels = load_pairs(args.test, args.test_split, resolution, "--test")
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
    """The three trainings, the agreement score, tstr.json and tstr.md."""
    outdir = runs.check_writable(args.outdir)
    resolution = args.resolution or native_resolution(args.synthetic, "--synthetic")
    real, real_labels = load_pairs(args.real, "train", resolution, "--real")
    test, test_labels = load_pairs(args.real, args.test_split, resolution, "--real")
    synth, synth_labels = load_pairs(args.synthetic, "train", resolution, "--synthetic")
    sets = {"real": (real, real_labels), "synthetic": (synth, synth_labels),
            "real + synthetic": (torch.cat([real, synth]), torch.cat([real_labels, synth_labels]))}
    scores, models = {}, {}
    for name, (images, labels) in sets.items():
        models[name] = train_segmenter(images, labels, args.iters, args.batch, args.lr, args.seed, args.device,
                                       desc=f"{name} ({len(images)} pairs)")
        scores[name] = evaluate(models[name], test, test_labels, args.device)
    agreement = evaluate(models["real"], synth, synth_labels, args.device)
    ratio = scores["synthetic"]["mean"] / max(scores["real"]["mean"], 1e-12)
    result = {"real": str(args.real), "synthetic": str(args.synthetic), "test_split": args.test_split,
              "pairs": {"real": len(real), "synthetic": len(synth), "test": len(test)}, "resolution": resolution,
              "iters": args.iters, "batch": args.batch, "lr": args.lr, "seed": args.seed, "dice": scores,
              "synthetic_over_real": ratio,
              "real_plus_synthetic_beats_real": scores["real + synthetic"]["mean"] > scores["real"]["mean"],
              "agreement": agreement}
    table = format_tstr(result)
    runs.write_text(outdir / "tstr.json", json.dumps(result, indent=1) + "\n")
    runs.write_text(outdir / "tstr.md", table + "\n")
    print(table)
    print(f"wrote tstr.json and tstr.md to {outdir}")
    return result


def format_rows(rows) -> str:
    lines = [f"| {'':<34} | {'CSF':>6} | {'GM':>6} | {'WM':>6} | {'mean':>6} |", f"|{'-' * 36}|" + "-------:|" * 4]
    for label, s in rows:
        lines.append(f"| {label:<34} | {s['CSF']:6.3f} | {s['GM']:6.3f} | {s['WM']:6.3f} | {s['mean']:6.3f} |")
    return "\n".join(lines)


def format_tstr(r: dict) -> str:
    d, n = r["dice"], r["pairs"]
    rows = [(f"(a) real -> real test ({n['real']})", d["real"]),
            (f"(b) synthetic -> real test ({n['synthetic']})", d["synthetic"]),
            ("(c) real + synthetic -> real test", d["real + synthetic"]),
            ("agreement: (a) on synthetic pairs", r["agreement"])]
    return (f"Dice on the real {r['test_split']} split ({n['test']} slices, {r['resolution']} px), "
            f"{r['iters']} iterations, seed {r['seed']}\n" + format_rows(rows) +
            f"\n\n(b) / (a) mean Dice: {r['synthetic_over_real']:.3f}; real + synthetic "
            f"{'beats' if r['real_plus_synthetic_beats_real'] else 'does not beat'} real alone")


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
    args.device = config_lib.resolve_device(args.device)
    (run_tstr if args.what == "tstr" else run_train)(args)


if __name__ == "__main__":
    sys.exit(main())
