"""DICOM series and SEG reading: synthetic series (always run) and the real DICOM sets in ../shared/data."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.errors import ImageReadError
from medseg.io.dicom import list_dicom_series, read_dicom_seg, read_dicom_seg_segments, read_dicom_series
from medseg.io.image import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MR_T1POST_UID = "1.3.6.1.4.1.14519.5.2.1.4429.7055.250698293053013179878447218670"


def shared_data(name: str) -> Path:
    """A real DICOM set under ../shared/data; the test is skipped when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(
            f"real data set {name} not found at {path} (../shared/data is only on developer/CI machines)"
        )
    return path


def sitk_series(folder: Path) -> sitk.Image:
    """The same folder read by SimpleITK/GDCM, an independent reader to compare against."""
    reader = sitk.ImageSeriesReader()
    series_id = reader.GetGDCMSeriesIDs(str(folder))[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


def assert_same_as_sitk(image: Image, reference: sitk.Image, check_array: bool = True) -> None:
    assert image.shape == sitk.GetArrayViewFromImage(reference).shape
    np.testing.assert_allclose(image.spacing, reference.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.direction, reference.GetDirection(), atol=1e-3)
    if check_array:
        np.testing.assert_array_equal(image.array[0], sitk.GetArrayFromImage(reference))


def assert_orthonormal(image: Image) -> None:
    matrix = image.direction_matrix
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(3), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Synthetic series (no real data needed)
# ----------------------------------------------------------------------------------------------------------

OBLIQUE_IOP = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), -np.sin(0.3))


