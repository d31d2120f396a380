"""Training data: OASIS slice folders and plain image folders, validated, decoded once into a uint8
cache and served as batches; plus the built-in demo data made from the MNI152 brain template.

Owns: finding images (and their tissue masks), decoding and resizing them, the cache, the batch
sampler's data order, `python dataset.py check|demo|figure`. Every file it writes goes through
runs.atomic_write. Does not own augmentation (augment.py) or anything about models and training
(modules.py, train.py).

    python dataset.py check --data PATH [--resolution 256]     # what a training run would see
    python dataset.py demo --out data/demo                      # build the demo data (about a minute)
    python dataset.py figure --data data/demo --out picture/demo_slices.png
"""

import errno
import functools
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

import config as config_lib
import modules
import runs

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validate", "test")
OASIS_PREFIX = "keras_png_slices_"              # keras_png_slices_{split}, keras_png_slices_seg_{split}
HOLDOUT_SHARE, HOLDOUT_SEED = 0.1, 0             # plain image folder: share held out as the real baseline
MASK_LEVELS = (0, 85, 170, 255)                 # background, CSF, grey matter, white matter
CACHE_VERSION = 2                               # bump when the decoded format or the index changes
DIGEST_SIZE = 16                                # bytes of the BLAKE2b digests of files and cached arrays
FITS = ("crop", "pad")
DEFAULT_DATA = Path("data/demo")                # where train.py builds the demo data when no --data is given


class DataError(ValueError):
    """A problem with the user's data, worded as one line that names the file and what to do."""


def check_resolution(resolution: int) -> int:
    """The training resolution, or a DataError worded for the --resolution option."""
    try:
        modules.check_resolution(resolution, "--resolution")
    except ValueError as e:
        raise DataError(str(e)) from None
    return resolution


def _first(names, n: int = 5) -> str:
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# ----------------------------------------------------------------------------------------------
# Finding the images

@dataclass
class Source:
    """The files of one split: images (sorted) and, where there are masks, the matching mask files."""
    name: str                                   # split name, or the folder name for a plain folder
    root: Path                                  # the --data folder
    image_dir: Path
    files: list                                 # image paths
    mask_dir: Path = None
    mask_files: list = None                     # mask path per image, same order


def is_oasis_layout(root: Path) -> bool:
    return any((root / f"{OASIS_PREFIX}{s}").is_dir() for s in SPLITS)


