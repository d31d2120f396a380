"""The OASIS layout's naming rules and the data errors: the one place both the slicer (volumes.py) and the
loader (dataset.py) read them from.

Owns the split names and folder names (keras_png_slices_{split}, keras_png_slices_seg_{split}), the slice
file names (case_001_slice_K.nii.png and its mask seg_001_slice_K.nii.png), the mask's pixel levels, the
labels file name, `DataError` and the wording of a list of file names inside one. Does not own reading or
writing any file (dataset.py, decode.py, volumes.py). Imports nothing from the project but errors.py.
"""

import re
from pathlib import Path

import errors

SPLITS = ("train", "validate", "test")
OASIS_PREFIX = "keras_png_slices_"              # keras_png_slices_{split}, keras_png_slices_seg_{split}
MASK_LEVELS = (0, 85, 170, 255)                 # background, CSF, grey matter, white matter
LABELS_FILE = "dataset.json"                    # per-slice labels, in the official dataset.json format


class DataError(errors.ProjectError):
    """A problem with the user's data, worded as one line that names the file and what to do."""


def first_names(names, n: int = 5) -> str:
    """The first n names, then how many more: 'a.png, b.png, ... (3 more)'."""
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def image_folder(split: str) -> str:
    """The folder of a split's slices: keras_png_slices_train."""
    return f"{OASIS_PREFIX}{split}"


def mask_folder(split: str) -> str:
    """The folder of a split's tissue masks: keras_png_slices_seg_train."""
    return f"{OASIS_PREFIX}seg_{split}"


def is_oasis_layout(root: Path) -> bool:
    return any((root / image_folder(s)).is_dir() for s in SPLITS)


def slice_name(case: int, k: int) -> str:
    """The file name of slice k of subject case (1-based): case_001_slice_0.nii.png."""
    return f"case_{case:03d}_slice_{k}.nii.png"


def mask_name(image_name: str) -> str:
    """OASIS naming: case_001_slice_0.nii.png -> seg_001_slice_0.nii.png."""
    return "seg_" + image_name[len("case_"):] if image_name.startswith("case_") else image_name


def slice_level(name) -> int:
    """The slice number K of an OASIS name (case_001_slice_K.nii.png, its axial level: 0 = lowest of the
    subject's slices), or None for other names."""
    m = re.search(r"_slice_(\d+)\.", Path(name).name)
    return int(m.group(1)) if m else None


def case_and_slice(name):
    """(case, K) of an OASIS name case_XXX_slice_K.nii.png: the case as written ('001') and K as an int;
    None for other names."""
    m = re.search(r"case_(\d+)_slice_(\d+)\.", Path(name).name)
    return (m.group(1), int(m.group(2))) if m else None
