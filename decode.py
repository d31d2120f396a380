"""Decoding one image file: any Pillow-readable image (8/16-bit, float, palette, colour) or OASIS tissue mask
to a uint8 array at the training resolution, with every failure turned into one DataError line.

Owns opening a file safely (missing, broken links, empty, truncated, decompression bombs, NaN pixels), the
conversion of any mode to 8-bit grayscale or RGB, crop or pad to a square, the resize filter, what decoding
saw (DecodeStats) and reading a tissue mask's classes (OASIS levels or class indices, nothing else). Does not
own finding the files or the cache (dataset.py, cache.py).
"""

import errno
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from oasis import MASK_LEVELS, DataError, first_names


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


def read_image(path: Path, channels: int, stats: DecodeStats, data: bytes = None) -> Image.Image:
    """Open an image (open_image), note its size and mode in stats and convert it to 'L' or 'RGB' (_to_uint8)."""
    im = open_image(path, data)
    stats.add(f"{im.width}x{im.height}", stats.sizes)
    stats.add(_mode_label(im), stats.modes)
    return _to_uint8(im, channels, stats)


def decode_image(path: Path, resolution: int, channels: int = 1, fit: str = "crop",
                 stats: DecodeStats = None, data: bytes = None) -> np.ndarray:
    """One image file (or its bytes, data) -> uint8 [channels, resolution, resolution]."""
    stats = stats if stats is not None else DecodeStats()
    im = fit_square(read_image(path, channels, stats, data), fit)
    if im.width != resolution:
        stats.resized += 1
        im = im.resize((resolution, resolution), Image.LANCZOS)  # windowed-sinc low-pass when shrinking
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)    # [C, R, R]


MASK_ENCODINGS = {"levels": "OASIS levels 0/85/170/255", "classes": "class indices 0..3",
                  "background": "background only"}      # how a mask file stores its classes -> words for the user


def _mask_values(im: Image.Image) -> np.ndarray:
    """The values a mask file stores [H, W]: grey values (16-bit OASIS levels, l * 257, read as l), the indices of
    a colour palette (index k = class k), else the luminance; float images keep their values."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im)
        wide = [257 * level for level in MASK_LEVELS]      # 8-bit levels stretched to 0..65535
        return values // 257 if np.isin(values, wide).all() else values
    if im.mode == "P" and not _palette_is_gray(im):
        return np.asarray(im)
    return np.asarray(im.convert("L"))


def read_mask(path: Path, data: bytes = None) -> tuple:
    """A tissue mask file -> (uint8 labels [H, W] in 0..3, its encoding: a key of MASK_ENCODINGS). Values that are
    all OASIS levels 0/85/170/255 or all class indices 0..3 are read exactly; any other set of values is a DataError
    naming the file and the values (never rounded to the nearest level)."""
    values = _mask_values(open_image(path, data))
    found = set(np.unique(values).tolist())
    if found == {0}:
        return np.zeros(values.shape, np.uint8), "background"
    if found <= set(range(len(MASK_LEVELS))):
        return values.astype(np.uint8), "classes"
    if found <= set(MASK_LEVELS):
        return np.searchsorted(MASK_LEVELS, values).astype(np.uint8), "levels"
    shown = first_names([f"{v:g}" for v in sorted(found)], 8)
    raise DataError(f"{path}: mask values {shown} are neither the OASIS levels 0/85/170/255 nor class indices 0..3")


def decode_mask(path: Path, resolution: int, fit: str = "crop", data: bytes = None) -> np.ndarray:
    """OASIS tissue mask file -> uint8 labels [resolution, resolution] in 0..3 (read_mask: levels or class
    indices)."""
    im = fit_square(Image.fromarray(read_mask(path, data)[0]), fit)   # padding is background (0)
    if im.width != resolution:
        im = im.resize((resolution, resolution), Image.NEAREST)   # labels must not be blended
    return np.asarray(im, dtype=np.uint8)
