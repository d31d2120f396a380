"""Slice stacks: what a slice-position model draws for one latent at every level, skull base to vertex, stacked
into a NIfTI volume (`python predict.py volume`), the figure of its three orthogonal views, and the consistency
of stacks: the mean SSIM of neighbouring slices and how smoothly the brain's outline changes between them.

Owns the plan of a stack (levels, and a spacing from the training data's dataset.json, where the slicer records
its geometry, else DEFAULT_GEOMETRY), slices -> RAS+ NIfTI volume, the orthogonal-view figure, real stacks from
a real set (a subject's slices in position order), stacks of different seeds' slices, and the score. Does not
own sampling the generator (predict.py hands in `render(seed, levels)`), SSIM (metrics.py) or the slicer's
measurements (geometry.py).

A stack's voxel (x, y, k) is pixel (R-1-y, x) of the slice at level k: the slices show anterior up and the
subject's left on the left (volumes.axial_png), so x runs left -> right, y posterior -> anterior and k inferior
-> superior, the RAS+ axes. Spacing: side_mm / resolution in plane; between levels, the brain's axial extent
times the levels' step (positions are fractions of that extent: dataset.py slices, --cond=json) or times the
slicer's range per unit (--cond=slice, whose positions run 0..1 over the range cut).
"""

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import config as config_lib
import metrics
import oasis
import runs

# The demo data's geometry (demo.py: 1 mm voxels, a 176 x 208 mm box padded to a 208 mm square, brains with
# brainstem of median inferior-superior extent AXIAL_EXTENT mm, cut over 0.1-0.9 of it), for a model whose
# training data records none (dataset.json written before the slicer recorded it, or OASIS PNGs).
DEFAULT_GEOMETRY = {"side_mm": 208.0, "axial_extent_mm": 156.0, "range": [0.1, 0.9]}
DEFAULT_SLICES = 32                     # levels per stack without --slices or a recorded count (as OASIS)
VIEW_SEEDS = 4                          # views.png shows the first 4 stacks
OUTLINE_LEVEL = 0.1                     # the brain's outline: smoothed pixels above 10 % of full scale, holes filled
OUTLINE_SIGMA = 1.0                     # px, Gaussian smoothing before the threshold (generated slices are noisy)
SCORE_STACKS = 8                        # stacks that predict.py score draws for the consistency score


@dataclass
class Plan:
    levels: np.ndarray                  # slice positions, lowest first [N]
    pixel_mm: float                     # in-plane spacing of the model's slices
    slice_mm: float                     # spacing between levels
    source: str                         # where the geometry came from, in words


def is_position_model(cfg) -> bool:
    return cfg.c_dim == 1 and cfg.label_names == "slice_position"


def is_stack_model(cfg) -> bool:
    """Conditioned on the slice position first, alone or with subject covariates after it (dataset.py slices
    --csv): a stack varies the position and holds the covariates (--covariates)."""
    names = cfg.label_names.split(",") if cfg.label_names else []
    return cfg.c_dim == len(names) >= 1 and names[0] == "slice_position"


def _read_slicer_info(folder) -> dict:
    """The `slices` record of a dataset.json that `dataset.py slices` wrote (with the labels' position range),
    or {}."""
    path = Path(folder) / oasis.LABELS_FILE if folder else None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, AttributeError):
        return {}
    out = dict(info.get("slices") or {})
    positions = [lab[1][0] for lab in info.get("labels") or [] if isinstance(lab[1], list) and lab[1]]
    if positions and info.get("label_names", [None])[0] == "slice_position":
        out["positions"] = [min(positions), max(positions)]
    return out


def plan(cfg, slices: int = None, span: str = None, data=None) -> Plan:
    """The levels and spacing of the stacks of a slice-position model. slices (default: the training data's count,
    else DEFAULT_SLICES) levels over span 'lo,hi' (default: the trained range of positions, else 0.1-0.9 for
    --cond=json and 0-1 for --cond=slice); the geometry from the dataset.json in data (default: the training
    data folder in the checkpoint's config) when the slicer recorded it there, else DEFAULT_GEOMETRY."""
    usage = config_lib.ConfigError
    if not is_stack_model(cfg):
        raise usage(f"volume needs a model conditioned on the slice position (--cond=slice, or --cond=json on a "
                    f"dataset.py slices folder); this one: {cfg.label_names or 'unconditional'}")
    if cfg.img_channels != 1:
        raise usage(f"volume stacks grayscale slices; this model draws {cfg.img_channels} channels")
    info = _read_slicer_info(data or cfg.data)
    count = slices if slices is not None else info.get("count") or DEFAULT_SLICES
    if count < 2:
        raise usage(f"--slices must be >= 2, got {count}")
    if span is None:
        trained = (0.0, 1.0) if cfg.cond == "slice" else info.get("positions") or DEFAULT_GEOMETRY["range"]
        lo, hi = trained
    else:
        try:
            lo, hi = (float(v) for v in span.split(","))
        except ValueError:
            lo = hi = -1.0
        if not 0 <= lo < hi <= 1:
            raise usage(f"--range must be lo,hi with 0 <= lo < hi <= 1, got {span!r}")
    geometry = info.get("geometry")
    source = f"{Path(data or cfg.data) / oasis.LABELS_FILE}"
    if not geometry:
        geometry, source = DEFAULT_GEOMETRY, "the default (the demo data's geometry: no dataset.json records one)"
    per_unit = geometry["axial_extent_mm"]                      # mm per unit of position (--cond=json)
    if cfg.cond == "slice":                                     # positions 0..1 over the range the slicer cut
        cut = info.get("range") if "geometry" in info else DEFAULT_GEOMETRY["range"]
        per_unit *= cut[1] - cut[0]
    return Plan(np.linspace(lo, hi, count), geometry["side_mm"] / cfg.resolution, per_unit * (hi - lo) / (count - 1),
                source)


