"""From scanner volumes to training slices: NIfTI (.nii, .nii.gz) and Analyze (.hdr + .img) volumes, with
optional tissue label maps, cut into axial slices in the OASIS layout (`python dataset.py slices`).

Owns reading a volume with nibabel, reorienting it to RAS+ (nibabel.as_closest_canonical: the third axis runs
inferior -> superior, so axial slices are data[:, :, k]), choosing N slices over a range of the brain's
axial extent, robust intensity normalization, crop or pad to a square, resizing, mapping label values to
the OASIS classes (0/85/170/255), the split by subject and dataset.json (each slice's axial position in
[0, 1] and any per-subject covariates from a CSV). Does not own the OASIS file and folder names (oasis.py)
or reading the PNG slices back (dataset.py).

Intensity normalization: within the brain (voxels above zero), the 0.5th and 99.5th percentiles of the
whole volume map to 0 and 255 and values outside are clipped; outside the brain stays 0. Percentiles of the
volume, not of each slice, keep the contrast between slices of one subject.
"""

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import config as config_lib
import oasis
import runs
from oasis import MASK_LEVELS, DataError

VOLUME_EXTS = (".nii.gz", ".nii", ".hdr")
SEG_SUFFIXES = ("", "_seg", "_fseg", "_labels", "_label", "_mask")   # label map = volume stem + one of these
DEFAULT_LABEL_MAP = "0:0,1:1,2:2,3:3"     # FSL FAST order: background, CSF, grey matter, white matter (= OASIS)
PERCENTILES = (0.5, 99.5)


class VolumeError(DataError):
    """A volume, label map or CSV row that cannot be used, as one line naming the file."""


@dataclass
class Subject:
    name: str                           # the volume's file name without its extension(s)
    volume: Path
    seg: Path = None


def volume_stem(path: Path) -> str:
    name = path.name
    for ext in VOLUME_EXTS:
        if name.lower().endswith(ext):
            return name[:-len(ext)]
    return path.stem


def find_volumes(folder, option: str = "--volumes") -> list:
    """Every volume below folder (recursively, hidden folders skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{option} {folder}: no such folder; give the folder that holds the .nii / .nii.gz / "
                          f".hdr volumes")
    found = sorted((p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(VOLUME_EXTS)
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not found:
        raise VolumeError(f"{option} {folder}: holds no .nii, .nii.gz or .hdr volumes")
    return found


def pair_segs(volumes: list, seg_folder) -> list:
    """Subjects with their label maps: the seg whose name is the volume's stem plus one of SEG_SUFFIXES."""
    subjects = [Subject(volume_stem(v), v) for v in volumes]
    if seg_folder is None:
        return subjects
    segs = {volume_stem(s): s for s in find_volumes(seg_folder, "--segs")}
    for subject in subjects:
        match = [segs[subject.name + suffix] for suffix in SEG_SUFFIXES if subject.name + suffix in segs]
        subject.seg = match[0] if match else None
    return subjects


def parse_label_map(text: str) -> dict:
    """'0:0,1:1,2:2,3:3' -> {label value: OASIS class 0..3}."""
    mapping = {}
    for part in str(text).split(","):
        try:
            value, cls = (int(v) for v in part.split(":"))
        except ValueError:
            raise config_lib.ConfigError(f"--label_map {text!r}: {part!r} is not value:class "
                                                 f"(e.g. 0:0,1:1,2:2,3:3)") from None
        if not 0 <= cls < len(MASK_LEVELS):
            raise config_lib.ConfigError(f"--label_map {text!r}: class {cls} is not 0..3 (background, CSF, "
                                                 f"grey matter, white matter)")
        mapping[value] = cls
    return mapping