def write_slice(
    path: Path,
    pixels: np.ndarray,
    position: tuple[float, float, float],
    instance: int,
    series_uid: str,
    orientation: tuple[float, ...] = OBLIQUE_IOP,
    slope: float | None = None,
    intercept: float | None = None,
) -> None:
    """One single-frame MR slice with the geometry attributes a series reader needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesDescription = "synthetic"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = ["0.5", "0.75"]  # row spacing (y), column spacing (x)
    ds.SliceThickness = "2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if slope is not None:
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept or 0)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path, n: int = 4, gap: float = 2.0, series_uid: str | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` slices of 6x5 pixels along the oblique normal, written in reverse order under shuffled names.

    Returns the stored volume (Z, Y, X) in ascending slice order and the position of the first slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    iop = np.asarray(OBLIQUE_IOP)
    normal = np.cross(iop[:3], iop[3:])
    first = np.array([-10.0, 20.0, 30.0])
    volume = np.arange(n * 6 * 5, dtype=np.int16).reshape(n, 6, 5)
    for k in reversed(range(n)):
        position = first + k * gap * normal
        write_slice(
            folder / f"img{(7 * k) % n:03d}_{k}.dcm", volume[k], tuple(position), k + 1, series_uid, **kwargs
        )
    return volume, first


def test_synthetic_oblique_series_geometry_and_sorting(tmp_path: Path) -> None:
    volume, first = write_series(tmp_path / "s", n=5, gap=2.5)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")  # skipped silently
    image = read_dicom_series(tmp_path / "s")
    assert image.array.shape == (1, 5, 6, 5)
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array[0], volume)
    np.testing.assert_allclose(image.spacing, (0.75, 0.5, 2.5), atol=1e-5)
    np.testing.assert_allclose(image.origin, first, atol=1e-5)
    iop = np.asarray(OBLIQUE_IOP)
    expected = np.stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])], axis=1)
    np.testing.assert_allclose(image.direction_matrix, expected, atol=1e-6)
    assert_orthonormal(image)
    assert image.meta["format"] == "dicom"
    assert image.meta["modality"] == "MR"
    assert len(image.meta["sop_instance_uids"]) == 5
    assert [Path(f).name.split("_")[1] for f in image.meta["source_files"]] == [f"{k}.dcm" for k in range(5)]
    [info] = list_dicom_series(tmp_path / "s")
    assert (info.num_files, info.num_slices, info.rows, info.columns) == (5, 5, 6, 5)


def test_synthetic_rescale(tmp_path: Path) -> None:
    volume, _ = write_series(tmp_path / "int", slope=1, intercept=-1024)
    image = read_dicom_series(tmp_path / "int")
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array[0], volume.astype(np.int32) - 1024)

    volume, _ = write_series(tmp_path / "float", slope=0.5, intercept=1.25)
    image = read_dicom_series(tmp_path / "float")
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array[0], volume * 0.5 + 1.25)


def test_synthetic_single_slice_uses_slice_thickness(tmp_path: Path) -> None:
    write_series(tmp_path / "one", n=1)
    image = read_dicom_series(tmp_path / "one")
    assert image.shape == (1, 6, 5)
    assert image.spacing[2] == pytest.approx(2.0)


def test_synthetic_inconsistent_series_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gap"
    write_series(folder, n=5)
    next(folder.glob("*_2.dcm")).unlink()  # a missing slice in the middle
    with pytest.raises(ImageReadError, match="non-uniform slice spacing"):
        read_dicom_series(folder)

    folder = tmp_path / "sizes"
    uid = generate_uid()
    write_series(folder, n=3, series_uid=uid)
    write_slice(folder / "odd.dcm", np.zeros((4, 4)), (0.0, 0.0, 50.0), 9, uid)
    with pytest.raises(ImageReadError, match="inconsistent slices, Rows") as caught:
        read_dicom_series(folder)
    assert uid in str(caught.value)


def test_synthetic_truncated_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "trunc"
    write_series(folder, n=3)
    victim = next(folder.glob("*_1.dcm"))
    victim.write_bytes(victim.read_bytes()[:-40])  # pixel data cut short
    with pytest.raises(ImageReadError) as caught:
        read_dicom_series(folder)
    assert victim.name in str(caught.value)


def test_synthetic_two_series_need_a_uid(tmp_path: Path) -> None:
    write_series(tmp_path / "both" / "a", n=3, series_uid="1.2.3.100")
    write_series(tmp_path / "both" / "b", n=2, series_uid="1.2.3.200")
    with pytest.raises(ImageReadError, match="series_uid") as caught:
        read_dicom_series(tmp_path / "both")
    assert "1.2.3.100" in str(caught.value) and "1.2.3.200" in str(caught.value)
    assert read_dicom_series(tmp_path / "both", series_uid="1.2.3.200").shape == (2, 6, 5)
    with pytest.raises(ImageReadError, match="has no series 9.9.9"):
        read_dicom_series(tmp_path / "both", series_uid="9.9.9")


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_dicom_series(tmp_path)
    assert list_dicom_series(tmp_path) == []


def test_folder_of_text_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 10)
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_dicom_series(tmp_path)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_dicom_series(tmp_path / "nope")


def test_synthetic_zip_matches_folder(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3)
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((tmp_path / "s").iterdir()):
            zf.write(file, f"nested/{file.name}")
    from_folder = read_dicom_series(tmp_path / "s")
    from_zip = read_dicom_series(archive)
    np.testing.assert_array_equal(from_zip.array, from_folder.array)
    assert from_zip.same_geometry(from_folder)


@pytest.mark.parametrize("bad_name", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_zip_with_unsafe_member_is_refused(tmp_path: Path, bad_name: str) -> None:
    write_series(tmp_path / "s", n=2)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((tmp_path / "s").iterdir()):
            zf.write(file, file.name)
        zf.writestr(bad_name, b"whatever")
    with pytest.raises(ImageReadError, match="unsafe path"):
        read_dicom_series(archive)
    with pytest.raises(ImageReadError, match="unsafe path"):
        list_dicom_series(archive)
    assert not (tmp_path / "evil.dcm").exists()


# ----------------------------------------------------------------------------------------------------------
# Real data: CT series, JPEG 2000 lossless (TotalSegmentator example)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def totalseg_ct() -> Image:
    return read_dicom_series(shared_data("dicom_ct_series_totalseg") / "dicom")


def test_totalseg_ct_matches_nifti_grid(totalseg_ct: Image) -> None:
    nifti = sitk.ReadImage(
        str(shared_data("dicom_ct_series_totalseg") / "totalseg_prediction_fast_ml.nii.gz")
    )
    assert totalseg_ct.shape == sitk.GetArrayViewFromImage(nifti).shape == (20, 512, 512)
    # The NIfTI (written by TotalSegmentator) stores the same voxels with the y axis flipped (direction
    # diag(1, -1, 1)); reoriented to the DICOM's LPS axes its grid must coincide with the series.
    assert_same_as_sitk(totalseg_ct, sitk.DICOMOrient(nifti, "LPS"), check_array=False)
    np.testing.assert_allclose(totalseg_ct.spacing, nifti.GetSpacing(), atol=1e-3)


def test_totalseg_ct_pixels_decoded_as_hounsfield(totalseg_ct: Image) -> None:
    assert totalseg_ct.array.shape == (1, 20, 512, 512)
    assert totalseg_ct.array.dtype == np.int16
    assert totalseg_ct.array.min() <= -1000
    assert totalseg_ct.array.max() > 500
    assert totalseg_ct.meta["format"] == "dicom"
    assert totalseg_ct.meta["modality"] == "CT"
    assert len(totalseg_ct.meta["source_files"]) == 20


def test_totalseg_ct_matches_simpleitk_reader(totalseg_ct: Image) -> None:
    assert_same_as_sitk(totalseg_ct, sitk_series(shared_data("dicom_ct_series_totalseg") / "dicom"))


# ----------------------------------------------------------------------------------------------------------
# Real data: 3-slice CT with DICOM SEG (dcmqi)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def liver_dir() -> Path:
    return shared_data("dicom_ct_liver_seg")


@pytest.fixture(scope="module")
def liver_ct(liver_dir: Path) -> Image:
    return read_dicom_series(liver_dir / "ct")


def read_nrrd(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def test_liver_ct_series(liver_ct: Image, liver_dir: Path) -> None:
    assert liver_ct.array.shape == (1, 3, 512, 512)
    assert [Path(f).name for f in liver_ct.meta["source_files"]] == [
        "03.dcm",
        "02.dcm",
        "01.dcm",
    ]  # z ascending
    assert_same_as_sitk(liver_ct, sitk_series(liver_dir / "ct"))


def test_liver_seg_on_source_matches_nrrd(liver_ct: Image, liver_dir: Path) -> None:
    nrrd = read_nrrd(liver_dir / "nrrd" / "liver_seg.nrrd")
    # The NRRD lies on the CT grid (same origin, direction, in-plane spacing), so voxels must match exactly.
    np.testing.assert_allclose(nrrd.GetOrigin(), liver_ct.origin, atol=1e-3)
    np.testing.assert_allclose(nrrd.GetDirection(), liver_ct.direction, atol=1e-6)
    labels = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=liver_ct)
    assert labels.array.shape == (1, 3, 512, 512)
    assert labels.array.dtype == np.uint8
    assert labels.same_geometry(liver_ct)
    np.testing.assert_array_equal(labels.array[0], sitk.GetArrayFromImage(nrrd))
    assert labels.meta["format"] == "dicom-seg"
    assert labels.meta["segment_labels"] == {1: "Liver"}


def test_liver_seg_without_source_uses_its_own_grid(liver_ct: Image, liver_dir: Path) -> None:
    with_source = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=liver_ct)
    own = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm")
    assert own.geometry_difference(liver_ct) is None
    np.testing.assert_array_equal(own.array, with_source.array)


def test_liver_seg_source_given_as_folder(liver_ct: Image, liver_dir: Path) -> None:
    # The top folder holds the CT and the two SEG files: the referenced image series is picked.
    labels = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=liver_dir)
    assert labels.same_geometry(liver_ct)
    assert labels.meta["source_series_instance_uid"] == liver_ct.meta["series_instance_uid"]


def test_liver_seg_falls_back_to_plane_positions(liver_ct: Image, liver_dir: Path) -> None:
    # A source without SOP Instance UIDs (e.g. converted from NIfTI): frames are placed by geometry instead.
    bare = Image(liver_ct.array, liver_ct.spacing, liver_ct.origin, liver_ct.direction, meta={})
    by_position = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=bare)
    by_uid = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=liver_ct)
    np.testing.assert_array_equal(by_position.array, by_uid.array)


def test_seg_on_an_unrelated_series_is_refused(liver_dir: Path) -> None:
    unrelated = read_dicom_series(shared_data("dicom_mr_brain") / "hippocrop_study1")
    with pytest.raises(ImageReadError, match="do not lie on the source grid"):
        read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=unrelated)


def test_partial_overlaps_segments_and_overlap_rule(liver_ct: Image, liver_dir: Path) -> None:
    seg_path = liver_dir / "seg" / "partial_overlaps_seg.dcm"
    stack = read_dicom_seg_segments(seg_path, source=liver_ct)
    assert stack.array.shape == (5, 3, 512, 512)
    assert set(np.unique(stack.array)) <= {0, 1}
    assert stack.meta["segment_names"] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert stack.meta["segment_labels"] == dict(enumerate(stack.meta["segment_names"], start=1))
    assert stack.same_geometry(liver_ct)
    assert (stack.array.sum(axis=0) > 1).any(), "this SEG is known to have overlapping segments"

    labels = read_dicom_seg(seg_path, source=liver_ct)
    numbers = np.asarray(stack.meta["segment_numbers"])[:, None, None, None]
    expected = np.max(stack.array * numbers, axis=0)  # highest segment number wins
    np.testing.assert_array_equal(labels.array[0], expected)


def test_listing_shows_seg_objects(liver_dir: Path) -> None:
    found = list_dicom_series(liver_dir)
    assert [info.modality for info in found] == ["CT", "SEG", "SEG"]
    assert found[0].num_files == 3


def test_reading_a_seg_as_series_is_refused(liver_dir: Path) -> None:
    with pytest.raises(ImageReadError, match="only DICOM SEG"):
        read_dicom_series(liver_dir / "seg")
    with pytest.raises(ImageReadError, match="not a DICOM SEG"):
        read_dicom_seg(liver_dir / "ct" / "01.dcm")


# ----------------------------------------------------------------------------------------------------------
# Real data: brain MR, several series in one folder
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_dir() -> Path:
    return shared_data("dicom_mr_brain")


def test_mr_folder_with_four_series_needs_a_uid(mr_dir: Path) -> None:
    found = list_dicom_series(mr_dir)
    assert len(found) == 4
    with pytest.raises(ImageReadError, match="series_uid") as caught:
        read_dicom_series(mr_dir)
    message = str(caught.value)
    assert "4 image series" in message
    for info in found:
        assert info.series_instance_uid in message


def test_mr_oblique_series_by_uid(mr_dir: Path) -> None:
    image = read_dicom_series(mr_dir, series_uid=MR_T1POST_UID)
    assert image.array.shape == (1, 22, 320, 280)  # Rows 320, Columns 280
    assert image.meta["series_instance_uid"] == MR_T1POST_UID
    assert_orthonormal(image)
    assert abs(image.direction_matrix[2, 1]) > 0.1, "the T1post series is oblique"
    np.testing.assert_allclose(image.spacing, (0.6875, 0.6875, 6.5), atol=1e-4)
    assert_same_as_sitk(image, sitk_series(mr_dir / "PGBM-003_T1post"))


def test_mr_hippocrop_zip_matches_folder(mr_dir: Path, tmp_path: Path) -> None:
    folder = mr_dir / "hippocrop_study1"
    archive = tmp_path / "hippocrop.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"study1/{file.name}")
    from_folder = read_dicom_series(folder)
    from_zip = read_dicom_series(archive)
    assert from_folder.array.shape == (1, 32, 51, 35)
    np.testing.assert_array_equal(from_zip.array, from_folder.array)
    assert from_zip.geometry_difference(from_folder) is None
    assert from_zip.meta["sop_instance_uids"] == from_folder.meta["sop_instance_uids"]
    [info] = list_dicom_series(archive)
    assert info.num_files == 32


def test_mr_hippocrop_zip_with_evil_member_is_refused(mr_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    source = sorted((mr_dir / "hippocrop_study1").iterdir())[0]
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(source, source.name)
        zf.write(source, "../evil.dcm")
    with pytest.raises(ImageReadError, match="unsafe path"):
        read_dicom_series(archive)


@pytest.mark.parametrize(
    "keep", [600, 1000, 2000, -100], ids=["header", "geometry", "before-pixels", "pixels"]
)
def test_mr_truncated_real_file_is_named(mr_dir: Path, tmp_path: Path, keep: int) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(mr_dir / "hippocrop_study1", folder)
    victim = sorted(folder.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(ImageReadError) as caught:
        read_dicom_series(folder)
    assert victim.name in str(caught.value)
