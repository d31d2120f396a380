"""Sampling and scoring a trained generator: slices per seed, latent walks, style-mixing figures, slice-position
sweeps, scores against real slices, projections of real slices and synthetic data sets. One subcommand each:

    python predict.py images --checkpoint runs/00000-demo                  # seeds 0-15: seed0000.png ... grid.png
    python predict.py images --checkpoint runs/00000-demo/snapshot-000012.pt --seeds 0-9,20 --trunc 0.7
    python predict.py interpolate --checkpoint runs/00000-demo --seeds 0-3 --frames 24
    python predict.py style_mix --checkpoint runs/00000-demo --row_seeds 0-3 --col_seeds 4-7
    python predict.py sweep --checkpoint runs/00000-slice --seeds 0-3 --positions 8
    python predict.py score --checkpoint runs/00000-demo --real data/demo [--inception FILE]
    python predict.py project slice.png more_slices/ --checkpoint runs/00000-demo [--steps 1000 --w_plus]
    python predict.py from_w runs/00000-demo/predict/projected_w.npz --checkpoint runs/00000-demo
    python predict.py export synthetic/ --checkpoint runs/00000-masks --num 1000
    python predict.py volume --checkpoint runs/00000-slice --seeds 0-3 [--slices 32]      # stacks.py: NIfTI stacks

`python predict.py MODE --help` lists a mode's options. Options are spelled with underscores like train.py's;
the hyphenated spellings (--row-seeds) work too. The single-command spellings of earlier versions still work:
with no mode the command is `images`, and --interpolate, --style_mix, --sweep, --score, --volume, --project A B,
--projected_w FILE and --export DIR select the mode wherever they stand.

Owns: the command line, seed -> z, generation, interpolation, style mixing, sweeps, the real sets and labels
that `score` samples with, synthetic data sets, and the output files except the projections'. Does not own the
labels asked of a conditional model (conditioning.py), the scores (scoring.py) or their mathematics (metrics.py),
the projection and its files (project.py), the networks (modules.py), checkpoints and file writing (runs.py) or
decoding (dataset.py).

--checkpoint is a checkpoint file or a run folder (its checkpoint.pt, else its highest-kimg snapshot).
Output goes to <folder of the checkpoint>/predict unless --outdir is given; only this program's own names
there are rewritten (seed<NNNN>.png, grid.png, frame<NNNN>.png, interpolation.gif, stylemix-<band>.png,
sweep.png, scores.json, closest_pairs.png, projection<NNNN>.png / .gif, projections.png, projection.json,
projected_w.npz, projected<NNNN>.png, seed<NNNN>.nii.gz / _seg.nii.gz / _views.png, views.png, volume.json).
Seed s gives z = np.random.RandomState(s).randn(1, z_dim), as in the official StyleGAN2-ADA tools; with
--noise_mode random each image is made alone, torch seeded by its seed.
score: the reference is the train split; the held-out baseline is validate (else test), or a random 10 %
(seed 0) of a plain image folder. FID / KID need --inception inception-2015-12-05.pt, the TorchScript
Inception-v3 of the StyleGAN2-ADA metrics; nothing is downloaded.
project: each image (files, or folders searched recursively) is decoded as the training data was (grayscale,
crop or pad as the model's --fit, Lanczos resize) and projected by project.py, whose docstring gives the method
and the files; from_w FILE makes projected<NNNN>.png (and _seg.png) from the projected_w.npz it wrote: the
same images, bit for bit.
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
from tqdm import tqdm

import errors
import conditioning
import config as config_lib
import dataset
import metrics
import modules
import oasis
import project
import runs
import scoring
import stacks

GRID_MAX = 64                           # grid.png shows at most the first 64 images (8 x 8)
OVERLAY_MAX = 16                        # overlay.png shows at most the first 16 image / mask pairs
EXPORT_SLICES = 32                      # export: slices per synthetic case, as in OASIS
EXPORT_PARTIAL = ".partial-"            # export DIR is built in .DIR.partial-<pid> beside it, then renamed
CLOSEST_PAIRS = 8                       # generated / real pairs in closest_pairs.png
DIVERSITY_PAIRS = 500                   # random pairs for the SSIM / MS-SSIM diversity
MAX_SEEDS = 1_000_000                   # a typo like 0-99999999 should not fill the memory


class PredictError(errors.ProjectError):
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
    """ws of seeds; a conditional G takes each seed's label from G.seed_labels (conditioning.label_rule)."""
    z = torch.cat([z_from_seed(s, G.z_dim) for s in seeds]).to(device)               # [N, z_dim]
    c = G.seed_labels(seeds).to(device) if getattr(G, "c_dim", 0) else None          # [N, c_dim]
    cs = c.split(batch) if c is not None else [None] * len(z.split(batch))
    return torch.cat([G.mapping(zb, cb, truncation_psi=psi) for zb, cb in zip(z.split(batch), cs)])


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


