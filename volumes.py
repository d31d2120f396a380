"""From scanner volumes to training slices: NIfTI (.nii, .nii.gz) and Analyze (.hdr + .img) volumes and DICOM
series (dicom.py), with optional tissue label maps, cut into axial slices in the OASIS layout (`python dataset.py
slices`).

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
import glob
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import config as config_lib
import dicom
import geometry
import oasis
import runs
from oasis import MASK_LEVELS, DataError

VOLUME_EXTS = (".nii.gz", ".nii", ".hdr")
SEG_SUFFIXES = ("", "_seg", "_fseg", "_labels", "_label", "_mask")   # label map = volume stem + one of these
DEFAULT_LABEL_MAP = "0:0,1:1,2:2,3:3"     # FSL FAST order: background, CSF, grey matter, white matter (= OASIS)
PERCENTILES = (0.5, 99.5)
MAX_VOXELS = 512 ** 3                     # largest volume read (512 MiB as float32); the header is checked first
LABEL_LIMIT = 2 ** 24                     # |label value| at most this: label maps are read as float32, exact to 2^24
PARTIAL_MARK = ".partial-"                # a folder being built is .<name>.partial-<pid>, beside its target


class VolumeError(DataError):
    """A volume, label map or CSV row that cannot be used, as one line naming the file."""


@dataclass
class Subject:
    name: str                           # the volume's file name without its extension(s)
    volume: Path                        # a volume file, or a dicom.Series
    seg: Path = None
    geometry: dict = None               # geometry.cut_geometry of its slices, once cut


def volume_stem(path: Path) -> str:
    if isinstance(path, dicom.Series):
        return path.name
    name = path.name
    for ext in VOLUME_EXTS:
        if name.lower().endswith(ext):
            return name[:-len(ext)]
    return path.stem


def find_volumes(folder, option: str = "--volumes") -> list:
    """Every volume below folder (recursively, hidden folders skipped): the volume files sorted by name, then
    the DICOM series (dicom.find_series: a folder of one series is one volume, several are split by UID)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{option} {folder}: no such folder; give the folder that holds the .nii / .nii.gz / "
                          f".hdr volumes or DICOM series")
    found = sorted((p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(VOLUME_EXTS)
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                   key=lambda p: p.relative_to(folder).as_posix())
    found += dicom.find_series(folder)
    if not found:
        raise VolumeError(f"{option} {folder}: holds no .nii, .nii.gz or .hdr volumes and no DICOM series (files "
                          f"with the DICM marker or named .dcm / .ima)")
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
    """'0:0,1:1,2:2,3:3' -> {label value: OASIS class 0..3}. Label values are integers within +-LABEL_LIMIT,
    negative ones included (-1:0 maps -1 to background), each given once."""
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
        if abs(value) > LABEL_LIMIT:
            raise config_lib.ConfigError(f"--label_map {text!r}: label value {value} is beyond +-{LABEL_LIMIT} "
                                         f"(label maps are read as 32-bit floats, exact for integers up to 2^24)")
        if value in mapping:
            raise config_lib.ConfigError(f"--label_map {text!r}: label value {value} is given twice")
        mapping[value] = cls
    return mapping


def label_levels(seg: np.ndarray, label_map: dict) -> np.ndarray:
    """Label values [X, Y, Z] -> uint8 OASIS mask levels [X, Y, Z] through label_map, every value of which seg
    holds only (checked by the caller). A search in the sorted label values, not a lookup table indexed by
    value: negative labels never wrap around and a large one allocates nothing."""
    values = sorted(label_map)
    levels = np.array([MASK_LEVELS[label_map[v]] for v in values], dtype=np.uint8)
    return levels[np.searchsorted(np.array(values, dtype=np.float64), seg)]


def load_image(path):
    """nibabel's image of a volume file (lazy: its header), or of a dicom.Series (its voxels and RAS affine)."""
    import nibabel
    if isinstance(path, dicom.Series):
        return nibabel.Nifti1Image(*dicom.read_series(path))
    return nibabel.load(str(path))


def read_volume(path: Path, what: str = "volume") -> np.ndarray:
    """The volume as float32 [X, Y, Z] in RAS+ orientation (axial slices are [:, :, k]). A header that declares
    more than MAX_VOXELS voxels is refused before any voxel is read."""
    import nibabel
    try:
        image = load_image(path)                             # the header only (a DICOM series: read whole)
        shape = tuple(int(n) for n in image.shape)
    except dicom.DicomError as e:                            # already one line naming the series
        raise VolumeError(str(e)) from None
    except Exception as e:                                   # nibabel raises many types for bad files
        raise VolumeError(f"{path}: unreadable {what} ({_reason(e)})") from None
    if math.prod(shape) > MAX_VOXELS:
        raise VolumeError(f"{path}: the {what} declares {' x '.join(map(str, shape))} voxels, more than the "
                          f"slicer's limit of {MAX_VOXELS:,} (512 x 512 x 512); resample it to a coarser grid")
    try:
        image = nibabel.as_closest_canonical(image)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as e:
        raise VolumeError(f"{path}: unreadable {what} ({_reason(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]                                  # [X, Y, Z, 1] -> [X, Y, Z]
    if data.ndim != 3:
        raise VolumeError(f"{path}: not a 3D {what} (shape {list(data.shape)}); give one 3D volume per file")
    if not np.isfinite(data).all():
        raise VolumeError(f"{path}: the {what} holds NaN or inf values")
    return data


def _reason(e: Exception) -> str:
    """The first line of an exception, for a one-line message."""
    return str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__


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


def warn_if_head(volume, brain: np.ndarray, voxel) -> None:
    """One warning line when a volume looks like a whole head rather than an extracted brain (geometry.head_signs)."""
    from tqdm import tqdm
    signs = geometry.head_signs(brain, voxel)
    if signs:
        tqdm.write(f"warning: {volume}: looks like a whole head, not an extracted brain ({'; '.join(signs)}); its head "
                   f"would set the intensity percentiles and the axial range: brain-extract it first "
                   f"(docs/volumes.md)", file=sys.stderr)


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
    voxel = geometry.voxel_mm(subject.volume)
    warn_if_head(subject.volume, brain, voxel)
    subject.geometry = geometry.cut_geometry(brain, voxel, fit)
    index = slice_indices(brain, count, lo, hi)
    scaled = normalize(volume, brain)
    images = np.stack([axial_png(scaled[:, :, k], resolution, fit) for k in index])
    masks = None
    if seg is not None:
        levels = label_levels(seg, label_map)
        masks = np.stack([axial_png(levels[:, :, k], resolution, fit, labels=True) for k in index])
    positions = np.linspace(lo, hi, count)
    return images, masks, positions


def read_covariates(path, subjects: list, root) -> tuple:
    """(column names, {volume path: [floats]}) from a UTF-8 CSV whose first column names each subject exactly:
    a volume's name without its extension (sub-01_T1w) or a folder it lies in below root, the --volumes folder
    (OAS1_0001_MR1 in the OASIS-1 release's OAS1_0001_MR1/PROCESSED/.../OAS1_0001_MR1_..._masked_gfc.hdr).
    Never a prefix: sub-1 is not sub-10. A row that matches no volume, a subject named twice, a volume that
    two rows match, a value that is not a finite number and a file that is not UTF-8 are each one line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:     # -sig: the byte-order mark spreadsheets write
            rows = list(csv.reader(f))
    except OSError as e:
        raise VolumeError(f"--csv {path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise VolumeError(f"--csv {path}: is not UTF-8 text (byte 0x{e.object[e.start]:02x}); save it as a UTF-8 "
                          f"CSV") from None
    except csv.Error as e:
        raise VolumeError(f"--csv {path}: is not a readable CSV file ({e})") from None
    if len(rows) < 2:
        raise VolumeError(f"--csv {path}: needs a header and one row per subject")
    names = {s.volume: {s.name, *_folders(s.volume, Path(root))} for s in subjects}
    header, values, line_of, matched_at = rows[0][1:], {}, {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        key = row[0].strip()
        if key in line_of:
            raise VolumeError(f"--csv {path}: lines {line_of[key]} and {line} both name {key!r}; give each subject "
                              f"one row")
        line_of[key] = line
        match = [volume for volume, known in names.items() if key in known]
        if not match:
            raise VolumeError(f"--csv {path}: line {line} names {key!r}, which matches no volume (a subject is a "
                              f"volume's name without extension or a folder it lies in, matched exactly)")
        if len(row) - 1 != len(header):
            raise VolumeError(f"--csv {path}: line {line} has {len(row) - 1} values, the header {len(header)}")
        numbers = []
        for column, text in zip(header, row[1:]):
            try:
                numbers.append(float(text))
            except ValueError:
                numbers.append(math.nan)
            if not math.isfinite(numbers[-1]):
                raise VolumeError(f"--csv {path}: line {line} ({key!r}) holds {text.strip()!r} for {column!r}; "
                                  f"covariates must be finite numbers")
        for volume in match:
            if volume in values:
                raise VolumeError(f"--csv {path}: lines {matched_at[volume]} and {line} both match {volume.name}; give "
                                  f"each volume one row")
            values[volume], matched_at[volume] = numbers, line
    return header, values


def _folders(volume, root: Path) -> tuple:
    """The folders between root and a volume file, or down to a DICOM series' own folder (paths as found below
    root, so relative_to needs no resolving)."""
    try:
        if isinstance(volume, dicom.Series):
            return volume.folder.relative_to(root).parts
        return volume.relative_to(root).parts[:-1]
    except ValueError:
        return ()


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


def partial_folder(out: Path) -> Path:
    """Where out is built before it is renamed into place: .<name>.partial-<pid>, beside it."""
    return out.with_name(f".{out.name}{PARTIAL_MARK}{os.getpid()}")


def remove_stale_partials(out: Path, log=None) -> list:
    """Delete the build folders of out (partial_folder) that a killed process left: those whose pid is gone or is
    this process's own (runs._alive, as runs.remove_stale_temporaries does for files); returns the names removed."""
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}{PARTIAL_MARK}*"):
        pid = p.name.rpartition(PARTIAL_MARK)[2]
        if not pid.isdigit() or p.is_symlink() or not p.is_dir():
            continue
        if int(pid) != os.getpid() and runs._alive(int(pid)):
            continue                                         # still being built by a running process
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
        if log:
            log(f"note: removed {p}, left by a run that was killed (process {pid})")
    return removed


