"""DICOM series in: a folder of a scanner's or an archive's DICOM files (ADNI hands them out so) -> series
-> (voxel array, RAS affine), read with pydicom, for the volume slicer (`python dataset.py slices --volumes
DIR`, volumes.py).

Owns: finding DICOM files (the 'DICM' marker after the 128-byte preamble, or a .dcm / .ima name), grouping
one folder's files by SeriesInstanceUID, ordering a series' slices by their position along the slice normal
(never by file name or InstanceNumber), the affine from ImageOrientationPatient / ImagePositionPatient /
PixelSpacing turned from DICOM's LPS patient axes into NIfTI's RAS, RescaleSlope / RescaleIntercept, the
frames of enhanced multi-frame files (each frame a slice, placed by its functional groups), and one-line
errors that name the series. Does not own reorienting to RAS+ axes, cutting slices or
normalizing (volumes.py). Imports nothing from the project but oasis.py (DataError).

Voxel (i, j, k) = (column, row, slice in position order) lies at, in LPS millimetres,
    ImagePositionPatient[first] + i * PixelSpacing[1] * row_dir + j * PixelSpacing[0] * col_dir + k * step
where row_dir and col_dir are the two halves of ImageOrientationPatient (the directions in which the column
and the row index grow) and step is the mean distance between neighbouring slice positions (DICOM PS3.3
C.7.6.2.1.1). RAS = diag(-1, -1, 1) LPS.
"""

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oasis import DataError

DICOM_EXTS = (".dcm", ".ima", ".dicom")         # names read as DICOM even without the 'DICM' marker
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SAME_POSITION_MM = 0.01                         # slices closer than this along the normal are one position
EVEN_SPACING = 0.01                             # a neighbour distance more than 1 % off the median is uneven
GAP_FACTOR = 1.5                                # a distance this many times the median means missing slices
SAME_ORIENTATION = 1e-4                         # ImageOrientationPatient values closer than this are equal
CONVERTER = "convert the series to NIfTI with dcm2niix"


class DicomError(DataError):
    """A DICOM series that cannot be used, as one line that names the series (or the folder)."""


@dataclass
class Slice:
    """What one file's header says (the pixels are read later, by read_series)."""
    path: Path
    position: np.ndarray = None         # ImagePositionPatient, LPS mm [3]
    orientation: np.ndarray = None      # ImageOrientationPatient: row_dir, col_dir [6]
    spacing: tuple = None               # PixelSpacing: (between rows, between columns) mm
    size: tuple = None                  # (Rows, Columns)
    frames: int = 1                     # NumberOfFrames of the file (enhanced multi-frame files hold many)
    syntax: str = ""                    # TransferSyntaxUID
    frame: int = None                   # this slice's frame of a multi-frame file (None: a one-slice file)
    rescale: tuple = None               # a frame's (RescaleSlope, RescaleIntercept) from its functional groups

    @property
    def label(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


@dataclass(eq=False)                                    # compared and hashed by identity: a dict key
class Series:
    """One series of one folder: a volume for the slicer. `name` names the subject in the slicer's output."""
    folder: Path
    uid: str                            # SeriesInstanceUID (None for a folder whose DICOM files are unreadable)
    name: str
    number: str = ""                    # SeriesNumber
    description: str = ""               # SeriesDescription
    slices: list = field(default_factory=list)
    bad: list = field(default_factory=list)   # (file, reason): files that look like DICOM but cannot be read

    def __str__(self) -> str:
        what = ", ".join(x for x in (f"series {self.number}" if self.number else "", self.description,
                                     f"{len(self.slices)} file(s)") if x)
        return f"{self.folder} ({what})"


def looks_like_dicom(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_EXTS) or path.name == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:120] if text else type(e).__name__


def _vector(ds, key: str, n: int):
    """ds[key] as float64 [n], or None where it is missing or of another length."""
    value = ds.get(key) if ds is not None else None
    return np.array([float(v) for v in value], dtype=np.float64) if value is not None and len(value) == n else None


def _group(groups, sequence: str):
    """The first item of a functional group macro (PlanePositionSequence, ...) in the first of groups that has
    it (a frame's own groups, then the shared ones), or None."""
    for g in groups:
        if g is not None and g.get(sequence):
            return g.get(sequence)[0]
    return None


