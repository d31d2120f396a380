"""Decode once: the uint8 cache of a split's images (and masks), and how far it is trusted.

Owns `load_images` (the decoded arrays of one split, from the cache when it is current, else decoded now
and cached), the cache's index (settings, every file's size, times and BLAKE2b digest, the arrays'
digests), where the cache lives (<data>/.cache, else the per-user cache) and the wording of unreadable
files. Every file it writes goes through runs.atomic_write. Does not own finding the files (dataset.py)
or decoding one file (decode.py).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

import decode
import runs
from oasis import DataError, first_names

CACHE_VERSION = 3                               # bump when the decoded format or the index changes
                                                # (3: masks of class indices 0..3 read as classes, not rounded)
DIGEST_SIZE = 16                                # bytes of the BLAKE2b digests of files and cached arrays


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


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


def cache_folders(source, cache_dir) -> list:
    """Where the cache may live, in the order they are tried: the given cache_dir alone, else <data>/.cache
    then the per-user cache."""
    return [Path(cache_dir)] if cache_dir is not None else [source.root / ".cache", user_cache_dir()]


def cache_paths(folder: Path, source, resolution: int, channels: int, fit: str, with_masks: bool):
    """(array file, mask file, index file) of the cache entry for these settings in folder."""
    where = hashlib.sha1(str(source.image_dir.resolve()).encode()).hexdigest()[:8]
    stem = f"{source.name}-{where}-r{resolution}-c{channels}-{fit}{'-seg' if with_masks else ''}"
    return folder / f"{stem}.npy", folder / f"{stem}-masks.npy", folder / f"{stem}.json"


def bad_files_error(bad: list, where: Path) -> DataError:
    return DataError(f"{len(bad)} unreadable image file(s) in {where}: {first_names(b[0] for b in bad)} "
                     f"(first problem: {bad[0][1]}); fix or remove them, or pass --skip_bad to train without them")


def load_images(source, resolution: int, channels: int = 1, fit: str = "crop", with_masks: bool = False,
                skip_bad: bool = False, cache_dir=None, log=None):
    """Decoded images of a source (a dataset.Source: the files of one split), from the cache when it is
    current, else decoded now and cached.

    Returns (images uint8 [N, C, R, R], masks uint8 [N, R, R] or None, kept file names, info dict).
    How far the cache is trusted: its index holds the settings and, for every image and mask file, the
    relative path, size, mtime, ctime and a BLAKE2b digest of the bytes decoded. When path, size, mtime and
    ctime all match, the cache is trusted without reading the files. A file whose ctime alone changed (cp -p,
    rsync -t, chmod, a copied folder) is hashed again and the cache kept only when its bytes are unchanged;
    any other difference rebuilds the cache. The cached arrays are checked against their digests on every
    load, so a damaged cache is reported and rebuilt, never used. A cache that cannot be written (read-only
    folder, full disk) is not fatal: the run trains from the decoded images in memory. Temporary files that a
    killed run left in a cache folder are removed (runs.remove_stale_temporaries: those whose process is gone).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    settings = [CACHE_VERSION, resolution, channels, fit, with_masks]
    listing = {"images": _listing(source.files, source.image_dir),
               "masks": _listing(source.mask_files, source.mask_dir) if with_masks else []}
    folders = cache_folders(source, cache_dir)
    for folder in folders:                               # what a killed run was writing there
        runs.remove_stale_temporaries(folder)
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
        raise bad_files_error(bad, source.image_dir)
    if bad:
        log(f"warning: skipping {len(bad)} unreadable image(s): {first_names(b[0] for b in bad)}")
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


def _read_cache(paths, source, settings: list, listing: dict, shape: tuple, with_masks: bool, log):
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


def _write_cache(folders: list, source, resolution: int, channels: int, fit: str, with_masks: bool,
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


def _decode_all(source, resolution: int, channels: int, fit: str, with_masks: bool):
    """Decode every file (and mask); unreadable ones are collected in stats.bad, not raised.
    Also returns the BLAKE2b digest of every file's bytes (None where unreadable), for the cache index."""
    from tqdm import tqdm
    stats = decode.DecodeStats()
    n = len(source.files)
    images = np.empty((n, channels, resolution, resolution), dtype=np.uint8)
    masks = np.empty((n, resolution, resolution), dtype=np.uint8) if with_masks else None
    kept, digests = [], {"images": [None] * n, "masks": [None] * n if with_masks else []}
    for i, f in enumerate(tqdm(source.files, desc=f"decoding {source.name}", unit="img", disable=n < 500,
                               file=sys.stderr)):
        try:
            data = decode.read_file(f)
            digests["images"][i] = file_digest(data)
            images[len(kept)] = decode.decode_image(f, resolution, channels, fit, stats, data)
            if with_masks:
                data = decode.read_file(source.mask_files[i])
                digests["masks"][i] = file_digest(data)
                masks[len(kept)] = decode.decode_mask(source.mask_files[i], resolution, fit, data)
        except DataError as e:
            stats.bad.append([f.relative_to(source.image_dir).as_posix(), str(e)])
            continue
        kept.append(f.relative_to(source.image_dir).as_posix())
    images = images[:len(kept)]
    masks = masks[:len(kept)] if with_masks else None
    return images, masks, kept, stats, digests
