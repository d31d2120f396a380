"""Training data: OASIS slice folders and plain image folders, read through the decode cache and served
as batches, with their labels, the real sets that scores compare against and the sampler's data order.

Owns: finding images (and their tissue masks), labels for conditional training, ImageDataset, the real
reference and held-out sets, the uint8 <-> float and mask conversions, InfiniteSampler, and the data
command `python dataset.py check|demo|slices|figure`. Does not own the OASIS names and DataError
(oasis.py), decoding one file (decode.py), the cache (cache.py), the demo data (demo.py), cutting volumes
into slices (volumes.py), augmentation (augment.py) or anything about models and training (modules.py,
train.py).

    python dataset.py check --data PATH [--resolution 256]     # what a training run would see
    python dataset.py demo --outdir data/demo                   # build the demo data
    python dataset.py slices --volumes /data/nifti --outdir /data/slices [--segs /data/labels]
    python dataset.py figure --data data/demo --out picture/demo_slices.png
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import cache
import config as config_lib
import demo
import errors
import oasis
import runs
import volumes
from decode import MASK_ENCODINGS, DecodeStats, decode_mask, open_image, read_image, read_mask
from oasis import DataError, LABELS_FILE, MASK_LEVELS, SPLITS, first_names, is_oasis_layout, mask_name

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HOLDOUT_SHARE, HOLDOUT_SEED = 0.1, 0             # plain image folder: share held out as the real baseline
FITS = ("crop", "pad")


def check_resolution(resolution: int) -> int:
    """The training resolution, or a DataError worded for the --resolution option."""
    config_lib.check_resolution(resolution, "--resolution", DataError)
    return resolution


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


def list_images(folder: Path) -> list:
    """Image files under folder, recursively, sorted; hidden files and folders (e.g. .cache) skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS)]
    return sorted(found)


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
        image_dir = root / oasis.image_folder(split)
        if not image_dir.is_dir():
            have = [s for s in SPLITS if (root / oasis.image_folder(s)).is_dir()]
            raise DataError(f"--data {root}: has no {image_dir.name} folder (found splits: {', '.join(have)})")
        mask_dir = root / oasis.mask_folder(split)
        name = split
    else:
        image_dir, mask_dir, name = root, None, root.name
    files = list_images(image_dir)
    if not files:
        entries = [p.name for p in image_dir.iterdir()] if image_dir.is_dir() else []
        what = ("is empty" if not entries else
                f"has no {'/'.join(e[1:] for e in IMAGE_EXTS)} images (found: {first_names(entries, 3)})")
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
            parts.append(f"{len(missing)} images have no mask (first: {first_names(missing, 3)})")
        if extra:
            parts.append(f"{len(extra)} masks have no image (first: {first_names(extra, 3)})")
        raise DataError(f"mask folder {mask_dir} does not match image folder {source.image_dir}: "
                        f"{'; '.join(parts)}")
    source.mask_dir = mask_dir
    source.mask_files = [masks[k] for k in wanted]


# ----------------------------------------------------------------------------------------------
# The dataset a training run reads