def make_slices(volumes, out, segs=None, count: int = 32, lo: float = 0.1, hi: float = 0.9,
                resolution: int = 256, fit: str = "pad", label_map=None, shares=(0.8, 0.1, 0.1), seed: int = 0,
                csv_path=None, skip_bad: bool = False, log=print) -> Path:
    """Write the OASIS layout of every volume's slices into the new folder out (built aside in partial_folder, then
    renamed; what a killed run left there is removed first).
    The subjects are split into train / validate / test in the given shares (a seeded shuffle)."""
    from tqdm import tqdm
    out = Path(out)
    remove_stale_partials(out, log)
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
    names, covariates = (read_covariates(csv_path, subjects, volumes) if csv_path else ([], {}))
    cases = []                                               # (subject, images, masks, positions)
    for subject in tqdm(subjects, desc="volumes", unit="vol", file=sys.stderr, dynamic_ncols=True, leave=False):
        try:
            if segs is not None and subject.seg is None:
                raise VolumeError(f"{subject.volume}: no label map in {segs}")
            if csv_path and subject.volume not in covariates:
                raise VolumeError(f"{subject.volume}: no row in --csv {csv_path}")
            cases.append((subject, *subject_slices(subject, count, lo, hi, resolution, fit, label_map)))
        except VolumeError as e:
            if not skip_bad:
                raise VolumeError(f"{e} (or add --skip_bad to go on without it)") from None
            tqdm.write(f"warning: skipped: {e}", file=sys.stderr)
    if not cases:
        raise VolumeError(f"--volumes {volumes}: no usable volume")
    splits = split_subjects(len(cases), shares, seed)
    tmp = partial_folder(out)
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
                labels.append([f"{img_dir.name}/{name}", [float(positions[k])] + covariates.get(subject.volume, [])])
        runs.write_text(tmp / oasis.LABELS_FILE, json.dumps({
            "labels": labels, "label_names": ["slice_position"] + names, "subjects": subject_names,
            "slices": {"count": count, "range": [lo, hi], "resolution": resolution, "fit": fit,
                       "normalization": f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]} of brain voxels -> 0-255",
                       "label_map": {str(k): v for k, v in label_map.items()} if segs is not None else None,
                       "split": list(shares), "seed": seed,
                       "geometry": geometry.median_geometry([c[0].geometry for c in cases])}}, indent=1) + "\n")
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
    p.add_argument("--volumes", required=True, help="folder of .nii / .nii.gz / .hdr volumes or DICOM series "
                                                    "(searched recursively)")
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