def list_images(folder: Path) -> list:
    """Image files under folder, recursively, sorted; hidden files and folders (e.g. .cache) skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS)]
    return sorted(found)


def slice_level(name) -> int:
    """The slice number K of an OASIS name (case_001_slice_K.nii.png, its axial level: 0 = lowest of the
    subject's slices), or None for other names."""
    m = re.search(r"_slice_(\d+)\.", Path(name).name)
    return int(m.group(1)) if m else None


def mask_name(image_name: str) -> str:
    """OASIS naming: case_001_slice_0.nii.png -> seg_001_slice_0.nii.png."""
    return "seg_" + image_name[len("case_"):] if image_name.startswith("case_") else image_name


def find_source(data, split: str = "train", with_masks: bool = False) -> Source:
    """Resolve --data to the files of one split. `data` is either the folder holding the OASIS
    keras_png_slices_* folders (then `split` picks one) or any folder of images (searched recursively)."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"--data {root}: no such file or folder; give the folder that holds the "
                        f"keras_png_slices_* folders or any folder of images")
    if not root.is_dir():
        raise DataError(f"--data {root}: is a file, not a folder; give the folder that contains the images")
    if is_oasis_layout(root):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        image_dir = root / f"{OASIS_PREFIX}{split}"
        if not image_dir.is_dir():
            have = [s for s in SPLITS if (root / f"{OASIS_PREFIX}{s}").is_dir()]
            raise DataError(f"--data {root}: has no {image_dir.name} folder (found splits: {', '.join(have)})")
        mask_dir = root / f"{OASIS_PREFIX}seg_{split}"
        name = split
    else:
        image_dir, mask_dir, name = root, None, root.name
    files = list_images(image_dir)
    if not files:
        entries = [p.name for p in image_dir.iterdir()] if image_dir.is_dir() else []
        what = "is empty" if not entries else f"has no {'/'.join(e[1:] for e in IMAGE_EXTS)} images (found: {_first(entries, 3)})"
        raise DataError(f"{image_dir}: {what}; point --data at a folder of images")
    source = Source(name, root, image_dir, files)
    if with_masks:
        if mask_dir is None or not mask_dir.is_dir():
            raise DataError(f"{image_dir}: no mask folder {mask_dir.name if mask_dir else '(plain image folder)'}; "
                            f"masks (--masks) need the OASIS layout with keras_png_slices_seg_<split>")
        pair_masks(source, mask_dir)
    return source


def pair_masks(source: Source, mask_dir: Path) -> None:
    """Attach the mask file of every image, or raise naming what does not match."""
    masks = {p.relative_to(mask_dir).as_posix(): p for p in list_images(mask_dir)}
    wanted = {}
    for f in source.files:
        rel = f.relative_to(source.image_dir)
        wanted[(rel.parent / mask_name(rel.name)).as_posix()] = f
    missing = [wanted[k].name for k in wanted if k not in masks]
    extra = [k for k in masks if k not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} images have no mask (first: {_first(missing, 3)})")
        if extra:
            parts.append(f"{len(extra)} masks have no image (first: {_first(extra, 3)})")
        raise DataError(f"mask folder {mask_dir} does not match image folder {source.image_dir}: "
                        f"{'; '.join(parts)}")
    source.mask_dir = mask_dir
    source.mask_files = [masks[k] for k in wanted]


# ----------------------------------------------------------------------------------------------
# Decoding one file

@dataclass
class DecodeStats:
    """What decoding saw, for the user: source sizes, modes and bit depths, conversions, bad files."""
    sizes: dict = field(default_factory=dict)           # "WxH" -> count
    modes: dict = field(default_factory=dict)           # "L (8-bit)" -> count
    color_to_gray: int = 0                              # colour images turned into luminance
    resized: int = 0
    bad: list = field(default_factory=list)             # (file, reason)

    def add(self, key: str, table: dict):
        table[key] = table.get(key, 0) + 1


def _mode_label(im: Image.Image) -> str:
    bits = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16,
            "I;16L": 16, "I": 32, "F": 32}.get(im.mode, "?")
    return f"{im.mode} ({bits}-bit)"


def _to_uint8(im: Image.Image, channels: int, stats: DecodeStats) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB'. 16-bit (and 32-bit integer, which Pillow uses for some 16-bit
    files) maps 0..65535 linearly onto 0..255, the same for every file so intensities stay comparable;
    32-bit float images are min-max scaled (they carry no fixed range)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        im = Image.fromarray(np.rint((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8))
    is_color = im.mode not in ("1", "L", "LA") and not (im.mode == "P" and _palette_is_gray(im))
    if channels == 1:
        if is_color:
            stats.color_to_gray += 1
        return im.convert("L")                           # ITU-R 601 luminance for colour input
    return im.convert("RGB")


def _palette_is_gray(im: Image.Image) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def fit_square(im: Image.Image, fit: str, fill=0) -> Image.Image:
    """Centre-crop (fit='crop') or zero-pad (fit='pad') to a square."""
    w, h = im.size
    if w == h:
        return im
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return im.crop((left, top, left + s, top + s))
    s = max(w, h)
    canvas = Image.new(im.mode, (s, s), fill)
    canvas.paste(im, ((s - w) // 2, (s - h) // 2))
    return canvas


def read_file(path: Path) -> bytes:
    """The bytes of an image file, or a DataError naming it: missing, a broken symbolic link or a loop of
    them, unreadable, empty."""
    try:
        data = path.read_bytes()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: a symbolic link loop (it never reaches a file)") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise DataError(f"{path}: a broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not data:
        raise DataError(f"{path}: empty file (0 bytes)")
    return data


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def open_image(path: Path, data: bytes = None) -> Image.Image:
    """Open and fully decode an image (from data, the file's bytes, when given), turning every failure into
    a DataError naming the file. Images above Pillow's decompression-bomb limit and float images holding
    NaN or inf are refused."""
    data = read_file(path) if data is None else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)   # above the limit: refuse
            with Image.open(io.BytesIO(data)) as im:
                im.load()                                # decode now: truncated files fail here
                if im.width == 0 or im.height == 0:
                    raise DataError(f"{path}: image of zero size")
                im = im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: too large to decode safely ({_header_size(data)} pixels, above Pillow's limit of "
                        f"{Image.MAX_IMAGE_PIXELS} that guards against decompression bombs); shrink or remove it") \
            from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (unreadable by Pillow)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
    if im.mode == "F" and not np.isfinite(np.asarray(im)).all():
        raise DataError(f"{path}: holds NaN or inf pixels (a float image); fix or remove it")
    return im


def _header_size(data: bytes) -> str:
    """'W x H' read from the header alone. Nothing is decoded, so Pillow's pixel limit is lifted for this read
    (it has already refused the image); '?' when even the header cannot be read."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return f"{im.width} x {im.height}"
    except Exception:                                    # any header problem: the size is only for the message
        return "?"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode_image(path: Path, resolution: int, channels: int = 1, fit: str = "crop",
                 stats: DecodeStats = None, data: bytes = None) -> np.ndarray:
    """One image file (or its bytes, data) -> uint8 [channels, resolution, resolution]."""
    stats = stats if stats is not None else DecodeStats()
    im = open_image(path, data)
    stats.add(f"{im.width}x{im.height}", stats.sizes)
    stats.add(_mode_label(im), stats.modes)
    im = fit_square(_to_uint8(im, channels, stats), fit)
    if im.width != resolution:
        stats.resized += 1
        im = im.resize((resolution, resolution), Image.LANCZOS)  # windowed-sinc low-pass when shrinking
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)    # [C, R, R]


def decode_mask(path: Path, resolution: int, fit: str = "crop", data: bytes = None) -> np.ndarray:
    """OASIS tissue mask file -> uint8 labels [resolution, resolution] in 0..3 (nearest level of 0/85/170/255)."""
    im = open_image(path, data)
    im = fit_square(_to_uint8(im, 1, DecodeStats()), fit)
    if im.width != resolution:
        im = im.resize((resolution, resolution), Image.NEAREST)   # labels must not be blended
    a = np.asarray(im, dtype=np.int32)
    return np.clip(np.rint(a / 85.0), 0, 3).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Decode once: the uint8 cache

def _listing(files, base: Path) -> list:
    """[relative path, size, mtime_ns, ctime_ns] per file; None for the numbers of a file that cannot be
    stat'ed (a broken symbolic link or a loop: decoding reports it as a bad file)."""
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append([f.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
        except OSError:
            out.append([f.relative_to(base).as_posix(), None, None, None])
    return out


def array_digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=DIGEST_SIZE).hexdigest()


def user_cache_dir() -> Path:
    """Where the cache goes when the data folder cannot hold it (read-only, shared)."""
    return Path.home() / ".cache" / "stylegan2-mri"


def cache_folders(source: Source, cache_dir) -> list:
    """Where the cache may live, in the order they are tried: the given cache_dir alone, else <data>/.cache
    then the per-user cache."""
    return [Path(cache_dir)] if cache_dir is not None else [source.root / ".cache", user_cache_dir()]


def cache_paths(folder: Path, source: Source, resolution: int, channels: int, fit: str, with_masks: bool):
    """(array file, mask file, index file) of the cache entry for these settings in folder."""
    where = hashlib.sha1(str(source.image_dir.resolve()).encode()).hexdigest()[:8]
    stem = f"{source.name}-{where}-r{resolution}-c{channels}-{fit}{'-seg' if with_masks else ''}"
    return folder / f"{stem}.npy", folder / f"{stem}-masks.npy", folder / f"{stem}.json"


def _bad_files_error(bad: list, where: Path) -> DataError:
    return DataError(f"{len(bad)} unreadable image file(s) in {where}: {_first(b[0] for b in bad)} "
                     f"(first problem: {bad[0][1]}); fix or remove them, or pass --skip_bad to train without them")


def load_images(source: Source, resolution: int, channels: int = 1, fit: str = "crop", with_masks: bool = False,
                skip_bad: bool = False, cache_dir=None, log=None):
    """Decoded images of a source, from the cache when it is current, else decoded now and cached.

    Returns (images uint8 [N, C, R, R], masks uint8 [N, R, R] or None, kept file names, info dict).
    How far the cache is trusted: its index holds the settings and, for every image and mask file, the
    relative path, size, mtime, ctime and a BLAKE2b digest of the bytes decoded. When path, size, mtime and
    ctime all match, the cache is trusted without reading the files (as fast as before). A file whose ctime
    alone changed (cp -p, rsync -t, chmod, a copied folder) is hashed again and the cache kept only when its
    bytes are unchanged; any other difference rebuilds the cache. The cached arrays are checked against their
    digests on every load, so a damaged cache is reported and rebuilt, never used. A cache that cannot be
    written (read-only folder, full disk) is not fatal: the run trains from the decoded images in memory.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    settings = [CACHE_VERSION, resolution, channels, fit, with_masks]
    listing = {"images": _listing(source.files, source.image_dir),
               "masks": _listing(source.mask_files, source.mask_dir) if with_masks else []}
    folders = cache_folders(source, cache_dir)
    shape = (channels, resolution, resolution)
    cached = None
    for folder in folders:
        paths = cache_paths(folder, source, resolution, channels, fit, with_masks)
        cached = _read_cache(paths, source, settings, listing, shape, with_masks, log)
        if cached is not None:
            break
    if cached is not None:
        images, masks, index = cached
        info = dict(index["info"], from_cache=True, cache=str(paths[0]))
    else:
        images, masks, kept, stats, digests = _decode_all(source, resolution, channels, fit, with_masks)
        if stats.color_to_gray:
            log(f"note: {stats.color_to_gray} colour image(s) converted to grayscale (luminance) for img_channels=1")
        index = {"settings": settings, "files": kept, "bad": stats.bad, "source": str(source.image_dir),
                 "images": [entry + [d] for entry, d in zip(listing["images"], digests["images"])],
                 "masks": [entry + [d] for entry, d in zip(listing["masks"], digests["masks"])],
                 "arrays": {"images": array_digest(images), "masks": array_digest(masks) if with_masks else None},
                 "info": {"sizes": stats.sizes, "modes": stats.modes, "resized": stats.resized,
                          "color_to_gray": stats.color_to_gray}}
        written = None
        if kept:   # cached even when some files are bad, so a rerun with --skip_bad starts at once
            written = _write_cache(folders, source, resolution, channels, fit, with_masks, images, masks, index, log)
        info = dict(index["info"], from_cache=False, cache=str(written) if written else None)
    bad = index["bad"]
    if bad and not skip_bad:
        raise _bad_files_error(bad, source.image_dir)
    if bad:
        log(f"warning: skipping {len(bad)} unreadable image(s): {_first(b[0] for b in bad)}")
    if not index["files"]:
        raise DataError(f"{source.image_dir}: none of the {len(source.files)} images could be read")
    return images, masks, index["files"], info


def _first_change(entries, listing: list, base: Path):
    """(None, files re-hashed) when the files are those a cache index lists, else (the first that differs, _).
    A file whose ctime alone differs is hashed and counts as changed only when its bytes differ; the ctime
    of such an unchanged file is updated in its entry, for the caller to save."""
    if not isinstance(entries, list) or len(entries) != len(listing):
        return "the set of files", 0
    rehashed = 0
    for entry, now in zip(entries, listing):
        if entry[:3] != now[:3]:
            return now[0], rehashed
        if entry[3] != now[3]:                           # replaced with the old size and mtime, or only chmod'ed
            try:
                digest = file_digest((base / now[0]).read_bytes())
            except OSError:
                return now[0], rehashed
            if digest != entry[4]:
                return now[0], rehashed
            entry[3], rehashed = now[3], rehashed + 1
    return None, rehashed


def _read_cache(paths, source: Source, settings: list, listing: dict, shape: tuple, with_masks: bool, log):
    """(images, masks, index) from a cache entry built from these very files and settings and whose arrays
    match their digests, else None (missing, stale or damaged)."""
    img_path, mask_path, index_path = paths
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if index.get("settings") != settings:
            return None
        changed, rehashed = _first_change(index["images"], listing["images"], source.image_dir)
        if not changed and with_masks:
            changed, more = _first_change(index["masks"], listing["masks"], source.mask_dir)
            rehashed += more
        if changed:
            log(f"note: the cache {img_path} is out of date ({changed} changed since it was built)")
            return None
        images = np.load(img_path)
        masks = np.load(mask_path) if with_masks else None
        n = len(index["files"])
        ok_shape = images.shape == (n, *shape) and (not with_masks or masks.shape == (n, *shape[1:]))
        ok_digest = ok_shape and array_digest(images) == index["arrays"]["images"] and (
            not with_masks or array_digest(masks) == index["arrays"]["masks"])
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError):
        log(f"warning: the cache {img_path} is damaged (unreadable); decoding again")
        return None
    if not ok_digest:
        log(f"warning: the cache {img_path} is damaged (its arrays do not match the digests in its index); "
            f"decoding again")
        return None
    if rehashed:                                         # unchanged files with a new ctime: remember it
        try:
            runs.write_text(index_path, json.dumps(index))
        except runs.RunError:
            pass                                         # only a speed-up for the next start
    return images, masks, index


def _save_npy(tmp, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:                           # np.save(path) would append .npy to the name
        np.save(f, array)


def _make_folder(folder: Path) -> None:
    """mkdir -p; folders this creates are readable by everyone (0o755), as shared data folders need."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
        os.chmod(f, 0o755)


def _write_cache(folders: list, source: Source, resolution: int, channels: int, fit: str, with_masks: bool,
                 images, masks, index: dict, log):
    """Write the cache entry into the first folder that takes it (the index last, so a half-written entry is
    never trusted). Returns the array file, or None after one warning line when no folder could hold it."""
    problems = []
    for folder in folders:
        img_path, mask_path, index_path = cache_paths(folder, source, resolution, channels, fit, with_masks)
        try:
            try:
                _make_folder(folder)
                index_path.unlink(missing_ok=True)
            except OSError as e:
                raise runs.write_error(folder, e) from None
            runs.atomic_write(img_path, lambda tmp: _save_npy(tmp, images))
            if with_masks:
                runs.atomic_write(mask_path, lambda tmp: _save_npy(tmp, masks))
            runs.write_text(index_path, json.dumps(index))
        except runs.RunError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"note: cache not written in {folders[0]} ({problems[0]}); it is in {folder}")
        return img_path
    log(f"warning: cache not written: {problems[0]}; training from the decoded images in memory")
    return None


def _decode_all(source: Source, resolution: int, channels: int, fit: str, with_masks: bool):
    """Decode every file (and mask); unreadable ones are collected in stats.bad, not raised.
    Also returns the BLAKE2b digest of every file's bytes (None where unreadable), for the cache index."""
    from tqdm import tqdm
    stats = DecodeStats()
    n = len(source.files)
    images = np.empty((n, channels, resolution, resolution), dtype=np.uint8)
    masks = np.empty((n, resolution, resolution), dtype=np.uint8) if with_masks else None
    kept, digests = [], {"images": [None] * n, "masks": [None] * n if with_masks else []}
    for i, f in enumerate(tqdm(source.files, desc=f"decoding {source.name}", unit="img", disable=n < 500,
                               file=sys.stderr)):
        try:
            data = read_file(f)
            digests["images"][i] = file_digest(data)
            images[len(kept)] = decode_image(f, resolution, channels, fit, stats, data)
            if with_masks:
                data = read_file(source.mask_files[i])
                digests["masks"][i] = file_digest(data)
                masks[len(kept)] = decode_mask(source.mask_files[i], resolution, fit, data)
        except DataError as e:
            stats.bad.append([f.relative_to(source.image_dir).as_posix(), str(e)])
            continue
        kept.append(f.relative_to(source.image_dir).as_posix())
    images = images[:len(kept)]
    masks = masks[:len(kept)] if with_masks else None
    return images, masks, kept, stats, digests


# ----------------------------------------------------------------------------------------------
# The dataset a training run reads

CONDITIONS = ("none", "slice", "json")
LABELS_FILE = "dataset.json"


def load_labels(source: Source, files: list, cond: str):
    """Labels for conditional training: (float32 [N, c_dim], label names) for the kept files, or (None, [])
    for cond 'none'. 'slice': the axial position K / (the case's highest K) in [0, 1] from OASIS names
    case_XXX_slice_K. 'json': dataset.json in the data folder, in the official format {"labels": [[path,
    label], ...]} with paths relative to that folder or to the image folder; an integer label is a class
    (one-hot over the classes seen), a list is a vector of numbers (names from its "label_names")."""
    if cond == "none":
        return None, []
    if cond == "slice":
        keys = []
        for f in files:
            m = re.search(r"case_(\d+)_slice_(\d+)\.", Path(f).name)
            if not m:
                raise DataError(f"{source.image_dir / f}: --cond=slice needs OASIS names like "
                                f"case_001_slice_0.nii.png; use --cond=json with a {LABELS_FILE} instead")
            keys.append((m.group(1), int(m.group(2))))
        top = {}
        for case, k in keys:
            top[case] = max(top.get(case, 0), k)
        return np.array([[k / top[case] if top[case] else 0.5] for case, k in keys], np.float32), ["slice_position"]
    path = source.root / LABELS_FILE
    try:
        info = json.loads(path.read_text())
        table = {str(p): v for p, v in info["labels"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: --cond=json needs this file with {{\"labels\": [[path, label], ...]}} "
                        f"(the official dataset.json)") from None
    prefix = source.image_dir.relative_to(source.root).as_posix()
    values = []
    for f in files:
        rel = Path(f).as_posix()
        label = table.get(f"{prefix}/{rel}" if prefix != "." else rel, table.get(rel))
        if label is None:
            raise DataError(f"{path}: no label for {rel} (every training image needs one for --cond=json)")
        values.append(label)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        classes = max(values) + 1
        return np.eye(classes, dtype=np.float32)[values], [f"class_{i}" for i in range(classes)]
    try:
        array = np.array([[float(x) for x in (v if isinstance(v, list) else [v])] for v in values], np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or not np.isfinite(array).all():
        raise DataError(f"{path}: labels must all be integers (classes) or all lists of numbers of one length")
    names = info.get("label_names")
    if not (isinstance(names, list) and len(names) == array.shape[1]):
        names = [f"label_{i}" for i in range(array.shape[1])]
    return array, [str(n) for n in names]


class ImageDataset:
    """One split at one resolution, decoded into memory as uint8 [N, C, R, R] (through the cache).

    Index i < N is image i; with mirror=True, i in [N, 2N) is image i - N flipped left-right (same label).
    """

    def __init__(self,
                 data,                          # folder with keras_png_slices_* folders, or any image folder
                 split: str = "train",          # OASIS split: train / validate / test
                 resolution: int = 256,         # training resolution (power of two)
                 img_channels: int = 1,         # 1 = grayscale (colour converted to luminance), 3 = RGB
                 fit: str = "crop",             # non-square images: "crop" (centre) or "pad" (zeros)
                 mirror: bool = False,          # add x-flipped copies (doubles the data set)
                 with_masks: bool = False,      # also load the OASIS tissue masks (labels 0..3)
                 skip_bad: bool = False,        # skip unreadable files with a warning instead of stopping
                 cache_dir=None,                # where the decoded cache lives; None = <data>/.cache
                 log=None,                      # callable for the one-line notes; None = stderr
                 cond: str = "none"):           # labels for conditional training: none | slice | json
        check_resolution(resolution)
        if img_channels not in (1, 3):
            raise DataError(f"img_channels must be 1 (grayscale) or 3 (RGB), got {img_channels!r}")
        if fit not in FITS:
            raise DataError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.source = find_source(data, split, with_masks)
        self.resolution, self.img_channels, self.mirror = resolution, img_channels, mirror
        self.images, self.masks, self.files, self.info = load_images(
            self.source, resolution, img_channels, fit, with_masks, skip_bad, cache_dir, log)
        self.labels, self.label_names = load_labels(self.source, self.files, cond)

    @property
    def c_dim(self) -> int:
        return 0 if self.labels is None else self.labels.shape[1]

    def label_batch(self, indices, device=None) -> torch.Tensor:
        """Float labels [B, c_dim] for dataset indices (flipped copies share their image's label)."""
        labels = torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64) % self.num_images])
        return labels.to(device) if device is not None else labels

    @property
    def num_images(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        return self.num_images * (2 if self.mirror else 1)

    def get(self, indices):
        """uint8 images [B, C, R, R] (and uint8 masks [B, R, R] or None) for dataset indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"dataset index out of range [0, {len(self)})")
        base = indices % self.num_images
        flip = torch.from_numpy(indices >= self.num_images)
        images = torch.from_numpy(self.images[base])
        masks = torch.from_numpy(self.masks[base]) if self.masks is not None else None
        if flip.any():
            images[flip] = images[flip].flip(-1)
            if masks is not None:
                masks[flip] = masks[flip].flip(-1)
        return images, masks

    def batch(self, indices, device=None) -> torch.Tensor:
        """Float images in [-1, 1], [B, C, R, R], on device (the uint8 copy is what crosses to the GPU). With
        masks, [B, C + K, R, R]: the image, then the mask as K one-hot channels in {-1, 1} (mask_channels)."""
        images, masks = self.get(indices)
        x = to_float(images.to(device) if device is not None else images)
        if masks is None:
            return x
        masks = masks.to(device) if device is not None else masks
        return torch.cat([x, mask_channels(masks, len(MASK_LEVELS))], dim=1)


class RealSets(NamedTuple):
    reference: torch.Tensor             # uint8 [M, C, R, R]: the train split (or the plain folder)
    names: list                         # its file names
    heldout: torch.Tensor               # uint8 [H, C, R, R]
    info: dict                          # a description (folder, counts), written into scores.json
    labels: np.ndarray = None           # float32 [M, c_dim] with cond != "none", else None
    heldout_labels: np.ndarray = None   # float32 [H, c_dim] with cond != "none", else None


def reference_sets(path, resolution: int, img_channels: int = 1, fit: str = "crop", max_real: int = None,
                   skip_bad: bool = False, log=None, option: str = "--real", cond: str = "none") -> RealSets:
    """Real slices to score a generator against. The reference is the train split (or the plain folder),
    capped at max_real by a seeded random choice; the held-out set is validate (else test), else a random
    10 % of the folder. cond (as --cond) also reads each slice's labels. Errors name `option`."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{option} {root}: no such folder; give an OASIS folder (keras_png_slices_*) or a folder "
                        f"of images")
    splits = [s for s in ("validate", "test") if (root / f"{OASIS_PREFIX}{s}").is_dir()]
    try:
        sets = [ImageDataset(root, split=s, resolution=resolution, img_channels=img_channels,
                             fit=fit, skip_bad=skip_bad, log=log, cond=cond) for s in ["train"] + splits[:1]]
    except DataError as e:                               # worded for train.py's --data
        raise DataError(str(e).replace("--data", option)) from None
    reference, names = torch.from_numpy(sets[0].images), list(sets[0].files)
    labels = sets[0].labels
    if splits:
        heldout, held_name = torch.from_numpy(sets[1].images), f"{splits[0]} split"
        held_labels = sets[1].labels
    else:
        if len(reference) < 3:
            raise DataError(f"{option} {root}: {len(reference)} image(s); scoring needs at least 3 (a reference "
                            f"and a held-out share)")
        perm = torch.from_numpy(np.random.default_rng(HOLDOUT_SEED).permutation(len(reference)))
        n_held = max(1, round(HOLDOUT_SHARE * len(reference)))
        hold, keep = perm[:n_held].sort().values, perm[n_held:].sort().values
        heldout, reference, names = reference[hold], reference[keep], [names[i] for i in keep]
        held_labels, labels = (None, None) if labels is None else (labels[hold.numpy()], labels[keep.numpy()])
        held_name = f"random {HOLDOUT_SHARE:.0%} of {sets[0].source.name} (seed {HOLDOUT_SEED})"
    if max_real and len(reference) > max_real:
        keep = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(reference), max_real, replace=False)))
        reference, names = reference[keep], [names[i] for i in keep]
        labels = None if labels is None else labels[keep.numpy()]
    info = {"reference": sets[0].source.name, "reference_images": len(reference), "heldout": held_name,
            "heldout_images": len(heldout)}
    return RealSets(reference, names, heldout, info, labels, held_labels)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.to(torch.float32) / 127.5 - 1