# ----------------------------------------------------------------------------------------------
# Stacks as volumes and figures

def to_volume(slices: np.ndarray) -> np.ndarray:
    """Slices [N, R, R] (anterior up, the subject's left on the left) -> a RAS+ volume [R, R, N]."""
    return np.ascontiguousarray(slices[:, ::-1, :].transpose(2, 1, 0))      # [x, y, k] = slice k [R-1-y, x]


def nifti(volume: np.ndarray, pixel_mm: float, slice_mm: float):
    """A NIfTI image of a RAS+ volume [X, Y, Z] with the given spacing, centred on the origin."""
    import nibabel
    spacing = np.array([pixel_mm, pixel_mm, slice_mm])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(volume.shape) - 1) / 2
    image = nibabel.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    return image


def save_nifti(image, path) -> Path:
    """A .nii.gz written atomically (the same bytes for the same image: gzip without a time stamp)."""
    return runs.atomic_write(path, lambda tmp: Path(tmp).write_bytes(gzip.compress(image.to_bytes(), mtime=0)))


def orthogonal_views(volume: np.ndarray) -> list:
    """The axial, coronal and sagittal planes through the centre of a RAS+ volume [X, Y, Z], each as shown:
    anterior (axial) or superior (coronal, sagittal) up, the subject's left or posterior on the left."""
    x, y, z = (n // 2 for n in volume.shape)
    return [volume[:, :, z].T[::-1], volume[:, y, :].T[::-1], volume[x, :, :].T[::-1]]


def save_views(rows: list, pixel_mm: float, slice_mm: float, path, title: str = "") -> Path:
    """A figure of (name, RAS+ volume) rows, each with its axial, coronal and sagittal view at true aspect."""
    plt = runs.pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for i, (name, volume) in enumerate(rows):
        for j, (plane, view) in enumerate(zip(orthogonal_views(volume), ("axial", "coronal", "sagittal"))):
            ax = axes[i, j]
            ax.imshow(plane, cmap="gray", vmin=0, vmax=255, aspect=1 if j == 0 else slice_mm / pixel_mm,
                      interpolation="nearest")
            ax.set_title(f"{name}: {view}", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return runs.save_figure(fig, path, dpi=110)


def write_volumes(render, seeds, stack_plan: Plan, outdir: Path, about: dict) -> str:
    """Per seed, seed<NNNN>.nii.gz (uint8 [R, R, N], RAS+), with masks seed<NNNN>_seg.nii.gz (classes 0..3:
    background, CSF, grey matter, white matter), seed<NNNN>_views.png; views.png of the first VIEW_SEEDS and
    volume.json with the plan. render(seed, levels) -> (uint8 images [N, 1, R, R], labels [N, R, R] or None)."""
    p = stack_plan
    shown = []
    for seed in seeds:
        images, labels = render(seed, p.levels)
        volume = to_volume(images[:, 0].numpy())
        save_nifti(nifti(volume, p.pixel_mm, p.slice_mm), outdir / f"seed{seed:04d}.nii.gz")
        if labels is not None:
            save_nifti(nifti(to_volume(labels.numpy()), p.pixel_mm, p.slice_mm), outdir / f"seed{seed:04d}_seg.nii.gz")
        save_views([(f"seed {seed}", volume)], p.pixel_mm, p.slice_mm, outdir / f"seed{seed:04d}_views.png")
        if len(shown) < VIEW_SEEDS:
            shown.append((f"seed {seed}", volume))
    save_views(shown, p.pixel_mm, p.slice_mm, outdir / "views.png",
               f"{len(p.levels)} levels {p.levels[0]:.2f}-{p.levels[-1]:.2f}, one latent each")
    runs.write_text(outdir / "volume.json", json.dumps({
        **about, "seeds": list(seeds), "levels": [round(float(v), 6) for v in p.levels], "shape": list(volume.shape),
        "spacing_mm": [p.pixel_mm, p.pixel_mm, p.slice_mm], "orientation": "RAS+", "geometry_from": p.source},
        indent=1) + "\n")
    return (f"{len(seeds)} stacks seed{seeds[0]:04d}.nii.gz ... ({' x '.join(map(str, volume.shape))} voxels of "
            f"{p.pixel_mm:.3g} x {p.pixel_mm:.3g} x {p.slice_mm:.3g} mm, geometry from {p.source})"
            + (", their masks _seg.nii.gz" if labels is not None else "") + ", seed<NNNN>_views.png and views.png")


# ----------------------------------------------------------------------------------------------
# Consistency of stacks

def outlines(images: torch.Tensor) -> np.ndarray:
    """The brain's outline of each slice: float [N, R, R] in [0, 1] -> bool [N, R, R], the smoothed slice above
    OUTLINE_LEVEL with its holes (dark CSF inside the brain) filled."""
    from scipy import ndimage
    smooth = ndimage.gaussian_filter(images.numpy().astype(np.float64), sigma=(0, OUTLINE_SIGMA, OUTLINE_SIGMA))
    return np.stack([ndimage.binary_fill_holes(m) for m in smooth > OUTLINE_LEVEL])


def consistency(stack: torch.Tensor) -> dict:
    """uint8 stacks [S, N, C, R, R] (levels in order) -> the mean SSIM of neighbouring slices (metrics.ssim) and
    the mean Dice of neighbouring slices' brain outlines (1 where both are empty), over all S * (N - 1) pairs."""
    s, n = stack.shape[:2]
    x = stack.float() / 255
    ssim = metrics.ssim(x[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1))                    # [S * (N - 1)]
    masks = outlines(x[:, :, 0].flatten(0, 1)).reshape(s, n, *stack.shape[-2:])
    a, b = masks[:, :-1], masks[:, 1:]
    both = (a & b).sum(axis=(2, 3))
    total = a.sum(axis=(2, 3)) + b.sum(axis=(2, 3))
    dice = np.where(total > 0, 2 * both / np.maximum(total, 1), 1.0)
    return {"neighbour_ssim": float(ssim.mean()), "outline_dice": float(dice.mean())}


def mixed(stack: torch.Tensor) -> torch.Tensor:
    """Stacks whose neighbouring slices come from different stacks: level k of stack j is level k of stack
    (j + k) mod S. [S, N, ...] -> [S, N, ...]; S >= 2."""
    s, n = stack.shape[:2]
    rows = (torch.arange(s)[:, None] + torch.arange(n)[None]) % s                          # [S, N]
    return stack[rows, torch.arange(n)[None].expand(s, n)]


def real_stacks(images: torch.Tensor, names: list, positions=None):
    """Real subjects' slices in position order: uint8 [S, N, C, R, R] of the subjects (OASIS names
    case_XXX_slice_K) that have the most common slice count N >= 2, ordered by positions [M] (else by K); and
    their positions [N] (of the first subject). None without OASIS names or such subjects."""
    cases = {}
    for i, name in enumerate(names):
        found = oasis.case_and_slice(name)
        if found is None:
            return None
        key = float(positions[i]) if positions is not None else found[1]
        cases.setdefault(found[0], []).append((key, i))
    counts = [len(v) for v in cases.values()]
    n = max(set(counts), key=lambda c: (counts.count(c), c)) if counts else 0
    if n < 2:
        return None
    chosen = [sorted(v) for _, v in sorted(cases.items()) if len(v) == n]
    order = torch.tensor([[i for _, i in v] for v in chosen])                             # [S, N]
    levels = np.array([k for k, _ in chosen[0]], dtype=np.float64)
    return images[order], levels


def stack_scores(render, seeds, images: torch.Tensor, names: list, positions=None) -> dict:
    """The consistency of SCORE_STACKS generated stacks (the first seeds, each drawn at the levels of the first
    real subject), of the real subjects' stacks and of stacks mixed from different seeds' slices (a floor):
    stack_ssim, real_stack_ssim, mixed_stack_ssim, stack_outline_dice, real_..., mixed_..., stack_counts.
    {} where the real slices give no stacks (real_stacks)."""
    found = real_stacks(images, names, positions)
    if found is None or len(seeds) < 2:
        return {}
    real, levels = found
    generated = torch.stack([render(s, levels)[0] for s in seeds[:SCORE_STACKS]])          # [S, N, C, R, R]
    out = {}
    for prefix, stack in (("", generated), ("real_", real), ("mixed_", mixed(generated))):
        score = consistency(stack)
        out[f"{prefix}stack_ssim"], out[f"{prefix}stack_outline_dice"] = score["neighbour_ssim"], score["outline_dice"]
    out["stack_counts"] = {"generated": len(generated), "real": len(real), "levels": len(levels)}
    return out


def add_arguments(p) -> None:
    """The options of `python predict.py volume` beside the common ones."""
    p.add_argument("--slices", type=int, help=f"levels per stack (default: the training data's slices per "
                                              f"subject, else {DEFAULT_SLICES})")
    p.add_argument("--range", help="the positions stacked, lo,hi (default: the trained range)")
    p.add_argument("--data", help="a dataset.py slices folder whose dataset.json gives the geometry (default: the "
                                  "checkpoint's training data)")
    p.add_argument("--covariates", default="", help="a model also conditioned on subject covariates (dataset.py "
                                                    "slices --csv): their values for every stack, name=v,... as in "
                                                    "the CSV (e.g. age=72,sex=1)")
