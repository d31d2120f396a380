"""DICOM series in (dicom.py, `dataset.py slices --volumes DIR`) and what the slicer expects (geometry.py): series
written here by pydicom from a known array must give the same voxels and slices as the same array saved as NIfTI,
whatever the acquisition plane, axis signs or file names; each broken series is one line naming it."""

import json
import shutil

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, MRImageStorage, generate_uid

import dataset
import dicom
import geometry
import volumes

SHAPE = (16, 14, 12)                                          # X (left -> right), Y (post -> ant), Z (inf -> sup)


def phantom() -> np.ndarray:
    """A box brain whose intensity changes along every axis (so a transposed or flipped read shows), with a
    bright left-anterior marker. Even integers, so that slope 2 / intercept -100 stores them exactly."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    brain = (x >= 2) & (x < 14) & (y >= 2) & (y < 12) & (z >= 1) & (z < 11)
    data = np.where(brain, 100 + 10 * z + 4 * x + 2 * y, 0)
    data[2:4, 9:12, 1:11] = 900
    return data.astype(np.float32)


AXIAL = np.diag([1.0, 1.0, 2.0, 1.0])                         # 1 x 1 x 2 mm voxels, RAS
FLIPPED = np.array([[-1.5, 0, 0, 30], [0, 1.0, 0, -8], [0, 0, -2.0, 40], [0, 0, 0, 1]])   # x and z stored reversed


def write_series(folder, data, affine, axis=2, slope=1.0, intercept=0.0, number=1, names=None, uid=None):
    """data [X, Y, Z] with RAS affine as a DICOM series of slices across `axis` (2 axial, 1 coronal, 0 sagittal),
    one file per slice, named names[k] (default IM0000, ...), InstanceNumber counting down (a trap for readers
    that order by it). Returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    order = [a for a in range(3) if a != axis] + [axis]
    data, affine = data.transpose(order), affine[:, order + [3]]              # the same volume, slice axis last
    lps = dicom.LPS_TO_RAS @ affine                                          # diag(-1, -1, 1) is its own inverse
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    uid = uid or generate_uid()
    files = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, "T1 test"
        ds.InstanceNumber = data.shape[2] - k
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in np.r_[lps[:3, 0] / dc, lps[:3, 1] / dr]]
        ds.PixelSpacing = [round(float(dr), 6), round(float(dc), 6)]
        stored = np.rint((data[:, :, k].T - intercept) / slope).astype(np.uint16)   # [rows, columns]
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        path = folder / (names[k] if names else f"IM{k:04d}")
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def save_nifti(folder, data, affine, name="sub01.nii.gz"):
    folder.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, affine), str(folder / name))
    return folder / name


def cut(volume_folder, out):
    return volumes.make_slices(volume_folder, out, count=4, resolution=16, shares=(1, 0, 0), log=lambda m: None)


def pngs(out) -> list:
    return [np.asarray(Image.open(p)) for p in sorted((out / "keras_png_slices_train").iterdir())]


def one_series(folder) -> dicom.Series:
    found = dicom.find_series(folder)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("axis, affine, slope, intercept", [(2, AXIAL, 1.0, 0.0),          # axial
                                                            (0, AXIAL, 2.0, -100.0),       # sagittal, rescaled
                                                            (1, FLIPPED, 1.0, 0.0),        # coronal, flipped
                                                            (2, FLIPPED, 2.0, -100.0)])    # axial, flipped
def test_a_series_and_its_nifti_give_the_same_voxels_and_slices(tmp_path, axis, affine, slope, intercept):
    data = phantom()
    nifti = save_nifti(tmp_path / "nifti", data, affine)
    write_series(tmp_path / "dicom" / "sub01", data, affine, axis, slope, intercept)
    series = one_series(tmp_path / "dicom")
    assert series.name == "sub01" and len(series.slices) == SHAPE[axis]
    assert np.array_equal(volumes.read_volume(series), volumes.read_volume(nifti))
    assert np.allclose(geometry.voxel_mm(series), geometry.voxel_mm(nifti))
    for slices in (pngs(cut(tmp_path / "nifti", tmp_path / "out_nifti")),
                   pngs(cut(tmp_path / "dicom", tmp_path / "out_dicom"))):
        assert len(slices) == 4
    for a, b in zip(pngs(tmp_path / "out_nifti"), pngs(tmp_path / "out_dicom")):
        assert np.array_equal(a, b)
    info = [json.loads((tmp_path / o / "dataset.json").read_text()) for o in ("out_nifti", "out_dicom")]
    assert info[0]["labels"] == info[1]["labels"] and info[1]["subjects"] == {"case_001": "sub01"}
    assert info[0]["slices"]["geometry"] == info[1]["slices"]["geometry"]