def mask_channels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """uint8 labels [N, R, R] -> one-hot float [N, K, R, R] scaled to {-1, 1}: the form G generates a mask in
    (modules.mask_activation) and D reads it in."""
    return torch.nn.functional.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float() * 2 - 1


def mask_labels(channels: torch.Tensor) -> torch.Tensor:
    """Mask channels [N, K, R, R] (generated or one-hot) -> uint8 labels [N, R, R] by argmax: always 0..K-1."""
    return channels.detach().argmax(dim=1).to(torch.uint8)


def mask_to_levels(labels: torch.Tensor) -> torch.Tensor:
    """uint8 labels [N, R, R] -> uint8 OASIS mask images [N, 1, R, R] with the pixel values 0/85/170/255."""
    levels = torch.tensor(MASK_LEVELS, dtype=torch.uint8, device=labels.device)
    return levels[labels.long()][:, None]


def pair_tiles(images: torch.Tensor, labels: torch.Tensor = None) -> torch.Tensor:
    """uint8 images [N, C, R, R] and labels [N, R, R] -> tiles [N, C, R, 2R]: the image, then its mask as
    OASIS levels; the images alone when labels is None."""
    if labels is None:
        return images
    return torch.cat([images, mask_to_levels(labels).expand(-1, images.shape[1], -1, -1)], dim=3)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class InfiniteSampler:
    """Endless stream of dataset indices: each epoch is a permutation drawn from (seed, epoch).

    Resumable: state_dict() is three integers (epoch, position, data-set size). With world_size > 1 all ranks
    walk the same stream and rank r takes every world_size-th index, so ranks see disjoint images and stay in
    step.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if size < 1:
            raise DataError("cannot sample from an empty data set")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next(self, batch: int) -> np.ndarray:
        """The next `batch` indices for this rank (the stream advances by batch * world_size)."""
        need, out = batch * self.world_size, []
        while need:
            take = min(need, self.size - self.position)
            out.append(self._order[self.position:self.position + take])
            self.position += take
            need -= take
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
        return np.concatenate(out)[self.rank::self.world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict):
        """Continue where state left off: the same data order when the data set has the size it had then.
        When the size differs (or an older state without it points past the end), the data order restarts
        at the next epoch with the new size, and a one-line note for the user is returned; else None."""
        epoch, position, saved = int(state["epoch"]), int(state["position"]), state.get("size")
        if saved == self.size or (saved is None and position < self.size):
            self.epoch, self.position = epoch, position
            self._order = self._permutation()
            return None
        self.epoch, self.position = epoch + 1, 0
        self._order = self._permutation()
        was = f"{int(saved)} -> {self.size}" if saved is not None else f"now {self.size}"
        return f"the training data changed ({was} images): the data order restarts at epoch {self.epoch}"


# ----------------------------------------------------------------------------------------------
# The built-in demo data: virtual subjects from the MNI152 template shipped inside nilearn

DEMO_MARKER = "demo.json"                       # written last: a demo folder without it is incomplete


@functools.lru_cache(maxsize=1)
def _load_mni152():
    """T1, grey matter, white matter and brain mask of the MNI152 2009 template (1 mm), as one float32
    tensor [1, 4, Z, Y, X]. nilearn ships these files inside its wheel; nothing is downloaded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets
        vols = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
                datasets.load_mni152_wm_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)]
        arrays = [np.asarray(v.get_fdata(), dtype=np.float32).transpose(2, 1, 0) for v in vols]  # [Z, Y, X]
    return torch.from_numpy(np.stack(arrays))[None]


