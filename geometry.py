"""Where a volume's tissue lies, in millimetres: the voxel size along the slicer's RAS+ axes, the physical size
of what the slicer cuts (recorded in dataset.json, so that stacks of generated slices get a spacing), and the
signs that a volume is a whole head (skull, neck, face, a noisy background) rather than an extracted brain.

Owns those measurements and their thresholds. Does not own reading voxels (volumes.py, dicom.py) or writing
stacks (stacks.py). The slicer (volumes.py) calls head_signs once per volume and cut_geometry per subject.
"""

import numpy as np

import dicom

# A head rather than a brain, from the voxels above 0 (the slicer's brain):
BORDER_SHARE = 0.3          # share of the volume's six outer faces above 0: an extracted brain's background is 0
BOTTOM_SHARE = 0.35         # tissue in the lowest plane / the widest axial cross-section: a neck runs through it
HEAD_EXTENT_MM = 185.0      # inferior-superior extent: a brain with brainstem spans 150-160 mm, vertex to chin ~230


def voxel_mm(path) -> np.ndarray:
    """Voxel size in mm [3] along the RAS+ axes of volumes.read_volume's array, from the header alone (a NIfTI
    or Analyze file) or the DICOM headers of a dicom.Series."""
    import nibabel
    affine = dicom.geometry(path)[1] if isinstance(path, dicom.Series) else nibabel.load(str(path)).affine
    axes = nibabel.io_orientation(affine)[:, 0].astype(int)        # stored axis i -> RAS+ axis axes[i]
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    out[axes] = sizes
    return out


def axial_extent(brain: np.ndarray) -> tuple:
    """(first, last) axial index holding any voxel of brain [X, Y, Z]."""
    z = np.nonzero(brain.any(axis=(0, 1)))[0]
    return int(z.min()), int(z.max())


def head_signs(brain: np.ndarray, voxel) -> list:
    """Why the voxels above 0 (brain [X, Y, Z], RAS+) look like a whole head, not an extracted brain: a list of
    reasons, empty for a brain. A raw scan's background noise covers the volume's faces; its neck runs through
    the lowest plane; vertex to chin is longer than any brain."""
    reasons = []
    faces = [brain[0], brain[-1], brain[:, 0], brain[:, -1], brain[:, :, 0], brain[:, :, -1]]
    border = sum(int(f.sum()) for f in faces) / sum(f.size for f in faces)
    if border > BORDER_SHARE:
        reasons.append(f"{border:.0%} of its outer faces are above 0: a background that is not 0")
    areas = brain.sum(axis=(0, 1))
    if areas[0] > BOTTOM_SHARE * areas.max():
        reasons.append(f"tissue runs through its lowest plane over {areas[0] / areas.max():.0%} of its widest "
                       f"cross-section, as a neck does")
    first, last = axial_extent(brain)
    extent = (last - first + 1) * float(voxel[2])
    if extent > HEAD_EXTENT_MM:
        reasons.append(f"the voxels above 0 span {extent:.0f} mm from bottom to top, more than a brain's ~150 mm")
    return reasons


def cut_geometry(brain: np.ndarray, voxel, fit: str) -> dict:
    """What a subject's slices measure: the voxel size, the brain's inferior-superior extent (the slicer's
    range [0, 1] of positions) and the side of the square slice image, all in mm."""
    first, last = axial_extent(brain)
    x, y = brain.shape[0] * float(voxel[0]), brain.shape[1] * float(voxel[1])
    return {"voxel_mm": [round(float(v), 4) for v in voxel],
            "axial_extent_mm": round((last - first) * float(voxel[2]), 3),
            "side_mm": round(max(x, y) if fit == "pad" else min(x, y), 3)}


def median_geometry(cases: list) -> dict:
    """The median of cut_geometry's values over subjects, as dataset.json records it."""
    keys = ("axial_extent_mm", "side_mm")
    out = {k: round(float(np.median([c[k] for c in cases])), 3) for k in keys}
    out["voxel_mm"] = [round(float(v), 4) for v in np.median([c["voxel_mm"] for c in cases], axis=0)]
    out["subjects"] = len(cases)
    out["axes"] = ("slices inferior -> superior at positions lo..hi of axial_extent_mm; slice images anterior up, "
                   "the subject's left on the left, side_mm wide")
    return out