def test_the_affine_follows_the_headers(tmp_path):
    downward = np.array([[1.0, 0, 0, -7], [0, 1.0, 0, 5], [0, 0, -2.0, 40], [0, 0, 0, 1]])   # z stored top down
    write_series(tmp_path / "s", phantom(), downward, axis=2)
    data, affine = dicom.read_series(one_series(tmp_path / "s"))
    assert data.shape == SHAPE                                # [columns, rows, slices]
    # Slices are ordered along the normal row_dir x col_dir, here +z (row_dir -x, col_dir -y in LPS): the
    # stored z comes back reversed, voxel (i, j, k) of this read is voxel (i, j, Z-1-k) of the array, and the
    # affine says so.
    assert np.array_equal(data, phantom()[:, :, ::-1])
    expected = downward @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, SHAPE[2] - 1], [0, 0, 0, 1]])
    assert np.allclose(affine, expected, atol=1e-5)


def test_file_names_and_instance_numbers_do_not_order_slices(tmp_path):
    data = phantom()
    write_series(tmp_path / "plain" / "sub01", data, AXIAL)
    names = [f"{n:08x}.dcm" for n in np.random.default_rng(0).permutation(SHAPE[2]) * 7919]
    write_series(tmp_path / "shuffled" / "sub01", data, AXIAL, names=names)
    a, b = (volumes.read_volume(one_series(tmp_path / d)) for d in ("plain", "shuffled"))
    assert np.array_equal(a, b) and np.array_equal(a, data)


def test_a_folder_of_several_series_is_split(tmp_path):
    data = phantom()
    write_series(tmp_path / "scans" / "visit1", data, AXIAL, number=5)
    write_series(tmp_path / "scans" / "visit1", data[::-1].copy(), AXIAL, number=3,
                 names=[f"B{k:03d}" for k in range(SHAPE[2])])
    found = dicom.find_series(tmp_path / "scans")
    assert [s.name for s in found] == ["visit1_s3", "visit1_s5"]
    assert np.array_equal(volumes.read_volume(found[0]), data[::-1]) and np.array_equal(volumes.read_volume(found[1]),
                                                                                        data)
    out = volumes.make_slices(tmp_path / "scans", tmp_path / "out", count=4, resolution=16, shares=(1, 0, 0),
                              log=lambda m: None)
    assert json.loads((out / "dataset.json").read_text())["subjects"] == {"case_001": "visit1_s3",
                                                                          "case_002": "visit1_s5"}