def _smooth_field(rng, channels: int, grid, amplitude: float, coarse=(4, 5, 4)) -> torch.Tensor:
    """A random field that varies slowly in space: N(0, amplitude) on a coarse lattice spanning the
    volume, interpolated trilinearly at the sample points grid [1, D, H, W, 3]. -> [channels, D, H, W]"""
    lattice = torch.from_numpy(rng.normal(0, amplitude, (1, channels, *coarse)).astype(np.float32))
    return torch.nn.functional.grid_sample(lattice, grid, mode="bilinear", align_corners=True)[0]


DEMO_BOX = (176, 208, 176)                      # mm sampled around the brain's centre (x, y, z), RAS+
DEMO_VERSION = 2                                # 2: cut by the volume slicer (volumes.py); 1: cut here


def demo_subject(template: torch.Tensor, rng, spacing: float):
    """One virtual subject: the template under a random affine + smooth deformation and a random
    intensity change, resampled on a DEMO_BOX grid of `spacing` mm voxels.
    -> (uint8 T1 volume [X, Y, Z], uint8 labels [X, Y, Z]: 0 background, 1 CSF, 2 GM, 3 WM), RAS+"""
    _, _, zdim, ydim, xdim = template.shape
    voxels = (template[0, 3] > 0.5).nonzero().numpy()             # [N, 3] brain voxels as (z, y, x)
    centre = ((voxels.min(0) + voxels.max(0)) / 2)[::-1]          # the brain's bounding-box centre, (x, y, z)
    axes = [(np.arange(int(round(n / spacing))) - (int(round(n / spacing)) - 1) / 2) * spacing for n in DEMO_BOX]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = np.stack([xx, yy, zz], axis=-1)                      # [Z, Y, X, 3] mm around the centre
    angle = np.deg2rad(rng.normal(0, 4.0))                        # in-plane head rotation
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    scale = np.exp(rng.normal(0, 0.05, 3))                        # head size and shape
    src = points @ (rot * scale).T + centre + rng.normal(0, 2.0, 3)
    size = np.array([xdim - 1, ydim - 1, zdim - 1])
    grid = torch.from_numpy((2 * src / size - 1).astype(np.float32))[None]  # [1, Z, Y, X, 3] in [-1, 1]
    grid = grid + _smooth_field(rng, 3, grid, 3.0).permute(1, 2, 3, 0)[None] * torch.from_numpy(
        (2 / size).astype(np.float32))                           # + smooth displacement, ~3 mm
    t1, gm, wm, brain = torch.nn.functional.grid_sample(template, grid, mode="bilinear",
                                                        align_corners=True)[0]  # each [Z, Y, X]
    brain = brain > 0.5
    # Intensity: GM/WM contrast, gamma, brightness, a smooth bias field and a little noise.
    img = t1 + float(rng.normal(0, 0.04)) * (wm - gm)
    img = img.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.15)))
    img = img * float(np.exp(rng.normal(0, 0.06))) * (1 + _smooth_field(rng, 1, grid, 0.08)[0])
    img = img + torch.from_numpy(rng.normal(0, 0.01, img.shape).astype(np.float32))
    img = (img.clamp(0, 1) * 254 + 1).round() * brain             # skull-stripped: 0 outside, >= 1 inside
    csf = (1 - gm - wm).clamp(min=0)
    labels = (torch.stack([csf, gm, wm]).argmax(dim=0) + 1) * brain  # 0 bg, 1 CSF, 2 GM, 3 WM
    to_xyz = (2, 1, 0)                                            # [Z, Y, X] -> [X, Y, Z]
    return (img.to(torch.uint8).permute(to_xyz).numpy(), labels.to(torch.uint8).permute(to_xyz).numpy())


