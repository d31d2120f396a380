"""The built-in demo data: virtual subjects made from the MNI152 2009 template that ships inside nilearn
(nothing is downloaded), cut by the volume slicer (volumes.py) into the OASIS layout. NOT OASIS.

Owns the virtual subject (the template under a random affine, a smooth deformation and an intensity
change), `build_demo` (`python dataset.py demo`) and `ensure_demo` (what train.py reads when no --data is
given). Does not own cutting volumes into slices (volumes.py) or reading the slices back (dataset.py).
"""

import functools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import config as config_lib
import runs
import volumes
from oasis import SPLITS, DataError

DEFAULT_DATA = Path("data/demo")                # where train.py builds the demo data when no --data is given
DEMO_MARKER = "demo.json"                       # written last: a demo folder without it is incomplete
DEMO_BOX = (176, 208, 176)                      # mm sampled around the brain's centre (x, y, z), RAS+
DEMO_VERSION = 2                                # 2: cut by the volume slicer (volumes.py); 1: cut here


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
    seed. The volumes are scratch (deleted). Refuses to touch an existing folder. Built in a folder beside out
    (volumes.partial_folder); one that a killed build left there is removed first."""
    import nibabel
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    volumes.remove_stale_partials(out, log)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose another --outdir or delete it")
    config_lib.check_resolution(resolution, "--resolution", DataError)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = volumes.partial_folder(out)
    try:
        tmp.mkdir()
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
        volumes.make_slices(tmp / "volumes", slices_dir, tmp / "segs", count=slices, resolution=resolution,
                            fit="pad", shares=tuple(n / sum(subjects) for n in subjects), seed=seed,
                            log=lambda msg: None)
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
    except OSError as e:                                          # a full disk, a folder taken away
        raise DataError(f"{out}: the demo data could not be written ({e.strerror or e}); free some space in "
                        f"{out.parent} or build it elsewhere (python dataset.py demo --outdir DIR)") from None
    finally:
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
