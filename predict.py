"""Sampling and scoring a trained generator: slices per seed, latent walks, style-mixing figures, and
scores against real slices.

Owns: rebuilding G_ema from a checkpoint, seed -> z, generation, interpolation, style mixing, reading the
real splits to score against, Inception features for FID / KID, and the output files. Does not own the
metrics' mathematics (metrics.py), the networks (modules.py), checkpoints and file writing (runs.py) or decoding
(dataset.py).

    python predict.py --checkpoint runs/00000-demo                    # seeds 0-15: seed0000.png ... grid.png
    python predict.py --checkpoint runs/00000-demo/snapshot-000012.pt --seeds 0-9,20 --trunc 0.7
    python predict.py --checkpoint runs/00000-demo --interpolate --seeds 0-3 --frames 24
    python predict.py --checkpoint runs/00000-demo --style_mix --row_seeds 0-3 --col_seeds 4-7
    python predict.py --checkpoint runs/00000-demo --score --real data/demo [--inception FILE]
    python predict.py --checkpoint runs/00000-demo --project slice.png more_slices/ [--steps 1000 --w_plus]
    python predict.py --checkpoint runs/00000-demo --projected_w runs/00000-demo/predict/projected_w.npz

Options are spelled with underscores like train.py's; the hyphenated spellings (--style-mix) work too.

--checkpoint is a checkpoint file or a run folder (its checkpoint.pt, else its highest-kimg snapshot).
Output goes to <folder of the checkpoint>/predict unless --outdir is given; only this program's own names
there are rewritten (seed<NNNN>.png, grid.png, frame<NNNN>.png, interpolation.gif, stylemix-<band>.png,
scores.json, closest_pairs.png, projection<NNNN>.png / .gif, projections.png, projection.json, projected_w.npz,
projected<NNNN>.png). Seed s gives z = np.random.RandomState(s).randn(1, z_dim), as in the
official StyleGAN2-ADA tools; with --noise_mode random each image is made alone, torch seeded by its seed.
--score: the reference is the train split; the held-out baseline is validate (else test), or a random 10 %
(seed 0) of a plain image folder. FID / KID need --inception inception-2015-12-05.pt, the TorchScript
Inception-v3 of the StyleGAN2-ADA metrics; nothing is downloaded.
--project: each image (files, or folders searched recursively) is decoded as the training data was (grayscale,
centre-cropped or padded as the model's --fit, then resized to the model's resolution with Lanczos) and
projected by project.py; the distance is (1 - SSIM) + L1 unless --distance names a TorchScript feature network.
Per image: projection<NNNN>.png (target | reconstruction | mask for a --masks model) and projection<NNNN>.gif
(the optimization); for all: projections.png, projection.json (SSIM and PSNR of each reconstruction, and the
means) and projected_w.npz (w [N, num_ws, w_dim], names, and the optimized noise maps noise.<layer> [N, R, R]).
--projected_w FILE makes projected<NNNN>.png (and _seg.png) from such a file: the same images, bit for bit.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import config as config_lib
import dataset
import metrics
import modules
import project
import runs

GRID_MAX = 64                           # grid.png shows at most the first 64 images (8 x 8)
OVERLAY_MAX = 16                        # overlay.png shows at most the first 16 image / mask pairs
EXPORT_SLICES = 32                      # --export: slices per synthetic case, as in OASIS
GIF_FRAME_MS = 40                       # 25 frames per second
CLOSEST_PAIRS = 8                       # generated / real pairs in closest_pairs.png
DIVERSITY_PAIRS = 500                   # random pairs for the SSIM / MS-SSIM diversity
MAX_SEEDS = 1_000_000                   # a typo like 0-99999999 should not fill the memory
DEFAULTS = dict(seeds="0-15", walk_seeds="0-3", frames=24, row_seeds="0-3", col_seeds="4-7", num=1000, steps=8,
                project_steps=1000)
GIF_FRAMES = 50                         # --project: frames of each optimization GIF (one every steps // 50)


class PredictError(ValueError):
    """An input that cannot be used (a real-data folder, an Inception file), as one line that names it.
    Wrong options are config_lib.ConfigError (exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Seeds, checkpoint, generation

def parse_seeds(text: str, option: str = "--seeds") -> list:
    """'0-9,20,30-32' -> [0, ..., 9, 20, 30, 31, 32]: inclusive ranges and single seeds, order kept."""
    seeds = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise config_lib.ConfigError(f"{option} {text!r}: {part.strip()!r} is not a seed or a range like 0-9 "
                               f"(integers >= 0, ranges and lists like 0-9,20,30-32)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise config_lib.ConfigError(f"{option} {text!r}: the range {lo}-{hi} runs backwards; write {hi}-{lo}")
        if hi >= 2 ** 32:
            raise config_lib.ConfigError(f"{option} {text!r}: seeds must be below 2^32, got {hi}")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise config_lib.ConfigError(f"{option} {text!r}: more than {MAX_SEEDS:,} seeds")
        seeds += range(lo, hi + 1)
    return seeds


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """The official tools' latent of a seed: np.random.RandomState(seed).randn(1, z_dim). [1, z_dim]"""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()


@torch.no_grad()
def seeds_to_ws(G, seeds, psi: float = 1.0, device="cpu", batch: int = 16) -> torch.Tensor:
    """ws of seeds; a conditional G takes each seed's label from G.seed_labels (set by label_rule)."""
    z = torch.cat([z_from_seed(s, G.z_dim) for s in seeds]).to(device)               # [N, z_dim]
    c = G.seed_labels(seeds).to(device) if getattr(G, "c_dim", 0) else None          # [N, c_dim]
    cs = c.split(batch) if c is not None else [None] * len(z.split(batch))
    return torch.cat([G.mapping(zb, cb, truncation_psi=psi) for zb, cb in zip(z.split(batch), cs)])


def label_rule(cfg, args):
    """seeds -> labels [N, c_dim] for a conditional model, from --class, --label or --slice; without them a
    slice-position model draws each seed's position uniformly in [0, 1] and a class model each seed's class
    (both seeded by the seed). None for an unconditional model. Wrong options are one ConfigError line."""
    usage = config_lib.ConfigError
    given = {k: v for k, v in (("--class", args.class_), ("--label", args.label), ("--slice", args.slice))
             if v is not None}
    names = cfg.label_names.split(",") if cfg.label_names else [f"label_{i}" for i in range(cfg.c_dim)]
    if not cfg.c_dim:
        if given:
            raise usage(f"{', '.join(given)}: this model is unconditional (trained with --cond=none)")
        return None
    if len(given) > 1:
        raise usage(f"give one of {', '.join(given)}, not several")
    classes = all(n.startswith("class_") for n in names)
    fixed = None
    if "--label" in given:
        try:
            fixed = [float(v) for v in args.label.split(",")]
        except ValueError:
            raise usage(f"--label {args.label!r}: give {cfg.c_dim} numbers separated by commas") from None
        if len(fixed) != cfg.c_dim:
            raise usage(f"--label {args.label!r}: this model takes {cfg.c_dim} value(s) ({', '.join(names)}), "
                        f"got {len(fixed)}")
    elif "--class" in given:
        if not classes or not 0 <= args.class_ < cfg.c_dim:
            raise usage(f"--class {args.class_}: this model's labels are {', '.join(names)}; "
                        + (f"give a class 0..{cfg.c_dim - 1}" if classes else "use --label or --slice"))
        fixed = [float(i == args.class_) for i in range(cfg.c_dim)]
    elif "--slice" in given:
        if names != ["slice_position"] or not 0 <= args.slice <= 1:
            raise usage(f"--slice {args.slice}: " + ("give a position in [0, 1] (0 = lowest slice)"
                                                     if names == ["slice_position"] else
                                                     f"this model's labels are {', '.join(names)}; use --label"))
        fixed = [args.slice]
    if fixed is not None:
        return lambda seeds: torch.tensor([fixed] * len(seeds), dtype=torch.float32)
    if names == ["slice_position"]:
        return lambda seeds: torch.tensor([[np.random.default_rng([s, 1]).random()] for s in seeds],
                                          dtype=torch.float32)
    if classes:
        return lambda seeds: torch.eye(cfg.c_dim)[[int(np.random.default_rng([s, 1]).integers(cfg.c_dim))
                                                   for s in seeds]]
    raise usage(f"this model is conditional on {', '.join(names)}; give --label v1,...,v{cfg.c_dim}")


def _decode(G, x: torch.Tensor):
    """G's output [N, C (+ K), R, R] -> (uint8 images [N, C, R, R], uint8 labels [N, R, R] or None) on the CPU."""
    c = G.img_channels
    labels = dataset.mask_labels(x[:, c:]).cpu() if G.mask_classes else None
    return dataset.to_uint8(x[:, :c]).cpu(), labels


@torch.no_grad()
def synthesize(G, ws: torch.Tensor, noise_mode: str = "const", batch: int = 16, noise_seeds=None,
               with_labels: bool = False):
    """ws [N, num_ws, w_dim] -> uint8 images [N, C, R, R] on the CPU (with_labels: and the masks' labels
    [N, R, R], None for an image-only G). noise_mode "random" makes one image at a time with torch seeded by
    noise_seeds[i] (the global RNG is restored afterwards)."""
    if noise_mode != "random":
        parts = [_decode(G, G.synthesis(wb, noise_mode=noise_mode)) for wb in ws.split(batch)]
    else:
        devices = list(range(torch.cuda.device_count())) if ws.device.type == "cuda" else []
        parts = []
        for w, seed in zip(ws, noise_seeds):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                parts.append(_decode(G, G.synthesis(w[None], noise_mode="random")))
    images = torch.cat([p[0] for p in parts])
    if not with_labels:
        return images
    return images, torch.cat([p[1] for p in parts]) if G.mask_classes else None


def generate(G, seeds, psi: float = 1.0, noise_mode: str = "const", device="cpu", batch: int = 16,
             with_labels: bool = False):
    """One uint8 image [C, R, R] per seed: [N, C, R, R] (with_labels: and the labels, see synthesize)."""
    return synthesize(G, seeds_to_ws(G, seeds, psi, device, batch), noise_mode, batch, noise_seeds=seeds,
                      with_labels=with_labels)


MASK_COLOURS = ((0, 0, 0), (40, 120, 255), (40, 200, 80), (255, 170, 40))   # background, CSF, GM, WM
OVERLAY_ALPHA = 0.45


def overlay(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """uint8 grayscale images [N, 1, R, R] and labels [N, R, R] -> RGB tiles [N, 3, R, 2R]: the image, then
    the image with its mask in colour (CSF blue, grey matter green, white matter orange)."""
    gray = images[:, :1].float().expand(-1, 3, -1, -1)                            # [N, 3, R, R]
    colours = torch.tensor(MASK_COLOURS, dtype=torch.float32)[labels.long()].permute(0, 3, 1, 2)
    tissue = (labels > 0)[:, None].float()
    blended = gray * (1 - OVERLAY_ALPHA * tissue) + colours * OVERLAY_ALPHA * tissue
    return torch.cat([gray, blended], dim=3).round().clamp(0, 255).to(torch.uint8)


def interpolation_ws(G, seeds, frames: int, psi: float = 1.0, device="cpu", batch: int = 16) -> torch.Tensor:
    """A closed walk through the seeds' w in order and back to the first, `frames` per segment (its end
    left to the next). Linear in W, as the StyleGAN papers interpolate in W (W is not a sphere, unlike Z).
    [len(seeds) * frames, num_ws, w_dim]"""
    ws = seeds_to_ws(G, seeds, psi, device, batch)                                    # [K, num_ws, w_dim]
    t = torch.arange(frames, dtype=ws.dtype, device=ws.device) / frames              # [F]
    a, b = ws[:, None], ws.roll(-1, dims=0)[:, None]                                  # seed k -> seed k + 1
    return (a + (b - a) * t[None, :, None, None]).flatten(0, 1)                       # [K * F, num_ws, w_dim]


def style_bands(num_ws: int) -> dict:
    """{band: (first, end) ws indices}. The ws of resolution 2^k are 2(k - 2) and 2(k - 2) + 1 (the StyleGAN
    paper's layer numbering, fig. 3): coarse = 4-8 px, middle = 16-32 px, fine = 64 px and up. Bands a
    small generator does not have are left out."""
    first = lambda res: 2 * (int(math.log2(res)) - 2)                                # noqa: E731
    bands = {"coarse": (first(4), first(16)), "middle": (first(16), first(64)), "fine": (first(64), num_ws)}
    return {name: (lo, min(hi, num_ws)) for name, (lo, hi) in bands.items() if lo < num_ws}


def style_mix_grid(G, row_seeds, col_seeds, layers, psi: float = 1.0, noise_mode: str = "const", device="cpu",
                   batch: int = 16) -> torch.Tensor:
    """Tiles of the style-mixing figure, row-major, uint8 [(rows + 1) * (cols + 1), C, R, R]: a blank corner,
    the column seeds' images on top, each row seed's image at the left of its row, and in each cell the row
    seed's ws with the column seed's ws at layers [first, end)."""
    first, end = layers
    row_ws, col_ws = seeds_to_ws(G, row_seeds, psi, device, batch), seeds_to_ws(G, col_seeds, psi, device, batch)
    mixed = row_ws[:, None].repeat(1, len(col_seeds), 1, 1)                           # [rows, cols, num_ws, w_dim]
    mixed[:, :, first:end] = col_ws[None, :, first:end]
    cells = synthesize(G, mixed.flatten(0, 1), noise_mode, batch, [s for s in row_seeds for _ in col_seeds])
    rows = synthesize(G, row_ws, noise_mode, batch, row_seeds)
    tops = synthesize(G, col_ws, noise_mode, batch, col_seeds)
    tiles = [torch.zeros_like(tops[:1]), tops]
    for i in range(len(row_seeds)):
        tiles += [rows[i:i + 1], cells[i * len(col_seeds):(i + 1) * len(col_seeds)]]
    return torch.cat(tiles)


# ----------------------------------------------------------------------------------------------
# Scoring against real slices

def load_real(path, cfg: config_lib.TrainConfig, max_real: int = None, log=None, skip_bad: bool = False,
              cond: str = "none") -> dataset.RealSets:
    """dataset.reference_sets at the generator's resolution, with --real named in its errors."""
    return dataset.reference_sets(path, cfg.resolution, cfg.img_channels, cfg.fit, max_real, skip_bad, log, "--real",
                                  cond)


def position_column(cfg, real) -> int:
    """The label column holding the slice position of a model conditioned on it, when the --real folder gives
    its slices' positions the way the model's training data did (--cond=slice: OASIS names; --cond=json: a
    dataset.json); else None."""
    names = cfg.label_names.split(",") if cfg.c_dim and cfg.label_names else []
    if "slice_position" not in names:
        return None
    if cfg.cond == "json" and not (Path(real) / dataset.LABELS_FILE).is_file():
        return None
    if cfg.cond == "slice" and not (Path(real) / f"{dataset.OASIS_PREFIX}train").is_dir():
        return None
    return names.index("slice_position")


def format_table(scores: dict) -> str:
    rows = [("nearest-real SSIM, mean", "nearest_ssim_mean", "heldout_nearest_ssim_mean"),
            ("nearest-real SSIM, median", "nearest_ssim_median", "heldout_nearest_ssim_median"),
            ("diversity: SSIM of pairs", "diversity_ssim", "real_diversity_ssim"),
            ("diversity: MS-SSIM of pairs", "diversity_ms_ssim", "real_diversity_ms_ssim"),
            ("memorization share", "memorization_share", None),
            ("axial levels covered (nearest real)", "level_coverage", "real_level_coverage"),
            ("axial-level spread (0 = even)", "level_spread", "real_level_spread"),
            ("slice position error (asked vs real)", "position_error", "real_position_error"),
            ("FID", "fid", None), ("KID", "kid", None)]
    cell = lambda key: f"{scores[key]:.4f}" if key in scores else ""                 # noqa: E731
    lines = [f"{'':<36} {'generated':>10} {'real':>10}"]
    lines += [f"{label:<36} {cell(g):>10} {cell(r):>10}" for label, g, r in rows if g in scores]
    lines.append("real: held-out slices against the training slices (nearest), training pairs (diversity)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Files: PNG, GIF, figures, JSON, each written atomically by runs.py

def _array(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (C = 1) or [H, W, C]."""
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def save_gif(frames: torch.Tensor, path: Path) -> None:
    images = [Image.fromarray(_array(f)) for f in frames]
    runs.atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                       duration=GIF_FRAME_MS, loop=0))


def save_closest_pairs(generated: torch.Tensor, reference: torch.Tensor, closest, seeds, names, path: Path) -> None:
    plt = runs.pyplot()
    fig, axes = plt.subplots(2, len(closest), figsize=(1.8 * len(closest), 4.8), squeeze=False)
    for j, (g, r, s) in enumerate(closest):
        for ax, image, title in ((axes[0, j], generated[g], f"seed {seeds[g]}\nSSIM {s:.3f}"),
                                 (axes[1, j], reference[r], Path(names[r]).name.replace(".nii.png", "")[-20:])):
            ax.imshow(_array(image), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("closest pairs by SSIM: generated (top), training slice (bottom)", fontsize=9)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------
# main

def build_parser() -> argparse.ArgumentParser:
    p = config_lib.Parser(prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("--best", action="store_true", help="with a run folder: its best snapshot by the scores "
                                                       "tracked while training (best.json)")
    p.add_argument("--seeds", help="seeds like 0-9,20,30-32 (default 0-15; --interpolate 0-3; --score 0..num-1)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (1 = off; 0.5-0.7 trades variety "
                                                             "for typicality)")
    p.add_argument("--noise_mode", choices=modules.NOISE_MODES,
                   help="per-pixel noise: const (default) | random (default for --score and --export: each slice its "
                        "own noise, seeded by its seed, as G's distribution is) | none")
    p.add_argument("--outdir", help="output folder (default <folder of the checkpoint>/predict)")
    p.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--interpolate", action="store_true", help="latent walk: frame<NNNN>.png and interpolation.gif")
    mode.add_argument("--style_mix", action="store_true", help="style-mixing figures stylemix-<band>.png")
    mode.add_argument("--score", action="store_true", help="scores.json and closest_pairs.png against --real")
    mode.add_argument("--sweep", action="store_true", help="a conditional model: sweep.png, one row per seed, "
                                                           "columns sweeping the slice position (or the classes)")
    mode.add_argument("--project", nargs="+", metavar="IMAGE_OR_FOLDER", help="find the latents of real slices: "
                      "projection<NNNN>.png / .gif, projections.png, projection.json, projected_w.npz")
    mode.add_argument("--projected_w", metavar="FILE", help="images projected<NNNN>.png from a projected_w.npz")
    mode.add_argument("--export", metavar="DIR", help="a synthetic data set in the OASIS layout (images and, for "
                                                      "a --masks model, their masks) in a new folder DIR")
    p.add_argument("--class", dest="class_", type=int, help="a class model: generate this class (0, 1, ...)")
    p.add_argument("--label", help="a conditional model: the label as numbers v1,v2,... (its c_dim values)")
    p.add_argument("--slice", type=float, help="a slice-position model: the axial position in [0, 1]")
    p.add_argument("--sweep_range", help="--sweep: the slice positions swept, lo,hi (default 0,1; "
                                                         "a dataset.py slices data set holds 0.1,0.9)")
    p.add_argument("--steps", type=int, help="--sweep: slice positions from 0 to 1 (default 8); --project: "
                                             "optimization steps (default 1000)")
    p.add_argument("--w_plus", action="store_true", help="--project: one w per layer (W+) instead of one w")
    p.add_argument("--seed", type=int, help="--project: seed of the noise maps and the w noise (default 0)")
    p.add_argument("--distance", metavar="FILE", help="--project: a TorchScript feature network (float [N, 3, H, W] "
                                                      "in 0..255 -> features) instead of (1 - SSIM) + L1")
    p.add_argument("--frames", type=int, help="--interpolate: frames per pair of seeds (default 24)")
    p.add_argument("--row_seeds", help="--style_mix: seeds of the rows (default 0-3)")
    p.add_argument("--col_seeds", help="--style_mix: seeds whose layers are swapped in (default 4-7)")
    p.add_argument("--real", help="--score: OASIS folder or folder of images")
    p.add_argument("--skip_bad", action="store_true", help="--score: skip unreadable files in --real with a warning")
    p.add_argument("--num", type=int, help="--score / --export: generated images, seeds 0..num-1 (default 1000)")
    p.add_argument("--max_real", type=int, help="--score: cap on the training slices used (default all)")
    p.add_argument("--inception", help="--score: inception-2015-12-05.pt (TorchScript) to add FID and KID")
    return p


MODE_OPTIONS = {"steps": ("sweep", "project"), "sweep_range": ("sweep",), "seed": ("project",), "distance": ("project",), "frames": ("interpolate",), "row_seeds": ("style_mix",), "col_seeds": ("style_mix",),
                "real": ("score",), "num": ("score", "export"), "max_real": ("score",), "inception": ("score",)}


def check_args(args) -> None:
    """Usage errors (config_lib.ConfigError, exit code 2), found before anything is loaded."""
    usage = config_lib.ConfigError
    for option, modes in MODE_OPTIONS.items():
        if getattr(args, option) is not None and not any(getattr(args, m) for m in modes):
            raise usage(f"--{option} is used only with {' or '.join('--' + m for m in modes)}")
    if args.export and args.outdir:
        raise usage("--export DIR is the output folder; --outdir is not used with it")
    if args.w_plus and not args.project:
        raise usage("--w_plus is used only with --project")
    if args.seeds is not None and (args.project or args.projected_w):
        raise usage("--project and --projected_w take no --seeds (--seed sets the projection's noise)")
    if args.seed is not None and not 0 <= args.seed < 2 ** 32:
        raise usage(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.skip_bad and not args.score:
        raise usage("--skip_bad is used only with --score (it skips unreadable files in --real)")
    if args.num is not None and args.seeds is not None:
        raise usage("--num and --seeds both choose the generated images; give one of them")
    if args.style_mix and args.seeds is not None:
        raise usage("--style_mix takes --row_seeds and --col_seeds, not --seeds")
    if args.score and args.real is None:
        raise usage("--score needs --real PATH: an OASIS folder (keras_png_slices_*) or a folder of images")
    if not math.isfinite(args.trunc):
        raise usage(f"--trunc must be a finite number (1 = no truncation), got {args.trunc}")
    if args.sweep and (args.class_ is not None or args.label is not None or args.slice is not None):
        raise usage("--sweep chooses the labels itself; leave out --class, --label and --slice")
    for option, value, least in (("batch", args.batch, 1), ("frames", args.frames, 1), ("num", args.num, 2),
                                 ("steps", args.steps, 2),
                                 ("max_real", args.max_real, 2)):
        if value is not None and value < least:
            raise usage(f"--{option} must be >= {least}, got {value}")


def stream(G, seeds, psi, noise_mode, device, batch):
    """(seeds, uint8 images, labels or None) a batch at a time: any number of seeds fits in memory."""
    for i in range(0, len(seeds), batch):
        chunk = seeds[i:i + batch]
        yield (chunk, *synthesize(G, seeds_to_ws(G, chunk, psi, device, batch), noise_mode, batch, noise_seeds=chunk,
                                  with_labels=True))


def write_images(G, seeds, outdir: Path, psi, noise_mode, device, batch) -> str:
    """seed<NNNN>.png (and with masks seed<NNNN>_seg.png, OASIS levels 0/85/170/255), streamed to disk, and
    grid.png of the first GRID_MAX (with masks also overlay.png: each image beside its coloured mask)."""
    shown = min(len(seeds), GRID_MAX)
    first, first_labels = [], []
    for chunk, images, labels in stream(G, seeds, psi, noise_mode, device, batch):
        for k, (s, image) in enumerate(zip(chunk, images)):
            runs.save_png(_array(image), outdir / f"seed{s:04d}.png")
            if labels is not None:
                runs.save_png(_array(dataset.mask_to_levels(labels[k:k + 1])[0]), outdir / f"seed{s:04d}_seg.png")
        if len(first) * batch < shown:
            first.append(images)
            first_labels.append(labels)
    cols = math.ceil(math.sqrt(shown))
    runs.save_grid(torch.cat(first)[:shown], outdir / "grid.png", cols)
    wrote = f"{len(seeds)} images seed{seeds[0]:04d}.png ... and grid.png (the first {shown})"
    if G.mask_classes:
        n = min(shown, OVERLAY_MAX)
        runs.save_grid(overlay(torch.cat(first)[:n], torch.cat(first_labels)[:n]), outdir / "overlay.png",
                       math.ceil(math.sqrt(n)))
        wrote += f", their masks seed{seeds[0]:04d}_seg.png ... and overlay.png (the first {n})"
    return wrote


def write_export(G, seeds, outdir: Path, about: dict, psi, noise_mode, device, batch) -> str:
    """A synthetic data set in the OASIS layout: keras_png_slices_train/case_XXX_slice_K.nii.png and, with
    masks, keras_png_slices_seg_train/seg_XXX_slice_K.nii.png (seed s is slice s % 32 of case s // 32 + 1),
    plus export.json saying where it came from. Built in a temporary folder and renamed into place."""
    if outdir.exists() and any(outdir.iterdir()):
        raise PredictError(f"--export {outdir}: exists and is not empty; give a new folder (nothing is overwritten)")
    tmp = outdir.with_name(f".{outdir.name}.partial-{os.getpid()}")
    img_dir = tmp / f"{dataset.OASIS_PREFIX}train"
    seg_dir = tmp / f"{dataset.OASIS_PREFIX}seg_train"
    try:
        img_dir.mkdir(parents=True)
        if G.mask_classes:
            seg_dir.mkdir()
        for chunk, images, labels in tqdm(stream(G, seeds, psi, noise_mode, device, batch), desc="export",
                                          total=math.ceil(len(seeds) / batch), unit="batch", file=sys.stderr):
            for k, s in enumerate(chunk):
                case, k_slice = s // EXPORT_SLICES + 1, s % EXPORT_SLICES
                runs.save_png(_array(images[k]), img_dir / f"case_{case:03d}_slice_{k_slice}.nii.png")
                if labels is not None:
                    runs.save_png(_array(dataset.mask_to_levels(labels[k:k + 1])[0]),
                                  seg_dir / f"seg_{case:03d}_slice_{k_slice}.nii.png")
        runs.write_text(tmp / "export.json", json.dumps(dict(about, num=len(seeds), seeds=f"{seeds[0]}-{seeds[-1]}",
                                                               trunc=psi, noise_mode=noise_mode,
                                                               masks=bool(G.mask_classes)), indent=1) + "\n")
        if outdir.exists():
            outdir.rmdir()                                    # empty (checked above)
        os.replace(tmp, outdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = "images and masks" if G.mask_classes else "images (an image-only generator: no masks)"
    return f"{len(seeds)} synthetic {what} in the OASIS layout ({img_dir.name})"


def parse_range(text: str, option: str = "--sweep_range") -> tuple:
    """'lo,hi' with 0 <= lo < hi <= 1, or one ConfigError line."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 <= lo < hi <= 1:
        raise config_lib.ConfigError(f"{option} must be lo,hi with 0 <= lo < hi <= 1, got {text!r}")
    return lo, hi


def write_sweep(G, cfg, seeds, steps: int, outdir: Path, psi, noise_mode, device, batch, span=(0.0, 1.0)) -> str:
    """sweep.png: one row per seed, one column per label: the slice position from span[0] (lowest) to span[1],
    or each class; everything else fixed."""
    names = cfg.label_names.split(",") if cfg.label_names else []
    if names == ["slice_position"]:
        columns = [[float(v)] for v in np.linspace(*span, steps)]
        what = f"slice positions {', '.join(f'{c[0]:.2f}' for c in columns)}"
    elif names and all(n.startswith("class_") for n in names):
        columns = [[float(i == k) for i in range(cfg.c_dim)] for k in range(cfg.c_dim)]
        what = f"classes 0..{cfg.c_dim - 1}"
    else:
        raise config_lib.ConfigError("--sweep needs a model conditioned on the slice position or on classes "
                                     f"(this one: {cfg.label_names or 'unconditional'})")
    tiles = torch.empty(len(seeds), len(columns), G.img_channels, G.img_resolution, G.img_resolution,
                        dtype=torch.uint8)
    for j, label in enumerate(columns):
        G.seed_labels = lambda s, label=label: torch.tensor([label] * len(s), dtype=torch.float32)
        tiles[:, j] = generate(G, seeds, psi, noise_mode, device, batch)
    runs.save_grid(tiles.flatten(0, 1), outdir / "sweep.png", len(columns))
    return f"sweep.png (rows: seeds {seeds[0]}..{seeds[-1]}; columns: {what})"


def write_walk(G, seeds, frames: int, outdir: Path, psi, noise_mode, device, batch) -> str:
    ws = interpolation_ws(G, seeds, frames, psi, device, batch)
    images = synthesize(G, ws, noise_mode, batch, noise_seeds=[seeds[0]] * len(ws))  # one noise along the walk
    for old in outdir.glob("frame*.png"):                     # a longer earlier walk's frames would mix in
        if re.fullmatch(r"frame\d{4,}\.png", old.name) and int(old.stem[5:]) >= len(images):
            old.unlink()
    for i, image in enumerate(images):
        runs.save_png(_array(image), outdir / f"frame{i:04d}.png")
    save_gif(images, outdir / "interpolation.gif")
    return f"{len(images)} frames frame0000.png ... and interpolation.gif"


def write_style_mix(G, rows, cols, outdir: Path, **gen) -> str:
    bands = style_bands(G.num_ws)
    for name, layers in bands.items():
        runs.save_grid(style_mix_grid(G, rows, cols, layers, **gen), outdir / f"stylemix-{name}.png", len(cols) + 1)
    missing = "" if "fine" in bands else f" (a {G.img_resolution} px generator has no fine, 64 px+, layers)"
    return ", ".join(f"stylemix-{b}.png (ws {lo}-{hi - 1})" for b, (lo, hi) in bands.items()) + missing


def write_scores(G, cfg, seeds, args, outdir: Path, about: dict, psi, noise_mode, device, batch) -> str:
    """Everything is read and checked before the first image is generated."""
    try:
        model = metrics.load_inception(args.inception, device, "--inception") if args.inception else None
    except ValueError as e:
        raise PredictError(str(e)) from None
    column = position_column(cfg, args.real)
    real = load_real(args.real, cfg, args.max_real, skip_bad=args.skip_bad, log=lambda m: print(m, file=sys.stderr),
                     cond=cfg.cond if column is not None else "none")
    reference, names, heldout, info = real.reference, real.names, real.heldout, real.info
    if (column is not None and args.class_ is None and args.label is None and args.slice is None
            and real.labels.shape[1] == cfg.c_dim):
        # As in training, each seed gets the labels of a random real slice (seeded), so the sample follows the
        # data's positions (a uniform draw over [0, 1] would ask for levels the data may not have).
        G.seed_labels = lambda s: torch.from_numpy(real.labels[[int(np.random.default_rng([x, 1]).integers(
            len(real.labels))) for x in s]])
        info = {**info, "labels": "those of random reference slices (seeded by the seed)"}
    generated = generate(G, seeds, psi, noise_mode, device, batch)
    features = None
    if model is not None:
        try:
            features = (metrics.inception_features(model, generated, batch, device),
                        metrics.inception_features(model, reference, batch, device))
        except metrics.FeatureError as e:
            raise PredictError(f"--inception {args.inception}: {e}") from None
    unit = lambda x: x.to(device, torch.float32) / 255                                # noqa: E731
    scores = metrics.quality_scores(unit(generated), unit(reference), unit(heldout), features,
                                    pairs=DIVERSITY_PAIRS, closest=CLOSEST_PAIRS)
    closest = scores.pop("closest")
    levels = [dataset.slice_level(n) for n in names]
    nearest, held_nearest = scores.pop("nearest_index"), scores.pop("heldout_nearest_index")
    if None not in levels:                             # OASIS names: axial levels of the nearest real slices
        generated_cover = metrics.level_coverage([levels[i] for i in nearest], levels)
        real_cover = metrics.level_coverage([levels[i] for i in held_nearest], levels)
        scores.update({k: generated_cover[k] for k in ("level_coverage", "level_spread")},
                      real_level_coverage=real_cover["level_coverage"], real_level_spread=real_cover["level_spread"],
                      level_counts=generated_cover["level_counts"])
    if column is not None:                             # asked slice position against the nearest real slice's
        asked = G.seed_labels(seeds)[:, column].numpy()
        scores.update(position_error=metrics.position_error(asked, real.labels[nearest, column]),
                      real_position_error=metrics.position_error(real.heldout_labels[:, column],
                                                                 real.labels[held_nearest, column]))
    save_closest_pairs(generated, reference, closest, seeds, names, outdir / "closest_pairs.png")
    result = {**about, "real": str(args.real), **info, "num_generated": len(seeds),
              "seeds": args.seeds or f"0-{len(seeds) - 1}", "trunc": psi, "noise_mode": noise_mode, **scores,
              "closest_pairs": [{"seed": seeds[g], "real": names[r], "ssim": s} for g, r, s in closest]}
    runs.write_text(outdir / "scores.json", json.dumps(result, indent=1) + "\n")
    print(format_table(scores))
    if model is None:
        print("FID/KID skipped: pass --inception inception-2015-12-05.pt (TorchScript Inception-v3) to add them")
    return "scores.json and closest_pairs.png"


# ----------------------------------------------------------------------------------------------
# Projection of real slices (the optimization lives in project.py)

def read_targets(paths, cfg: config_lib.TrainConfig):
    """--project's files (folders searched recursively, sorted) decoded as the training data: (paths, uint8
    [N, C, R, R], how many were resized). Every file is read before any projection; errors name the file."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            if dataset.is_oasis_layout(path):
                raise PredictError(f"--project {path}: an OASIS folder (images and masks); give one split's image "
                                   f"folder, e.g. {path / (dataset.OASIS_PREFIX + 'validate')}")
            found = dataset.list_images(path)
            if not found:
                raise PredictError(f"--project {path}: no images ({', '.join(dataset.IMAGE_EXTS)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"--project {path}: no such file or folder")
    stats = dataset.DecodeStats()
    images = [torch.from_numpy(dataset.decode_image(f, cfg.resolution, cfg.img_channels, cfg.fit, stats).copy())
              for f in files]
    return files, torch.stack(images), stats.resized


def _remove_stale(outdir: Path, prefix: str, count: int) -> None:
    """An earlier, longer run's <prefix><NNNN>.* files (index >= count) would mix in."""
    for old in outdir.glob(f"{prefix}*"):
        m = re.fullmatch(rf"{prefix}(\d{{4,}})(_seg)?\.(png|gif)", old.name)
        if m and int(m.group(1)) >= count:
            old.unlink()


def _savez(path, arrays: dict) -> None:
    with open(path, "wb") as f:                             # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)


def save_projection_figure(targets, results, names, path: Path) -> None:
    """Targets above their reconstructions (and masks), each titled with its name and SSIM."""
    plt = runs.pyplot()
    rows = 3 if results[0].labels is not None else 2
    fig, axes = plt.subplots(rows, len(results), figsize=(1.6 * len(results), 1.75 * rows + 0.4), squeeze=False)
    for j, (target, r) in enumerate(zip(targets, results)):
        tiles = [(target, Path(names[j]).name.replace(".nii.png", "")[-18:]), (r.image, f"SSIM {r.ssim:.3f}")]
        if r.labels is not None:
            tiles.append((dataset.mask_to_levels(r.labels[None])[0], "mask"))
        for ax, (image, title) in zip(axes[:, j], tiles):
            ax.imshow(_array(image), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"projection: real slices (top), reconstructions (below); mean SSIM "
                 f"{np.mean([r.ssim for r in results]):.3f}", fontsize=8)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=100)


def write_projections(G, cfg, args, c, outdir: Path, about: dict) -> str:
    files, targets, resized = read_targets(args.project, cfg)
    steps = args.steps or DEFAULTS["project_steps"]
    settings = project.Settings(steps=steps, w_plus=args.w_plus, seed=args.seed or 0,
                                frame_every=max(1, steps // GIF_FRAMES))
    device = next(G.parameters()).device
    try:
        net = project.load_feature_net(args.distance, device, G.img_resolution) if args.distance else None
    except ValueError as e:
        raise PredictError(str(e)) from None
    if resized:
        print(f"{resized} of {len(files)} image(s) resized to {G.img_resolution}x{G.img_resolution} "
              f"(--fit {cfg.fit}, Lanczos)", file=sys.stderr)
    _remove_stale(outdir, "projection", len(files))
    results = []
    for i, (path, target) in enumerate(zip(files, targets)):
        r = project.project(G, target, settings, c, net, desc=f"project {i + 1}/{len(files)} {path.name}")
        tiles = [target, r.image] + ([dataset.mask_to_levels(r.labels[None])[0].expand_as(target)]
                                     if r.labels is not None else [])
        runs.save_png(_array(torch.cat(tiles, dim=2)), outdir / f"projection{i:04d}.png")
        save_gif(torch.stack([torch.cat([target, f], dim=2) for f in r.frames]), outdir / f"projection{i:04d}.gif")
        results.append(r)
        print(f"{i:4d}  SSIM {r.ssim:.4f}  PSNR {r.psnr:6.2f} dB  {path}")
    names = [str(f) for f in files]
    arrays = {"w": torch.stack([r.ws for r in results]).numpy(), "names": np.array(names)}
    arrays.update({f"noise.{k}": torch.stack([r.noise[k] for r in results]).numpy() for k in results[0].noise})
    runs.atomic_write(outdir / "projected_w.npz", lambda tmp: _savez(tmp, arrays))
    save_projection_figure(targets, results, names, outdir / "projections.png")
    mean = lambda key: float(np.mean([getattr(r, key) for r in results]))             # noqa: E731
    summary = {**about, "steps": steps, "w_plus": args.w_plus, "seed": settings.seed,
               "distance": args.distance or "(1 - SSIM) + L1", "label": None if c is None else c[0].tolist(),
               "resized": resized, "ssim_mean": mean("ssim"), "psnr_mean": mean("psnr"),
               "images": [{"name": n, "file": f"projection{i:04d}.png", "ssim": r.ssim, "psnr": r.psnr}
                          for i, (n, r) in enumerate(zip(names, results))]}
    runs.write_text(outdir / "projection.json", json.dumps(summary, indent=1) + "\n")
    print(f"mean  SSIM {summary['ssim_mean']:.4f}  PSNR {summary['psnr_mean']:6.2f} dB  ({len(files)} images, "
          f"{steps} steps, {'W+' if args.w_plus else 'w'})")
    return (f"{len(files)} projections projection0000.png ... (.png, .gif), projections.png, projection.json and "
            f"projected_w.npz")


def read_projected_w(path, G):
    """(ws [N, num_ws, w_dim], noise maps {name: [N, R, R]} or None) from a projected_w.npz; every problem is one
    PredictError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"--projected_w {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise PredictError(f"--projected_w {path}: not a readable .npz file ({e}); give the projected_w.npz "
                           f"that --project wrote") from None
    w = arrays.get("w")
    want = (G.num_ws, G.w_dim)
    if w is None or w.ndim != 3 or w.shape[1:] != want or len(w) == 0:
        got = "no array 'w'" if w is None else f"w of shape {list(w.shape)}"
        raise PredictError(f"--projected_w {path}: {got}; this generator takes w of shape [N, {want[0]}, {want[1]}] "
                           f"(N, num_ws, w_dim): was it projected with another model?")
    shapes = dict(G.synthesis.named_buffers())
    noise = {k[len("noise."):]: v for k, v in arrays.items() if k.startswith("noise.")}
    if noise and (sorted(noise) != sorted(project.noise_names(G)) or
                  any(v.shape != (len(w), *shapes[k].shape) for k, v in noise.items())):
        raise PredictError(f"--projected_w {path}: its noise maps do not match this generator's layers; was it "
                           f"projected with another model?")
    if not all(np.isfinite(a).all() for a in [w, *noise.values()]):
        raise PredictError(f"--projected_w {path}: holds NaN or inf")
    return torch.from_numpy(w).float(), {k: torch.from_numpy(v).float() for k, v in noise.items()} or None


def write_from_projected_w(G, path, outdir: Path, noise_mode: str) -> str:
    ws, noise = read_projected_w(path, G)
    images, labels = project.from_ws(G, ws, noise, noise_mode)
    _remove_stale(outdir, "projected", len(ws))
    for i, image in enumerate(images):
        runs.save_png(_array(image), outdir / f"projected{i:04d}.png")
        if labels is not None:
            runs.save_png(_array(dataset.mask_to_levels(labels[i:i + 1])[0]), outdir / f"projected{i:04d}_seg.png")
    source = "its saved noise maps" if noise is not None and noise_mode == "const" else f"--noise_mode {noise_mode}"
    return f"{len(ws)} images projected0000.png ... from {path} ({source})"


def run(args) -> None:
    check_args(args)
    device = config_lib.resolve_device(args.device)
    default = DEFAULTS["walk_seeds"] if args.interpolate or args.sweep else DEFAULTS["seeds"]
    seeds = parse_seeds(args.seeds if args.seeds is not None else default)
    if (args.score or args.export) and args.seeds is None:
        seeds = list(range(args.num or DEFAULTS["num"]))
    if len(seeds) < 2 and (args.interpolate or args.score):
        raise config_lib.ConfigError(f"--{'interpolate' if args.interpolate else 'score'} needs at least two seeds, "
                                     f"got --seeds {args.seeds}")
    rows = parse_seeds(args.row_seeds or DEFAULTS["row_seeds"], "--row_seeds")
    cols = parse_seeds(args.col_seeds or DEFAULTS["col_seeds"], "--col_seeds")
    G, cfg, state, ckpt = runs.load_generator(runs.best_checkpoint(args.checkpoint) if args.best else args.checkpoint,
                                              device)
    rule = label_rule(cfg, args)                               # also refuses labels an unconditional model
    if args.project and cfg.c_dim and args.class_ is None and args.label is None and args.slice is None:
        raise config_lib.ConfigError("--project with a conditional model needs the slices' label: --label, --slice "
                                     "or --class")
    if rule is not None:
        G.seed_labels = rule
    if args.export:
        runs.check_writable(Path(args.export).resolve().parent, "--export")
    else:
        outdir = runs.check_writable(Path(args.outdir) if args.outdir else ckpt.parent / "predict")
    # Scores and exported data sets sample G's distribution, so each slice gets its own noise (a shared const
    # noise map would give every slice the same fine texture); pictures default to the reproducible const map.
    noise_mode = args.noise_mode or ("random" if args.score or args.export else "const")
    gen = dict(psi=args.trunc, noise_mode=noise_mode, device=device, batch=args.batch)
    if args.interpolate:
        wrote = write_walk(G, seeds, args.frames or DEFAULTS["frames"], outdir, **gen)
    elif args.sweep:
        wrote = write_sweep(G, cfg, seeds, args.steps or DEFAULTS["steps"], outdir, **gen,
                            span=parse_range(args.sweep_range or "0,1"))
    elif args.style_mix:
        wrote = write_style_mix(G, rows, cols, outdir, **gen)
    elif args.score:
        about = {"checkpoint": str(ckpt), "kimg": state.get("cur_nimg", 0) / 1000}
        wrote = write_scores(G, cfg, seeds, args, outdir, about, **gen)
    elif args.project:
        about = {"checkpoint": str(ckpt), "kimg": state.get("cur_nimg", 0) / 1000}
        wrote = write_projections(G, cfg, args, rule([0]).to(device) if rule else None, outdir, about)
    elif args.projected_w:
        wrote = write_from_projected_w(G, args.projected_w, outdir, noise_mode)
    elif args.export:
        outdir = Path(args.export)
        wrote = write_export(G, seeds, outdir, {"checkpoint": str(ckpt), "kimg": state.get("cur_nimg", 0) / 1000},
                             **gen)
    else:
        wrote = write_images(G, seeds, outdir, **gen)
    print(f"wrote {wrote} ({G.img_resolution}x{G.img_resolution} px) to {outdir}")


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 an input cannot be used (one line), 2 a usage error (one line)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(build_parser().parse_args(argv))
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (PredictError, runs.RunError, dataset.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