def build_demo(out, seed: int = 0, subjects=(24, 4, 4), slices: int = 32, resolution: int = 256, log=None) -> Path:
    """Write the demo data set: sum(subjects) virtual subjects as NIfTI volumes with tissue label maps, cut by
    the volume slicer (volumes.make_slices, the code behind `dataset.py slices`) into the OASIS layout with
    dataset.json, split by subject (train / validate / test in the shares of `subjects`), deterministic for a
    seed. The volumes are scratch (deleted). Refuses to touch an existing folder."""
    import nibabel
    import volumes
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose another --out or delete it")
    check_resolution(resolution)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".partial-"))
    try:
        template = _load_mni152()
        spacing = max(1.0, DEMO_BOX[1] / resolution)              # 1 mm, coarser for small test resolutions
        affine = np.diag([spacing] * 3 + [1.0])                   # RAS+
        (tmp / "volumes").mkdir()
        (tmp / "segs").mkdir()
        for case in range(1, sum(subjects) + 1):
            t1, labels = demo_subject(template, np.random.default_rng([seed, case]), spacing)
            nibabel.save(nibabel.Nifti1Image(t1, affine), tmp / "volumes" / f"demo_{case:03d}.nii.gz")
            nibabel.save(nibabel.Nifti1Image(labels, affine), tmp / "segs" / f"demo_{case:03d}_seg.nii.gz")
        slices_dir = tmp / "slices"
        try:
            volumes.make_slices(tmp / "volumes", slices_dir, tmp / "segs", count=slices, resolution=resolution,
                                fit="pad", split=tuple(n / sum(subjects) for n in subjects), seed=seed,
                                log=lambda msg: None)
        except volumes.VolumeError as e:
            raise DataError(str(e)) from None
        os.chmod(slices_dir, 0o755)
        runs.write_text(slices_dir / DEMO_MARKER, json.dumps({
            "what": "demo data derived from the MNI152 2009 template in nilearn; NOT OASIS",
            "version": DEMO_VERSION, "seed": seed, "subjects": dict(zip(SPLITS, subjects)), "slices": slices,
            "resolution": resolution, "voxel_mm": spacing, "box_mm": list(DEMO_BOX),
            "cut_by": "volumes.make_slices (python dataset.py slices), default range and normalization"}, indent=1))
        if out.exists():
            out.rmdir()
        os.replace(slices_dir, out)
        log(f"demo: {sum(subjects)} virtual subjects x {slices} slices -> {out} (train / validate / test "
            f"{' / '.join(map(str, subjects))} subjects, with masks and dataset.json)")
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_demo(out=DEFAULT_DATA, log=None) -> Path:
    """The demo data at `out`, built on first use (what train.py reads when no --data is given)."""
    out = Path(out)
    if (out / DEMO_MARKER).is_file():
        if json.loads((out / DEMO_MARKER).read_text()).get("version", 1) < DEMO_VERSION:
            (log or (lambda msg: print(msg, file=sys.stderr)))(
                f"note: {out} was built by an older version of the demo builder (now cut by the volume slicer); "
                f"it is used as it is; delete it to rebuild")
        return out
    (log or (lambda msg: print(msg, file=sys.stderr)))(f"building the demo data in {out} (first use)")
    return build_demo(out, log=log)