def write_enhanced(path, data, affine, slope=1.0, intercept=0.0, reverse=False):
    """data [X, Y, Z] with RAS affine as one enhanced multi-frame MR file of axial frames: spacing, orientation
    and rescale in the SharedFunctionalGroupsSequence, each frame's position in its
    PerFrameFunctionalGroupsSequence item; frames stored top down where reverse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lps = dicom.LPS_TO_RAS @ affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    order = list(range(data.shape[2]))[::-1] if reverse else list(range(data.shape[2]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedMRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), 1, "T1 enhanced"
    measures, orientation, transform, shared = Dataset(), Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [round(float(dr), 6), round(float(dc), 6)]
    orientation.ImageOrientationPatient = [round(float(v), 6) for v in np.r_[lps[:3, 0] / dc, lps[:3, 1] / dr]]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "US"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [round(float(v), 6) for v in (lps @ [0, 0, k, 1])[:3]]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    stored = np.stack([np.rint((data[:, :, k].T - intercept) / slope) for k in order]).astype(np.uint16)
    ds.NumberOfFrames, ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("affine, slope, intercept, reverse", [(AXIAL, 1.0, 0.0, False),
                                                               (FLIPPED, 2.0, -100.0, True)])
def test_an_enhanced_multi_frame_file_gives_the_same_voxels_as_its_nifti(tmp_path, affine, slope, intercept,
                                                                         reverse):
    data = phantom()
    nifti = save_nifti(tmp_path / "nifti", data, affine)
    write_enhanced(tmp_path / "dicom" / "sub01" / "enhanced.dcm", data, affine, slope, intercept, reverse)
    series = one_series(tmp_path / "dicom")
    assert len(series.slices) == SHAPE[2] and series.slices[0].label == "enhanced.dcm frame 1"
    assert np.array_equal(volumes.read_volume(series), volumes.read_volume(nifti))
    assert np.allclose(geometry.voxel_mm(series), geometry.voxel_mm(nifti))
    for a, b in zip(pngs(cut(tmp_path / "nifti", tmp_path / "out_nifti")),
                    pngs(cut(tmp_path / "dicom", tmp_path / "out_dicom"))):
        assert np.array_equal(a, b)


def test_two_stacks_in_one_multi_frame_file_are_named_by_frame(tmp_path, capsys):
    path = write_enhanced(tmp_path / "vols" / "sub01" / "enhanced.dcm", phantom(), AXIAL)
    _edit(path, lambda ds: setattr(ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0],
                                   "ImagePositionPatient", [0, 0, 0]))
    code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--outdir", str(tmp_path / "out"),
                         "--slices", "4", "--resolution", "16"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "duplicated slice position 0.00 mm (enhanced.dcm frame 1 and enhanced.dcm frame 2)" in err, err
    assert not (tmp_path / "out").exists()


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _resize(ds):
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()


def _compress(ds):
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])


BROKEN = {
    "missing": (lambda files: files[5].unlink(), "missing slice position(s): a gap of 4.00 mm after 8.00 mm where "
                                                 "the other slices are 2.00 mm apart"),
    "duplicated": (lambda files: shutil.copy(files[3], files[3].with_name("copy")),
                   "duplicated slice position 6.00 mm"),
    "uneven": (lambda files: _edit(files[6], lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 12.4])),
               "uneven slice spacing (1.600 to 2.400 mm)"),
    "orientations": (lambda files: _edit(files[2], lambda ds: setattr(ds, "ImageOrientationPatient",
                                                                       [0, 1, 0, 0, 0, -1])),
                     "mixed slice orientations (2 different ImageOrientationPatient)"),
    "sizes": (lambda files: _edit(files[4], _resize), "mixed slice sizes (8x8 at 1x1 mm and 14x16 at 1x1 mm)"),
    "compressed": (lambda files: [_edit(f, _compress) for f in files],
                   "compressed transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) that the "
                   "installed decoders cannot read: pip install one of "),
    "multiframe": (lambda files: _edit(files[0], lambda ds: setattr(ds, "NumberOfFrames", 2)),
                   "IM0000 is a multi-frame DICOM file without a place for each frame"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_series_is_one_line_naming_it(tmp_path, capsys, case):
    if case == "compressed" and pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    damage, message = BROKEN[case]
    damage(write_series(tmp_path / "vols" / "sub01", phantom(), AXIAL))
    code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--outdir", str(tmp_path / "out"),
                         "--slices", "4", "--resolution", "16"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"{tmp_path / 'vols' / 'sub01'} (series 1, T1 test, " in err and message in err, err
    assert "or add --skip_bad" in err and not (tmp_path / "out").exists()


def test_skip_bad_goes_on_without_a_broken_series(tmp_path, capsys):
    write_series(tmp_path / "vols" / "good", phantom(), AXIAL)
    files = write_series(tmp_path / "vols" / "bad", phantom(), AXIAL)
    files[5].unlink()
    code = dataset.main(["slices", "--volumes", str(tmp_path / "vols"), "--outdir", str(tmp_path / "out"),
                         "--slices", "4", "--resolution", "16", "--shares", "1,0,0", "--skip_bad"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: skipped: " in err and f"{tmp_path / 'vols' / 'bad'} (series 1" in err
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["subjects"] == {"case_001": "good"}


def test_a_folder_without_dicom_or_with_unreadable_dicom(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no scans here")
    code = dataset.main(["slices", "--volumes", str(tmp_path / "notes"), "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "holds no .nii, .nii.gz or .hdr volumes and no DICOM series" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")   # cut short
    code = dataset.main(["slices", "--volumes", str(tmp_path / "broken"), "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "IM0001.dcm cannot be read as DICOM" in err, err


# ----------------------------------------------------------------------------------------------
# What the slicer expects: brains, not heads

def test_head_signs(tmp_path, capsys):
    brain = phantom() > 0
    assert geometry.head_signs(brain, (1, 1, 2)) == []
    noisy = brain | (np.random.default_rng(0).random(SHAPE) > 0.2)       # a raw scan's background noise
    assert "of its outer faces are above 0" in geometry.head_signs(noisy, (1, 1, 2))[0]
    neck = brain.copy()
    neck[4:12, 3:11, :] = True                                         # tissue down through the lowest plane
    assert "as a neck does" in geometry.head_signs(neck, (1, 1, 2))[0]
    assert "span 240 mm from bottom to top" in geometry.head_signs(brain, (1, 1, 24))[0]
    # The slicer warns once per volume that looks like a head, and cuts it anyway.
    head = np.where(neck, phantom() + 50, 0).astype(np.float32)
    save_nifti(tmp_path / "vols", phantom(), AXIAL, "brain.nii.gz")
    save_nifti(tmp_path / "vols", head, AXIAL, "head1.nii.gz")
    save_nifti(tmp_path / "vols", head, AXIAL, "head2.nii.gz")
    volumes.make_slices(tmp_path / "vols", tmp_path / "out", count=4, resolution=16, shares=(1, 0, 0),
                        log=lambda m: None)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "looks like a whole head" in line]
    assert len(warnings) == 2 and "head1.nii.gz" in warnings[0] and "head2.nii.gz" in warnings[1]
    assert "brain-extract it first" in warnings[0]


def test_dataset_json_records_the_geometry(tmp_path):
    save_nifti(tmp_path / "vols", phantom(), np.diag([1.0, 1.5, 2.0, 1.0]))
    out = cut(tmp_path / "vols", tmp_path / "out")
    recorded = json.loads((out / "dataset.json").read_text())["slices"]["geometry"]
    # Brain z 1..10 at 2 mm: 18 mm; the square is the larger of 16 x 1 and 14 x 1.5 mm (padded).
    assert recorded["voxel_mm"] == [1.0, 1.5, 2.0] and recorded["axial_extent_mm"] == 18.0
    assert recorded["side_mm"] == 21.0 and recorded["subjects"] == 1