def read_volume(path: Path, what: str = "volume") -> np.ndarray:
    """The volume as float32 [X, Y, Z] in RAS+ orientation (axial slices are [:, :, k])."""
    import nibabel
    try:
        image = nibabel.as_closest_canonical(nibabel.load(str(path)))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as e:                                   # nibabel raises many types for bad files
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise VolumeError(f"{path}: unreadable {what} ({reason})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]                                  # [X, Y, Z, 1] -> [X, Y, Z]
    if data.ndim != 3:
        raise VolumeError(f"{path}: not a 3D {what} (shape {list(data.shape)}); give one 3D volume per file")
    if not np.isfinite(data).all():
        raise VolumeError(f"{path}: the {what} holds NaN or inf values")
    return data


def slice_indices(brain: np.ndarray, count: int, lo: float, hi: float) -> np.ndarray:
    """count axial indices spread evenly over [lo, hi] of the brain's inferior-superior extent."""
    z = np.nonzero(brain.any(axis=(0, 1)))[0]
    first, last = z.min(), z.max()
    return np.rint(first + (last - first) * np.linspace(lo, hi, count)).astype(int)


def normalize(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Robust 8-bit scaling (see the module docstring). float [X, Y, Z] -> uint8 [X, Y, Z]"""
    a, b = np.percentile(volume[brain], PERCENTILES)
    scaled = np.clip((volume - a) / max(b - a, 1e-6), 0, 1) * 255
    return np.where(brain, np.rint(scaled), 0).astype(np.uint8)


def to_square(plane: np.ndarray, fit: str) -> np.ndarray:
    """Centre-crop (fit='crop') or zero-pad (fit='pad') a 2D array to a square."""
    h, w = plane.shape
    side = min(h, w) if fit == "crop" else max(h, w)
    out = np.zeros((side, side), dtype=plane.dtype)
    sy, sx = (h - side) // 2, (w - side) // 2
    src = plane[max(sy, 0):max(sy, 0) + min(h, side), max(sx, 0):max(sx, 0) + min(w, side)]
    ty, tx = max(-sy, 0), max(-sx, 0)
    out[ty:ty + src.shape[0], tx:tx + src.shape[1]] = src
    return out


def axial_png(plane: np.ndarray, resolution: int, fit: str, labels: bool = False) -> np.ndarray:
    """An axial plane data[:, :, k] (x = left -> right, y = posterior -> anterior) as an image with anterior
    up and the subject's left on the image's left (as the demo slices), square, at resolution."""
    image = np.rot90(plane)                                    # [Y, X]: row 0 = anterior
    image = to_square(np.ascontiguousarray(image), fit)
    if image.shape[0] != resolution:
        resample = Image.NEAREST if labels else Image.LANCZOS
        image = np.asarray(Image.fromarray(image).resize((resolution, resolution), resample))
    return image


def subject_slices(subject: Subject, count: int, lo: float, hi: float, resolution: int, fit: str,
                   label_map: dict):
    """(uint8 images [count, R, R], uint8 OASIS mask images [count, R, R] or None, positions [count])."""
    volume = read_volume(subject.volume)
    brain = volume > 0
    if brain.sum() < 10:
        raise VolumeError(f"{subject.volume}: the brain is empty (no voxel above 0); is it the right file?")
    seg = None
    if subject.seg is not None:
        seg = read_volume(subject.seg, "label map")
        if seg.shape != volume.shape:
            raise VolumeError(f"{subject.seg}: label map of shape {list(seg.shape)}, its volume is "
                              f"{list(volume.shape)}")
        values = np.unique(seg)
        unknown = [v for v in values if v not in label_map]
        if unknown:
            raise VolumeError(f"{subject.seg}: label value(s) {', '.join(f'{v:g}' for v in unknown[:5])} are not in "
                              f"--label_map {','.join(f'{k}:{v}' for k, v in label_map.items())}; map them there")
    index = slice_indices(brain, count, lo, hi)
    scaled = normalize(volume, brain)
    images = np.stack([axial_png(scaled[:, :, k], resolution, fit) for k in index])
    masks = None
    if seg is not None:
        lut = np.zeros(int(max(label_map)) + 1, dtype=np.uint8)
        for value, cls in label_map.items():
            lut[value] = MASK_LEVELS[cls]
        levels = lut[seg.astype(np.int64)]
        masks = np.stack([axial_png(levels[:, :, k], resolution, fit, labels=True) for k in index])
    positions = np.linspace(lo, hi, count)
    return images, masks, positions


def read_covariates(path, subjects: list) -> tuple:
    """(column names, {subject name: [floats]}) from a CSV whose first column names the subject (a volume's
    stem, or a prefix of it, like OAS1_0001_MR1). A row that matches no volume is an error."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise VolumeError(f"--csv {path}: cannot be read ({e.strerror})") from None
    if len(rows) < 2:
        raise VolumeError(f"--csv {path}: needs a header and one row per subject")
    header, values = rows[0][1:], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        key = row[0].strip()
        match = [s.name for s in subjects if s.name == key or s.name.startswith(key)]
        if not match:
            raise VolumeError(f"--csv {path}: line {line} names {key!r}, which matches no volume")
        try:
            numbers = [float(v) for v in row[1:]]
        except ValueError:
            raise VolumeError(f"--csv {path}: line {line} holds a value that is not a number") from None
        if len(numbers) != len(header):
            raise VolumeError(f"--csv {path}: line {line} has {len(numbers)} values, the header {len(header)}")
        for name in match:
            values[name] = numbers
    return header, values


def split_subjects(count: int, shares, seed: int) -> list:
    """'train' / 'validate' / 'test' for each of count subjects: a seeded shuffle cut by shares."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = int(round(shares[1] * count))
    n_test = int(round(shares[2] * count))
    n_train = count - n_val - n_test
    splits = [None] * count
    for rank, i in enumerate(order):
        splits[i] = "train" if rank < n_train else "validate" if rank < n_train + n_val else "test"
    return splits


def make_slices(volumes, out, segs=None, count: int = 32, lo: float = 0.1, hi: float = 0.9,
                resolution: int = 256, fit: str = "pad", label_map=None, shares=(0.8, 0.1, 0.1), seed: int = 0,
                csv_path=None, skip_bad: bool = False, log=print) -> Path:
    """Write the OASIS layout of every volume's slices into the new folder out (built aside, then renamed).
    The subjects are split into train / validate / test in the given shares (a seeded shuffle)."""
    from tqdm import tqdm
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VolumeError(f"--outdir {out}: exists and is not empty; give a new folder (nothing is overwritten)")
    subjects = pair_segs(find_volumes(volumes), segs)
    label_map = parse_label_map(DEFAULT_LABEL_MAP) if label_map is None else label_map
    if segs is not None:
        missing = [s.volume.name for s in subjects if s.seg is None]
        if missing and not skip_bad:
            raise VolumeError(f"--segs {segs}: no label map for {len(missing)} volume(s) (first: {missing[0]}); a "
                              f"label map is named like its volume plus _seg, _fseg, _labels or nothing; or add "
                              f"--skip_bad")
    names, covariates = (read_covariates(csv_path, subjects) if csv_path else ([], {}))
    cases = []                                               # (subject, images, masks, positions)
    for subject in tqdm(subjects, desc="volumes", unit="vol", file=sys.stderr, dynamic_ncols=True, leave=False):
        try:
            if segs is not None and subject.seg is None:
                raise VolumeError(f"{subject.volume}: no label map in {segs}")
            if csv_path and subject.name not in covariates:
                raise VolumeError(f"{subject.volume}: no row in --csv {csv_path}")
            cases.append((subject, *subject_slices(subject, count, lo, hi, resolution, fit, label_map)))
        except VolumeError as e:
            if not skip_bad:
                raise VolumeError(f"{e} (or add --skip_bad to go on without it)") from None
            tqdm.write(f"warning: skipped: {e}", file=sys.stderr)
    if not cases:
        raise VolumeError(f"--volumes {volumes}: no usable volume")
    splits = split_subjects(len(cases), shares, seed)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    labels, subject_names = [], {}
    try:
        for case, ((subject, images, masks, positions), part) in enumerate(zip(cases, splits), start=1):
            img_dir = tmp / oasis.image_folder(part)
            seg_dir = tmp / oasis.mask_folder(part)
            img_dir.mkdir(parents=True, exist_ok=True)
            subject_names[f"case_{case:03d}"] = subject.name
            for k in range(len(images)):
                name = oasis.slice_name(case, k)
                runs.save_png(images[k], img_dir / name)
                if masks is not None:
                    seg_dir.mkdir(exist_ok=True)
                    runs.save_png(masks[k], seg_dir / oasis.mask_name(name))
                labels.append([f"{img_dir.name}/{name}", [float(positions[k])] + covariates.get(subject.name, [])])
        runs.write_text(tmp / oasis.LABELS_FILE, json.dumps({
            "labels": labels, "label_names": ["slice_position"] + names, "subjects": subject_names,
            "slices": {"count": count, "range": [lo, hi], "resolution": resolution, "fit": fit,
                       "normalization": f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]} of brain voxels -> 0-255",
                       "label_map": {str(k): v for k, v in label_map.items()} if segs is not None else None,
                       "split": list(shares), "seed": seed}}, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {s: splits.count(s) for s in oasis.SPLITS}
    log(f"{len(cases)} subject(s) x {count} slices -> {out} (train {counts['train']}, validate "
        f"{counts['validate']}, test {counts['test']} subjects){'' if segs is None else ', with masks'}")
    return out


def add_arguments(p) -> None:
    """The options of `python dataset.py slices`."""
    p.add_argument("--volumes", required=True, help="folder of .nii / .nii.gz / .hdr volumes (searched recursively)")
    p.add_argument("--outdir", "--out", dest="outdir", required=True,
                   help="new folder for the OASIS-layout slices (--out is an older spelling)")
    p.add_argument("--segs", help="folder of label maps, named like their volume (+ _seg, _fseg, _labels)")
    p.add_argument("--slices", type=int, default=32, help="axial slices per volume (default 32, as OASIS)")
    p.add_argument("--range", default="0.1,0.9", help="part of the brain's axial extent to cut, lo,hi in [0, 1]")
    p.add_argument("--resolution", type=int, default=256, help="slice size in pixels (default 256)")
    p.add_argument("--fit", default="pad", choices=("pad", "crop"), help="make slices square by padding or cropping")
    p.add_argument("--label_map", default=DEFAULT_LABEL_MAP, help="label value:OASIS class (0 bg, 1 CSF, 2 GM, "
                                                                  "3 WM), default 0:0,1:1,2:2,3:3 (FSL FAST)")
    p.add_argument("--shares", "--split", dest="shares", default="0.8,0.1,0.1",
                   help="shares of subjects in train,validate,test, adding up to 1 (--split is an older spelling)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--csv", help="per-subject covariates: first column the subject, then numbers")
    p.add_argument("--skip_bad", action="store_true", help="go on without unusable volumes, naming each")


def run(args, log=print) -> Path:
    """`python dataset.py slices` with the parsed options: check them (a ConfigError names the option),
    then make_slices."""
    usage = config_lib.ConfigError
    try:
        lo, hi = (float(v) for v in args.range.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 <= lo <= hi <= 1:
        raise usage(f"--range must be lo,hi with 0 <= lo <= hi <= 1, got {args.range!r}")
    try:
        shares = tuple(float(v) for v in args.shares.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        raise usage(f"--shares must be three shares that add up to 1, like 0.8,0.1,0.1, got {args.shares!r}")
    if args.slices < 1:
        raise usage(f"--slices must be >= 1, got {args.slices}")
    config_lib.check_resolution(args.resolution)
    return make_slices(args.volumes, args.outdir, args.segs, args.slices, lo, hi, args.resolution, args.fit,
                       parse_label_map(args.label_map), shares, args.seed, args.csv, args.skip_bad, log)