def render_stack(G, seed, levels, psi, noise_mode, device, batch, covariates=()):
    """One seed's slices at every slice position in levels [N], from one latent and one noise draw, each slice
    also given the covariates (a model conditioned on more than the position):
    (uint8 images [N, C, R, R], labels [N, R, R] or None)."""
    rows = [[float(level), *covariates] for level in levels]
    G.seed_labels = lambda s: torch.tensor(rows, dtype=torch.float32)
    return generate(G, [seed] * len(levels), psi, noise_mode, device, batch, with_labels=True)


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
    if cfg.cond == "slice" and not (Path(real) / f"{oasis.OASIS_PREFIX}train").is_dir():
        return None
    return names.index("slice_position")


# ----------------------------------------------------------------------------------------------
# Files: PNG, GIF, figures, JSON, each written atomically by runs.py (GIFs and image arrays by project.py)

def save_closest_pairs(generated: torch.Tensor, reference: torch.Tensor, closest, seeds, names, path: Path) -> None:
    plt = runs.pyplot()
    fig, axes = plt.subplots(2, len(closest), figsize=(1.8 * len(closest), 4.8), squeeze=False)
    for j, (g, r, s) in enumerate(closest):
        for ax, image, title in ((axes[0, j], generated[g], f"seed {seeds[g]}\nSSIM {s:.3f}"),
                                 (axes[1, j], reference[r], Path(names[r]).name.replace(".nii.png", "")[-20:])):
            ax.imshow(project.image_array(image), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("closest pairs by SSIM: generated (top), training slice (bottom)", fontsize=9)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------
# Writers: one per mode (the projection's are in project.py)

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
            runs.save_png(project.image_array(image), outdir / f"seed{s:04d}.png")
            if labels is not None:
                runs.save_png(project.image_array(dataset.mask_to_levels(labels[k:k + 1])[0]),
                              outdir / f"seed{s:04d}_seg.png")
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


def export_target(outdir: Path) -> Path:
    """export DIR, checked before the generator is loaded: a new or empty folder in a writable place. The
    temporary folders .DIR.partial-<pid> that killed exports to DIR left beside it (their process is gone) are
    removed first."""
    runs.check_writable(outdir.resolve().parent, "export")
    prefix = f".{outdir.name}{EXPORT_PARTIAL}"
    for p in outdir.resolve().parent.iterdir():
        pid = p.name[len(prefix):] if p.name.startswith(prefix) else ""
        if pid.isdigit() and p.is_dir() and (int(pid) == os.getpid() or not runs._alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            print(f"removed {p}, left by an export that was killed", file=sys.stderr)
    if outdir.exists() and not outdir.is_dir():
        raise PredictError(f"export {outdir}: is a file, not a folder; give a new folder (nothing is overwritten)")
    if outdir.is_dir() and any(outdir.iterdir()):
        raise PredictError(f"export {outdir}: exists and is not empty; give a new folder (nothing is overwritten)")
    return outdir


def write_export(G, seeds, outdir: Path, about: dict, psi, noise_mode, device, batch) -> str:
    """A synthetic data set in the OASIS layout: keras_png_slices_train/case_XXX_slice_K.nii.png and, with
    masks, keras_png_slices_seg_train/seg_XXX_slice_K.nii.png (seed s is slice s % 32 of case s // 32 + 1),
    plus export.json saying where it came from. Built in a temporary folder and renamed into place (outdir:
    checked by export_target)."""
    tmp = outdir.with_name(f".{outdir.name}{EXPORT_PARTIAL}{os.getpid()}")
    img_dir = tmp / f"{oasis.OASIS_PREFIX}train"
    seg_dir = tmp / f"{oasis.OASIS_PREFIX}seg_train"
    try:
        img_dir.mkdir(parents=True)
        if G.mask_classes:
            seg_dir.mkdir()
        for chunk, images, labels in tqdm(stream(G, seeds, psi, noise_mode, device, batch), desc="export",
                                          total=math.ceil(len(seeds) / batch), unit="batch", file=sys.stderr):
            for k, s in enumerate(chunk):
                case, k_slice = s // EXPORT_SLICES + 1, s % EXPORT_SLICES
                runs.save_png(project.image_array(images[k]), img_dir / f"case_{case:03d}_slice_{k_slice}.nii.png")
                if labels is not None:
                    runs.save_png(project.image_array(dataset.mask_to_levels(labels[k:k + 1])[0]),
                                  seg_dir / f"seg_{case:03d}_slice_{k_slice}.nii.png")
        runs.write_text(tmp / "export.json", json.dumps(dict(about, num=len(seeds), seeds=f"{seeds[0]}-{seeds[-1]}",
                                                               trunc=psi, noise_mode=noise_mode,
                                                               masks=bool(G.mask_classes)), indent=1) + "\n")
        if outdir.exists():
            outdir.rmdir()                                    # empty (export_target checked it)
        os.replace(tmp, outdir)
    except OSError as e:                                      # the folders themselves (a full disk, no permission)
        raise runs.write_error(outdir, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = "images and masks" if G.mask_classes else "images (an image-only generator: no masks)"
    return f"{len(seeds)} synthetic {what} in the OASIS layout ({img_dir.name})"


def write_sweep(G, cfg, seeds, positions: int, outdir: Path, psi, noise_mode, device, batch, span=(0.0, 1.0)) -> str:
    """sweep.png: one row per seed, one column per label: the slice position from span[0] (lowest) to span[1],
    or each class; everything else fixed."""
    names = cfg.label_names.split(",") if cfg.label_names else []
    if names == ["slice_position"]:
        columns = [[float(v)] for v in np.linspace(*span, positions)]
        what = f"slice positions {', '.join(f'{c[0]:.2f}' for c in columns)}"
    elif names and all(n.startswith("class_") for n in names):
        columns = [[float(i == k) for i in range(cfg.c_dim)] for k in range(cfg.c_dim)]
        what = f"classes 0..{cfg.c_dim - 1}"
    else:
        raise config_lib.ConfigError("sweep needs a model conditioned on the slice position or on classes "
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
    project.remove_stale(outdir, "frame", len(images))        # a longer earlier walk's frames would mix in
    for i, image in enumerate(images):
        runs.save_png(project.image_array(image), outdir / f"frame{i:04d}.png")
    project.save_gif(images, outdir / "interpolation.gif")
    return f"{len(images)} frames frame0000.png ... and interpolation.gif"


def write_style_mix(G, rows, cols, outdir: Path, **gen) -> str:
    bands = style_bands(G.num_ws)
    for name, layers in bands.items():
        runs.save_grid(style_mix_grid(G, rows, cols, layers, **gen), outdir / f"stylemix-{name}.png", len(cols) + 1)
    missing = "" if "fine" in bands else f" (a {G.img_resolution} px generator has no fine, 64 px+, layers)"
    return ", ".join(f"stylemix-{b}.png (ws {lo}-{hi - 1})" for b, (lo, hi) in bands.items()) + missing


def write_scores(G, cfg, seeds, args, outdir: Path, about: dict, psi, noise_mode, device, batch) -> str:
    """scores.json and closest_pairs.png (scoring.py's scores). Everything is read and checked before the first
    image is generated."""
    try:
        model = metrics.load_inception(args.inception, device, "--inception") if args.inception else None
    except ValueError as e:
        raise PredictError(str(e)) from None
    column = position_column(cfg, args.real)
    real = load_real(args.real, cfg, args.max_real, skip_bad=args.skip_bad, log=lambda m: print(m, file=sys.stderr),
                     cond=cfg.cond if column is not None else "none")
    info = real.info
    if (column is not None and args.class_ is None and args.label is None and args.slice is None
            and real.labels.shape[1] == cfg.c_dim):
        # As in training, each seed gets the labels of a random real slice (seeded), so the sample follows the
        # data's positions (a uniform draw over [0, 1] would ask for levels the data may not have).
        G.seed_labels = lambda s: torch.from_numpy(real.labels[[int(np.random.default_rng([x, 1]).integers(
            len(real.labels))) for x in s]])
        info = {**info, "labels": "those of random reference slices (seeded by the seed)"}
    generated = generate(G, seeds, psi, noise_mode, device, batch)
    asked = G.seed_labels(seeds)[:, column].numpy() if column is not None else None
    scorer = scoring.Scorer(real, device, model, batch, pairs=DIVERSITY_PAIRS, closest=CLOSEST_PAIRS,
                            position_column=column)
    try:
        scores = scorer(generated, asked)
    except metrics.FeatureError as e:
        raise PredictError(f"--inception {args.inception}: {e}") from None
    closest = scores.pop("closest")
    del scores["nearest_index"], scores["heldout_nearest_index"]
    save_closest_pairs(generated, real.reference, closest, seeds, real.names, outdir / "closest_pairs.png")
    if stacks.is_position_model(cfg):                        # the consistency of stacks along the levels
        positions = None if column is None else real.labels[:, column]
        scores.update(stacks.stack_scores(lambda s, lv: render_stack(G, s, lv, psi, noise_mode, device, batch), seeds,
                                          real.reference, real.names, positions))
    result = {**about, "real": str(args.real), **info, "num_generated": len(seeds),
              "seeds": args.seeds or f"0-{len(seeds) - 1}", "trunc": psi, "noise_mode": noise_mode, **scores,
              "closest_pairs": [{"seed": seeds[g], "real": real.names[r], "ssim": s} for g, r, s in closest]}
    runs.write_text(outdir / "scores.json", json.dumps(result, indent=1) + "\n")
    print(scoring.format_table(scores))
    if model is None:
        print("FID/KID skipped: pass --inception inception-2015-12-05.pt (TorchScript Inception-v3) to add them")
    return "scores.json and closest_pairs.png"


# ----------------------------------------------------------------------------------------------
# main

MODES = {"images": "seed<NNNN>.png per seed and grid.png (with masks _seg.png and overlay.png); the default mode",
         "interpolate": "a latent walk through the seeds: frame<NNNN>.png and interpolation.gif",
         "style_mix": "style-mixing figures stylemix-<band>.png",
         "sweep": "a model conditioned on the slice position or on classes: sweep.png, one row per seed, the columns "
                  "sweeping the position (or the classes)",
         "score": "scores.json and closest_pairs.png against the real slices of --real",
         "project": "find the latents of real slices: projection<NNNN>.png / .gif, projections.png, projection.json "
                    "and projected_w.npz",
         "from_w": "images projected<NNNN>.png from a projected_w.npz that `project` wrote",
         "export": "a synthetic data set in the OASIS layout (images and, for a --masks model, their masks) in a new "
                   "folder DIR",
         "volume": "a slice-position model: per seed one latent's slices over the trained levels as a NIfTI stack "
                   "seed<NNNN>.nii.gz (with masks _seg.nii.gz), seed<NNNN>_views.png, views.png, volume.json"}
OLD_FLAGS = {"--interpolate": "interpolate", "--style_mix": "style_mix", "--sweep": "sweep", "--score": "score",
             "--volume": "volume"}
OLD_VALUE_FLAGS = {"--project": "project", "--projected_w": "from_w", "--export": "export"}   # they take values


def translate_argv(argv) -> list:
    """Earlier versions' single-command spellings -> a mode and its options: with no mode, `images`;
    --interpolate, --style_mix, --sweep or --score anywhere -> that mode; --project A B, --projected_w F and
    --export D -> `project A B`, `from_w F` and `export D`. An argv that starts with a word (a mode, or a
    misspelt one for argparse to name), or asks for help, is left as it is. Hyphenated spellings are read as
    underscores first."""
    argv = config_lib.normalize_argv(argv)
    if not argv or not argv[0].startswith("-") or argv[0] in ("-h", "--help"):
        return argv
    found, rest, i = [], [], 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if key in OLD_FLAGS and not eq:
            found.append((key, [OLD_FLAGS[key]]))
        elif key in OLD_VALUE_FLAGS:
            values = [value] if eq else []
            while (not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-")
                   and (key == "--project" or not values)):               # --project takes one or more
                i += 1
                values.append(argv[i])
            found.append((key, [OLD_VALUE_FLAGS[key], *values]))
        else:
            rest.append(argv[i])
        i += 1
    if len(found) > 1:
        raise config_lib.ConfigError(f"{found[0][0]} and {found[1][0]} choose two modes; give one "
                                     f"(python predict.py --help lists the modes)")
    return (found[0][1] if found else ["images"]) + rest


def at_least(least: int, below: int = None):
    """An argparse type: an integer >= least (and < below)."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < least or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}" if below is None else
                                             f"must be in [{least}, {below}), got {value}")
        return value
    return integer


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (1 = no truncation), got {text}")
    return value


def span(text: str) -> tuple:
    """'lo,hi' with 0 <= lo < hi <= 1."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 <= lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"must be lo,hi with 0 <= lo < hi <= 1, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """One subparser per mode, each with only the options it uses (modes: the subparsers by name)."""
    # No abbreviations: with modes apart, `images --seed 3` would otherwise be read as --seeds 3.
    top = config_lib.Parser(prog="predict.py", description=__doc__, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="mode", required=True, metavar="MODE", parser_class=config_lib.Parser)
    top.modes = modes = {name: sub.add_parser(name, help=text, description=text, allow_abbrev=False)
                         for name, text in MODES.items()}
    for name, p in modes.items():
        p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run folder (its latest checkpoint)")
        p.add_argument("--best", action="store_true", help="with a run folder: its best snapshot by the scores "
                                                           "tracked while training (best.json)")
        p.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda or cuda:N")
        if name != "export":
            p.add_argument("--outdir", help="output folder (default <folder of the checkpoint>/predict)")
        if name != "project":
            sampled = name in ("score", "export")     # G's distribution: each slice its own noise, seeded by its seed
            p.add_argument("--noise_mode", choices=modules.NOISE_MODES, default="random" if sampled else "const",
                           help=f"per-pixel noise: const | random | none (default {'random' if sampled else 'const'})")
        if name not in ("project", "from_w"):
            p.add_argument("--trunc", type=finite, default=1.0, help="truncation psi (1 = off; 0.5-0.7 trades "
                                                                     "variety for typicality)")
            p.add_argument("--batch", type=at_least(1), default=16, help="images per forward pass (default 16)")
        if name not in ("sweep", "from_w", "volume"):
            label = p.add_mutually_exclusive_group()
            label.add_argument("--class", dest="class_", metavar="CLASS", type=int, help="a class model: this class (0, 1, ...)")
            label.add_argument("--label", help="a conditional model: the label as numbers v1,v2,... (c_dim values)")
            label.add_argument("--slice", type=float, help="a slice-position model: the axial position in [0, 1]")
    for name, default in (("images", "0-15"), ("interpolate", "0-3"), ("sweep", "0-3"), ("volume", "0-3")):
        modes[name].add_argument("--seeds", default=default, help=f"seeds like 0-9,20,30-32 (default {default})")
    for name in ("score", "export"):
        count = modes[name].add_mutually_exclusive_group()
        count.add_argument("--num", type=at_least(2), default=1000, help="generated images, seeds 0..num-1 "
                                                                          "(default 1000)")
        count.add_argument("--seeds", help="seeds like 0-9,20,30-32 instead of --num")
    modes["interpolate"].add_argument("--frames", type=at_least(1), default=24, help="frames per pair of seeds "
                                                                                      "(default 24)")
    modes["style_mix"].add_argument("--row_seeds", default="0-3", help="seeds of the rows (default 0-3)")
    modes["style_mix"].add_argument("--col_seeds", default="4-7", help="seeds whose layers are swapped in "
                                                                       "(default 4-7)")
    p = modes["sweep"]
    p.add_argument("--positions", "--steps", dest="positions", type=at_least(2), default=8,
                   help="slice positions from lo to hi (default 8; --steps is the earlier spelling)")
    p.add_argument("--sweep_range", type=span, default=(0.0, 1.0), help="the slice positions swept, lo,hi "
                                                                        "(default 0,1; a dataset.py slices data set "
                                                                        "holds 0.1,0.9)")
    p = modes["score"]
    p.add_argument("--real", required=True, help="an OASIS folder (keras_png_slices_*) or a folder of images")
    p.add_argument("--skip_bad", action="store_true", help="skip unreadable files in --real with a warning")
    p.add_argument("--max_real", type=at_least(2), help="cap on the training slices used (default all)")
    p.add_argument("--inception", help="inception-2015-12-05.pt (TorchScript) to add FID and KID")
    p = modes["project"]
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched "
                                                                        "recursively")
    p.add_argument("--steps", type=at_least(1), default=1000, help="optimization steps (default 1000)")
    p.add_argument("--w_plus", action="store_true", help="one w per layer (W+) instead of one w")
    p.add_argument("--seed", type=at_least(0, 2 ** 32), default=0, help="seed of the noise maps and the w noise (default 0)")
    p.add_argument("--distance", metavar="FILE", help="a TorchScript feature network (float [N, 3, H, W] in "
                                                      "0..255 -> features) instead of (1 - SSIM) + L1")
    modes["from_w"].add_argument("file", metavar="FILE", help="a projected_w.npz that `project` wrote")
    modes["export"].add_argument("dir", metavar="DIR", help="a new folder (or an empty one)")
    stacks.add_arguments(modes["volume"])
    return top


def parse_args(argv) -> argparse.Namespace:
    """argv in either spelling (translate_argv) -> the mode's options. An option of another mode is one
    ConfigError line that names the modes it belongs to."""
    parser = build_parser()
    args, extra = parser.parse_known_args(translate_argv(argv))
    if extra:
        option = next((a.partition("=")[0] for a in extra if a.startswith("--")), None)
        owners = [name for name, p in parser.modes.items() if option in p._option_string_actions]
        if owners:
            raise config_lib.ConfigError(f"{option} is not an option of {args.mode}; it belongs to {', '.join(owners)} "
                                         f"(python predict.py {args.mode} --help lists its options)")
        raise config_lib.ConfigError(f"unrecognized arguments: {' '.join(extra)} (see python predict.py "
                                     f"{args.mode} --help)")
    return args


def run(args) -> None:
    """Check what can be checked before loading anything, load the generator, run the mode."""
    mode = args.mode
    device = config_lib.resolve_device(args.device)
    seeds = None
    if getattr(args, "seeds", None) is not None or getattr(args, "num", None) is not None:
        if args.seeds is None and args.num > MAX_SEEDS:
            raise config_lib.ConfigError(f"--num {args.num}: more than {MAX_SEEDS:,} seeds")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else list(range(args.num))
        if len(seeds) < 2 and mode in ("interpolate", "score"):
            raise config_lib.ConfigError(f"{mode} needs at least two seeds, got --seeds {args.seeds}")
    if mode == "style_mix":
        rows, cols = parse_seeds(args.row_seeds, "--row_seeds"), parse_seeds(args.col_seeds, "--col_seeds")
    if mode == "export":
        outdir = export_target(Path(args.dir))
    G, cfg, state, ckpt = runs.load_generator(runs.best_checkpoint(args.checkpoint) if args.best else args.checkpoint,
                                              device)
    rule = conditioning.label_rule(cfg, args) if hasattr(args, "label") else None   # also refuses labels an unconditional model
    if mode == "project" and cfg.c_dim and args.class_ is None and args.label is None and args.slice is None:
        raise config_lib.ConfigError("project with a conditional model needs the slices' label: --label, --slice "
                                     "or --class")
    if rule is not None:
        G.seed_labels = rule
    if mode == "volume":                                 # checked before any folder is made
        stack_plan = stacks.plan(cfg, args.slices, args.range, args.data)
        covariates = conditioning.stack_covariates(cfg, args.covariates)
    if mode != "export":
        outdir = runs.check_writable(Path(args.outdir) if args.outdir else ckpt.parent / "predict")
    about = {"checkpoint": str(ckpt), "kimg": state.get("cur_nimg", 0) / 1000}
    gen = dict(psi=getattr(args, "trunc", 1.0), noise_mode=getattr(args, "noise_mode", "const"), device=device,
               batch=getattr(args, "batch", 16))
    if mode == "images":
        wrote = write_images(G, seeds, outdir, **gen)
    elif mode == "interpolate":
        wrote = write_walk(G, seeds, args.frames, outdir, **gen)
    elif mode == "style_mix":
        wrote = write_style_mix(G, rows, cols, outdir, **gen)
    elif mode == "sweep":
        wrote = write_sweep(G, cfg, seeds, args.positions, outdir, **gen, span=args.sweep_range)
    elif mode == "score":
        wrote = write_scores(G, cfg, seeds, args, outdir, about, **gen)
    elif mode == "project":
        settings = project.Settings(steps=args.steps, w_plus=args.w_plus, seed=args.seed,
                                    frame_every=max(1, args.steps // project.GIF_FRAMES))
        wrote = project.write_projections(G, cfg, args.images, settings, rule([0]).to(device) if rule else None,
                                          outdir, about, args.distance)
    elif mode == "volume":
        if covariates:
            about["covariates"] = dict(zip(cfg.label_names.split(",")[1:], covariates))
        wrote = stacks.write_volumes(lambda s, lv: render_stack(G, s, lv, **gen, covariates=covariates), seeds,
                                     stack_plan, outdir, about)
    elif mode == "from_w":
        wrote = project.write_from_projected_w(G, args.file, outdir, args.noise_mode)
    else:
        wrote = write_export(G, seeds, outdir, about, **gen)
    print(f"wrote {wrote} ({G.img_resolution}x{G.img_resolution} px) to {outdir}")


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 an input cannot be used (one line), 2 a usage error (one line)."""
    return errors.run_main(lambda a: run(parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