# ----------------------------------------------------------------------------------------------
# python dataset.py check | demo | figure

def check(data, resolution: int = None, img_channels: int = 1, skip_bad: bool = False):
    """Decode every file once and describe what a training run would see.
    Returns (report lines, problems): each problem is one line; none means the data can be used.
    Raises DataError when there is nothing to report on (missing path, no images)."""
    if resolution is not None:
        check_resolution(resolution)
    root = Path(data)
    oasis = root.is_dir() and is_oasis_layout(root)
    splits = [s for s in SPLITS if (root / f"{OASIS_PREFIX}{s}").is_dir()] if oasis else [None]
    lines = [f"data: {root} ({'OASIS layout' if oasis else 'image folder, searched recursively'})"]
    problems = []
    for split in splits:
        source = find_source(root, split or "train")
        has_masks = oasis and (root / f"{OASIS_PREFIX}seg_{split}").is_dir()
        mask_note = "no masks"
        if has_masks:
            try:
                pair_masks(source, root / f"{OASIS_PREFIX}seg_{split}")
                mask_note = f"{len(source.mask_files)} masks paired"
            except DataError as e:
                problems.append(str(e))
                mask_note = "masks DO NOT MATCH"
        stats = DecodeStats()
        for f in source.files:
            try:
                im = open_image(f)
            except DataError as e:
                stats.bad.append([f.relative_to(source.image_dir).as_posix(), str(e)])
                continue
            stats.add(f"{im.width}x{im.height}", stats.sizes)
            stats.add(_mode_label(im), stats.modes)
            _to_uint8(im, img_channels, stats)
        bad_note = f", {len(stats.bad)} UNREADABLE" if stats.bad else ""
        lines.append(f"{source.name:>10}: {len(source.files)} images, {mask_note}{bad_note}")
        lines.append(f"{'':>10}  sizes {_table(stats.sizes)}; modes {_table(stats.modes)}")
        if stats.color_to_gray:
            lines.append(f"{'':>10}  {stats.color_to_gray} colour images would become grayscale (luminance)")
        if resolution is not None:
            other = sum(n for size, n in stats.sizes.items() if size != f"{resolution}x{resolution}")
            if other:
                lines.append(f"{'':>10}  {other} images would be cropped/resized to {resolution}x{resolution}")
        if stats.bad:
            lines += [f"{'':>10}  bad: {name}: {why}" for name, why in stats.bad[:10]]
            if not skip_bad:
                problems.append(str(_bad_files_error(stats.bad, source.image_dir)))
    return lines, problems