CONDITIONS = ("none", "slice", "json")


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
            key = oasis.case_and_slice(f)
            if key is None:
                raise DataError(f"{source.image_dir / f}: --cond=slice needs OASIS names like "
                                f"case_001_slice_0.nii.png; use --cond=json with a {LABELS_FILE} instead")
            keys.append(key)
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
        self.images, self.masks, self.files, self.info = cache.load_images(
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

    def batch(self, indices, device=None, mask_encoding: str = "onehot") -> torch.Tensor:
        """Float images in [-1, 1], [B, C, R, R], on device (the uint8 copy is what crosses to the GPU). With
        masks, [B, C + K, R, R] or [B, C + 1, R, R]: the image, then the mask in mask_encoding's form
        (mask_channels)."""
        images, masks = self.get(indices)
        x = to_float(images.to(device) if device is not None else images)
        if masks is None:
            return x
        masks = masks.to(device) if device is not None else masks
        return torch.cat([x, mask_channels(masks, len(MASK_LEVELS), mask_encoding)], dim=1)


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
    splits = [s for s in ("validate", "test") if (root / oasis.image_folder(s)).is_dir()]
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


def mask_channels(labels: torch.Tensor, classes: int, encoding: str = "onehot") -> torch.Tensor:
    """uint8 labels [N, R, R] -> the mask in the form G generates it and D reads it: "onehot" and "softmax",
    float [N, K, R, R] scaled to {-1, 1} (G's "softmax" masks hold probabilities in between,
    modules.mask_activation); "level", float [N, 1, R, R] holding class k at 2 k / (K - 1) - 1, the OASIS
    pixel values 0/85/170/255 scaled to [-1, 1]; "split", float [N, 2, R, R]: brain (+1) or background (-1),
    then tissue class k >= 1 at 2 (k - 1) / (K - 2) - 1 (CSF -1, GM 0, WM 1) with background at 0;
    "split_dark" the same with background at -1, CSF's end, ordered as a T1 image's intensity."""
    if encoding == "level":
        return labels[:, None].float() * (2 / (classes - 1)) - 1
    if encoding in config_lib.SPLIT_ENCODINGS:    # no tissue class lies between background and its neighbours
        lab = labels.long()
        brain = (lab > 0).float() * 2 - 1
        outside = torch.full_like(brain, -1.0 if encoding == "split_dark" else 0.0)
        tissue = torch.where(lab > 0, (lab - 1).float() * (2 / (classes - 2)) - 1, outside)
        return torch.stack([brain, tissue], dim=1)
    return torch.nn.functional.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float() * 2 - 1


def mask_labels(channels: torch.Tensor, classes: int = len(MASK_LEVELS)) -> torch.Tensor:
    """Mask channels (generated or real) -> uint8 labels [N, R, R], always 0..K-1: [N, K, R, R] one-hot
    channels by argmax; one level channel [N, 1, R, R] snapped to the nearest of the K levels; split and
    split_dark [N, 2, R, R]: background where channel 0 <= 0, else the nearest of the K - 1 tissue levels."""
    channels = channels.detach()
    if channels.shape[1] == 2 and classes > 2:             # split(_dark): brain where channel 0 > 0, then the tissue level
        k = torch.round((channels[:, 1].float() + 1) * ((classes - 2) / 2)).nan_to_num(0).clamp(0, classes - 2) + 1
        return torch.where(channels[:, 0] > 0, k, torch.zeros_like(k)).to(torch.uint8)
    if channels.shape[1] == 1:
        k = torch.round((channels[:, 0].float() + 1) * ((classes - 1) / 2))
        return k.nan_to_num(0).clamp(0, classes - 1).to(torch.uint8)
    return channels.argmax(dim=1).to(torch.uint8)


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
# python dataset.py check | demo | slices | figure

def check(data, resolution: int = None, img_channels: int = 1, skip_bad: bool = False):
    """Decode every file once and describe what a training run would see, masks included (how they store their
    classes: OASIS levels or class indices; any other values are a problem naming the file).
    Returns (report lines, problems): each problem is one line; none means the data can be used.
    Raises DataError when there is nothing to report on (missing path, no images)."""
    if resolution is not None:
        check_resolution(resolution)
    root = Path(data)
    layout = root.is_dir() and is_oasis_layout(root)
    splits = [s for s in SPLITS if (root / oasis.image_folder(s)).is_dir()] if layout else [None]
    lines = [f"data: {root} ({'OASIS layout' if layout else 'image folder, searched recursively'})"]
    problems = []
    for split in splits:
        source = find_source(root, split or "train")
        has_masks = layout and (root / oasis.mask_folder(split)).is_dir()
        mask_note = "no masks"
        if has_masks:
            try:
                pair_masks(source, root / oasis.mask_folder(split))
                mask_note = f"{len(source.mask_files)} masks paired"
            except DataError as e:
                problems.append(str(e))
                mask_note = "masks DO NOT MATCH"
        stats = DecodeStats()
        for f in source.files:
            try:
                read_image(f, img_channels, stats)
            except DataError as e:
                stats.bad.append([f.relative_to(source.image_dir).as_posix(), str(e)])
        encodings, bad_masks = _check_masks(source)
        bad_note = f", {len(stats.bad)} UNREADABLE" if stats.bad else ""
        bad_note += f", {len(bad_masks)} UNUSABLE MASK(S)" if bad_masks else ""
        lines.append(f"{source.name:>10}: {len(source.files)} images, {mask_note}{bad_note}")
        lines.append(f"{'':>10}  sizes {_table(stats.sizes)}; modes {_table(stats.modes)}")
        if encodings:
            lines.append(f"{'':>10}  masks stored as {_table(encodings)}")
        if stats.color_to_gray:
            lines.append(f"{'':>10}  {stats.color_to_gray} colour images would become grayscale (luminance)")
        if resolution is not None:
            other = sum(n for size, n in stats.sizes.items() if size != f"{resolution}x{resolution}")
            if other:
                lines.append(f"{'':>10}  {other} images would be cropped/resized to {resolution}x{resolution}")
        if stats.bad:
            lines += [f"{'':>10}  bad: {name}: {why}" for name, why in stats.bad[:10]]
            if not skip_bad:
                problems.append(str(cache.bad_files_error(stats.bad, source.image_dir)))
        if bad_masks:
            lines += [f"{'':>10}  bad mask: {name}: {why}" for name, why in bad_masks[:10]]
            if not skip_bad:
                problems.append(str(cache.bad_files_error(bad_masks, source.mask_dir)))
    return lines, problems


def _check_masks(source: Source) -> tuple:
    """({encoding in words: count}, [[mask name, reason], ...] of masks that cannot be read) of a source's masks
    (none when it has no paired masks), read as training reads them (decode.read_mask)."""
    encodings, bad = {}, []
    for f in source.mask_files or []:
        try:
            words = MASK_ENCODINGS[read_mask(f)[1]]
            encodings[words] = encodings.get(words, 0) + 1
        except DataError as e:
            bad.append([f.relative_to(source.mask_dir).as_posix(), str(e)])
    return encodings, bad


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
    return errors.run_main(_main, argv)


def build_parser() -> config_lib.Parser:
    parser = config_lib.Parser(prog="dataset.py", description="Check, build and show training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="report what a training run would see; non-zero exit if unusable")
    p.add_argument("--data", required=True, help="folder with keras_png_slices_* folders, or any image folder")
    p.add_argument("--resolution", type=int, default=None, help="training resolution to check against")
    p.add_argument("--img_channels", type=int, default=1, choices=(1, 3), help="1 = grayscale, 3 = RGB")
    p.add_argument("--skip_bad", action="store_true", help="report unreadable files without failing")
    p = sub.add_parser("demo", help="build the demo data (MNI152 template, not OASIS; demo.py)")
    p.add_argument("--outdir", "--out", dest="outdir", default=str(demo.DEFAULT_DATA),
                   help=f"new folder to create (default {demo.DEFAULT_DATA}; --out is an older spelling)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the virtual subjects")
    p.add_argument("--subjects", default="24,4,4", help="subjects in train,validate,test")
    p.add_argument("--slices", type=int, default=32, help="axial slices per subject (default 32, as OASIS)")
    p.add_argument("--resolution", type=int, default=256, help="slice size in pixels (default 256)")
    p = sub.add_parser("slices", help="cut NIfTI / Analyze volumes into OASIS-layout slices (volumes.py)")
    volumes.add_arguments(p)
    p = sub.add_parser("figure", help="draw slices beside their masks")
    p.add_argument("--data", default=str(demo.DEFAULT_DATA), help="OASIS-layout folder")
    p.add_argument("--out", default="picture/demo_slices.png", help="PNG file to write")
    return parser


def _main(argv) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        lines, problems = check(args.data, args.resolution, args.img_channels, args.skip_bad)
        print("\n".join(lines), flush=True)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s), see above)" if len(problems) > 1 else ""
            raise DataError(problems[0] + more)
        print("OK: the data can be used for training")
    elif args.command == "slices":
        volumes.run(args)
    elif args.command == "demo":
        subjects = parse_subjects(args.subjects)
        if args.slices < 1:
            raise config_lib.ConfigError(f"--slices must be >= 1, got {args.slices}")
        config_lib.check_resolution(args.resolution)
        out = demo.build_demo(args.outdir, seed=args.seed, subjects=subjects, slices=args.slices,
                              resolution=args.resolution)
        print(f"demo data written to {out}")
    else:
        print(f"figure written to {make_figure(args.data, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