def _frames(ds, path: Path, template: "Slice") -> list:
    """An enhanced multi-frame file's frames as Slices (DICOM PS3.3 C.7.6.16): each placed by the Plane
    Position, Plane Orientation and Pixel Measures of its PerFrameFunctionalGroupsSequence item, else of the
    SharedFunctionalGroupsSequence, rescaled by their Pixel Value Transformation. A file without per-frame
    groups stays one Slice with frames > 1, which geometry() refuses."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != template.frames:
        return [template]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    found = []
    for k, own in enumerate(per_frame):
        groups = (own, shared)
        measures = _group(groups, "PixelMeasuresSequence")
        spacing = _vector(measures, "PixelSpacing", 2)
        transform = _group(groups, "PixelValueTransformationSequence")
        found.append(Slice(path, _vector(_group(groups, "PlanePositionSequence"), "ImagePositionPatient", 3),
                           _vector(_group(groups, "PlaneOrientationSequence"), "ImageOrientationPatient", 6),
                           None if spacing is None else (float(spacing[0]), float(spacing[1])), template.size,
                           template.frames, template.syntax, k,
                           None if transform is None else (float(transform.get("RescaleSlope", 1) or 1),
                                                           float(transform.get("RescaleIntercept", 0) or 0))))
    return found


def _header(path: Path):
    """(SeriesInstanceUID, SeriesNumber, SeriesDescription, [Slice]) of an image file (one Slice per frame of an
    enhanced multi-frame file); None for a DICOM file that holds no image (a DICOMDIR, a report). Raises what
    pydicom raises for an unreadable file."""
    import pydicom
    with warnings.catch_warnings():                         # pydicom warns about every odd element it meets
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    meta = getattr(ds, "file_meta", None)
    if not ds.get("SOPClassUID") and not (meta is not None and meta.get("MediaStorageSOPClassUID")):
        raise ValueError("no SOP class: not a DICOM object, or a file cut short")
    if "Rows" not in ds or "SeriesInstanceUID" not in ds:
        return None
    spacing = _vector(ds, "PixelSpacing", 2)
    item = Slice(path, _vector(ds, "ImagePositionPatient", 3), _vector(ds, "ImageOrientationPatient", 6),
                 None if spacing is None else (float(spacing[0]), float(spacing[1])),
                 (int(ds.Rows), int(ds.get("Columns", 0) or 0)), int(ds.get("NumberOfFrames", 1) or 1),
                 str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    return (str(ds.SeriesInstanceUID), str(ds.get("SeriesNumber", "") or ""),
            str(ds.get("SeriesDescription", "") or "").strip(), _frames(ds, path, item) if item.frames > 1 else [item])


def folder_series(folder: Path, name: str) -> list:
    """The series of the DICOM files directly in folder, ordered by SeriesNumber then UID. A folder with one
    series names it `name`; with several, each is `name` + _s<SeriesNumber> (or a UID tail)."""
    groups, bad = {}, []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not looks_like_dicom(path):
            continue
        try:
            header = _header(path)
        except Exception as e:                              # pydicom raises many types for bad files
            bad.append((path, _reason(e)))
            continue
        if header is None:
            continue
        uid, number, description, items = header
        series = groups.setdefault(uid, Series(folder, uid, name, number, description))
        series.slices += items
    found = sorted(groups.values(), key=lambda s: (int(s.number) if s.number.isdigit() else 1 << 30, s.uid))
    if not found and bad:
        found = [Series(folder, None, name)]
    if found:
        found[0].bad = bad                                  # unreadable files: an error for the first series
    if len(found) > 1:
        numbers = [s.number for s in found]
        for s in found:
            s.name = f"{name}_s{s.number}" if s.number and numbers.count(s.number) == 1 else f"{name}_{s.uid[-8:]}"
    return found


def find_series(root) -> list:
    """Every DICOM series below root (recursively, hidden folders skipped), ordered by folder. A series is
    named by its folder's path below root with '/' as '_' (the root's own name for root itself)."""
    root = Path(root)
    found = []
    for folder, dirs, _ in os.walk(root):                 # top-down: the pruning below takes effect
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        found += folder_series(Path(folder), root.name if rel == Path(".") else "_".join(rel.parts))
    return found


def check_decoders(series: Series) -> None:
    """One line when a file's compressed transfer syntax cannot be decoded by the installed plugins."""
    import pydicom.uid
    from pydicom.pixels import get_decoder
    for syntax in sorted({s.syntax for s in series.slices if s.syntax}):
        uid = pydicom.uid.UID(syntax)
        if not uid.is_compressed:
            continue
        what = f"{uid.name} ({syntax})" if uid.name != syntax else syntax
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DicomError(f"{series}: compressed transfer syntax {what} has no pydicom decoder; "
                             f"{CONVERTER}") from None
        if not decoder.is_available:
            options = " | ".join(d.split(" - requires ")[-1] for d in decoder.missing_dependencies)
            raise DicomError(f"{series}: compressed transfer syntax {what} that the installed decoders cannot "
                             f"read: pip install one of {options}, or {CONVERTER}")