def _table(counts: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def make_figure(data, out, count: int = 6, seed: int = 0) -> Path:
    """Figure of `count` training slices above their tissue masks (for the README)."""
    from matplotlib.colors import ListedColormap
    plt = runs.pyplot()
    source = find_source(data, "train", with_masks=True)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(source.files), size=min(count, len(source.files)), replace=False))
    fig, axes = plt.subplots(2, len(pick), figsize=(2.2 * len(pick), 4.6), squeeze=False)
    cmap = ListedColormap(["black", "#3b7dd8", "#9a9a9a", "#f2f2f2"])   # background, CSF, GM, WM
    for j, i in enumerate(pick):
        axes[0, j].imshow(np.asarray(open_image(source.files[i]).convert("L")), cmap="gray", vmin=0, vmax=255)
        axes[1, j].imshow(decode_mask(source.mask_files[i], open_image(source.mask_files[i]).width), cmap=cmap,
                          vmin=0, vmax=3, interpolation="nearest")
        axes[0, j].set_title(source.files[i].name.replace(".nii.png", ""), fontsize=7)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(f"{Path(data).name}: slices (top) and tissue masks (bottom: CSF blue, GM grey, WM white)",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        plt.close(fig)
        raise runs.write_error(out.parent, e) from None
    return runs.save_figure(fig, out, dpi=110)


def parse_subjects(text: str) -> tuple:
    """--subjects 24,4,4 -> (24, 4, 4): subjects in train, validate, test; a ConfigError otherwise."""
    try:
        subjects = tuple(int(x) for x in text.split(","))
    except ValueError:
        subjects = ()
    if len(subjects) != 3 or min(subjects) < 1:
        raise config_lib.ConfigError(f"--subjects must be three positive integers like 24,4,4, got {text!r}")
    return subjects


def main(argv=None) -> int:
    """The command line. Exit codes: 0 done, 1 unusable data or a file that cannot be written, 2 a usage error;
    every error is one line on stderr."""
    parser = config_lib.Parser(prog="dataset.py", description="Check, build and show training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="report what a training run would see; non-zero exit if unusable")
    p.add_argument("--data", required=True, help="folder with keras_png_slices_* folders, or any image folder")
    p.add_argument("--resolution", type=int, default=None, help="training resolution to check against")
    p.add_argument("--img_channels", type=int, default=1, choices=(1, 3), help="1 = grayscale, 3 = RGB")
    p.add_argument("--skip_bad", action="store_true", help="report unreadable files without failing")
    p = sub.add_parser("demo", help="build the demo data (MNI152 template, not OASIS)")
    p.add_argument("--out", default=str(DEFAULT_DATA), help="new folder to create")
    p.add_argument("--seed", type=int, default=0, help="random seed of the virtual subjects")
    p.add_argument("--subjects", default="24,4,4", help="subjects in train,validate,test")
    p = sub.add_parser("slices", help="cut NIfTI / Analyze volumes into OASIS-layout slices (volumes.py)")
    import volumes                                       # the converter lives in its own file
    volumes.add_arguments(p)
    p = sub.add_parser("figure", help="draw slices beside their masks")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="OASIS-layout folder")
    p.add_argument("--out", default="picture/demo_slices.png", help="PNG to write")
    try:
        args = parser.parse_args(argv)
        if args.command == "check":
            lines, problems = check(args.data, args.resolution, args.img_channels, args.skip_bad)
            print("\n".join(lines), flush=True)
            if problems:
                more = f" (and {len(problems) - 1} more problem(s), see above)" if len(problems) > 1 else ""
                raise DataError(problems[0] + more)
            print("OK: the data can be used for training")
        elif args.command == "slices":
            try:
                volumes.run(args)
            except volumes.VolumeError as e:
                raise DataError(str(e)) from None
        elif args.command == "demo":
            subjects = parse_subjects(args.subjects)
            print(f"demo data written to {build_demo(args.out, seed=args.seed, subjects=subjects)}")
        else:
            print(f"figure written to {make_figure(args.data, args.out)}")
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, runs.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