def geometry(series: Series):
    """(the slices in position order, the RAS affine) from the headers alone, checking that the series is
    one even stack of parallel slices of one size. Every problem is a DicomError naming the series."""
    if series.bad:
        path, reason = series.bad[0]
        more = f" and {len(series.bad) - 1} more" if len(series.bad) > 1 else ""
        raise DicomError(f"{series}: {path.name}{more} cannot be read as DICOM ({reason})")
    slices = series.slices
    whole = [s.path.name for s in slices if s.frames > 1 and s.frame is None]
    if whole:
        raise DicomError(f"{series}: {whole[0]} is a multi-frame DICOM file without a place for each frame (no "
                         f"PerFrameFunctionalGroupsSequence of NumberOfFrames items); {CONVERTER}")
    for key, tag in (("position", "ImagePositionPatient"), ("orientation", "ImageOrientationPatient"),
                     ("spacing", "PixelSpacing")):
        lacking = [s.label for s in slices if getattr(s, key) is None]
        if lacking:
            raise DicomError(f"{series}: {lacking[0]} has no {tag}, so it has no place in a volume "
                             f"(a derived image or a secondary capture?)")
    orientation = slices[0].orientation
    if any(np.abs(s.orientation - orientation).max() > SAME_ORIENTATION for s in slices):
        count = len({tuple(np.round(s.orientation, 4)) for s in slices})
        raise DicomError(f"{series}: mixed slice orientations ({count} different ImageOrientationPatient); a "
                         f"volume is one stack of parallel slices (a localizer series?)")
    sizes = sorted({(s.size, s.spacing) for s in slices})
    if len(sizes) > 1:
        (a, sa), (b, sb) = sizes[:2]
        raise DicomError(f"{series}: mixed slice sizes ({a[0]}x{a[1]} at {sa[0]:g}x{sa[1]:g} mm and {b[0]}x{b[1]} "
                         f"at {sb[0]:g}x{sb[1]:g} mm); a volume's slices share one size")
    if len(slices) < 2:
        raise DicomError(f"{series}: a single slice, not a volume")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    distance = np.array([s.position @ normal for s in slices])
    order = np.argsort(distance, kind="stable")
    slices, distance = [slices[i] for i in order], distance[order]
    steps = np.diff(distance)
    if steps.min() < SAME_POSITION_MM:
        k = int(np.argmin(steps))
        raise DicomError(f"{series}: duplicated slice position {distance[k]:.2f} mm ({slices[k].label} and "
                         f"{slices[k + 1].label}); several echoes, phases or repeats must be split into "
                         f"their own folders first" + (f" ({CONVERTER})" if slices[k].frame is not None else ""))
    median = float(np.median(steps))
    if steps.max() > GAP_FACTOR * median:
        k = int(np.argmax(steps))
        raise DicomError(f"{series}: missing slice position(s): a gap of {steps[k]:.2f} mm after "
                         f"{distance[k]:.2f} mm where the other slices are {median:.2f} mm apart")
    if np.abs(steps - median).max() > EVEN_SPACING * median:
        raise DicomError(f"{series}: uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); resample "
                         f"it to even spacing first")
    dr, dc = slices[0].spacing
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step, slices[0].position
    return slices, LPS_TO_RAS @ lps


def read_series(series: Series):
    """(float32 voxels [columns, rows, slices] in position order, RAS affine [4, 4]) of a series, with
    RescaleSlope / RescaleIntercept applied per file. Every problem is a DicomError naming the series."""
    import pydicom
    slices, affine = geometry(series)
    check_decoders(series)
    planes, last = [], (None, None, None)                   # (path, dataset, pixels) of the file read last
    for s in slices:
        if s.path != last[0]:                               # a multi-frame file is decoded once for its frames
            try:
                ds = pydicom.dcmread(s.path, force=True)
                last = (s.path, ds, ds.pixel_array)
            except Exception as e:                          # pydicom and its plugins raise many types
                raise DicomError(f"{series}: {s.path.name}: the pixel data cannot be decoded ({_reason(e)})") from None
        _, ds, pixels = last
        wanted = s.size if s.frame is None else (s.frames, *s.size)
        if pixels.shape != wanted:
            raise DicomError(f"{series}: {s.path.name}: pixel data of shape {list(pixels.shape)}, not "
                             + (f"one grey {s.size[0]}x{s.size[1]} slice (a colour or multi-frame image?)"
                                if s.frame is None else f"{s.frames} grey {s.size[0]}x{s.size[1]} frames"))
        plane = pixels if s.frame is None else pixels[s.frame]
        slope, intercept = s.rescale or (float(ds.get("RescaleSlope", 1) or 1),
                                         float(ds.get("RescaleIntercept", 0) or 0))
        planes.append(plane.T.astype(np.float64) * slope + intercept)    # [rows, columns] -> [i, j]
    return np.stack(planes, axis=-1).astype(np.float32), affine           # [I, J, K]
