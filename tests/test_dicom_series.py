"""DICOM image series (``medseg.io.dicom_series``, ``medseg.io.dicom_volume``): grouping, choosing one, geometry,
rescale; synthetic series (always run) and the real DICOM sets in ../shared/data, checked against SimpleITK/GDCM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from builders import (
    MR_T1POST_UID,
    OBLIQUE_IOP,
    assert_orthonormal,
    assert_same_as_sitk,
    shared,
    sitk_series,
    write_series,
    write_slice,
)
from medseg.errors import ImageReadError
from medseg.io import read_image
from medseg.io.dicom_series import list_dicom_series, read_dicom_series
from medseg.io.image import Image

# ----------------------------------------------------------------------------------------------------------
# Synthetic series (no real data needed)
# ----------------------------------------------------------------------------------------------------------


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


def test_synthetic_two_series_need_a_uid(tmp_path: Path) -> None:
    write_series(tmp_path / "both" / "a", n=3, series_uid="1.2.3.100")
    write_series(tmp_path / "both" / "b", n=2, series_uid="1.2.3.200")
    with pytest.raises(ImageReadError, match="series_uid") as caught:
        read_dicom_series(tmp_path / "both")
    assert "1.2.3.100" in str(caught.value) and "1.2.3.200" in str(caught.value)
    assert read_dicom_series(tmp_path / "both", series_uid="1.2.3.200").shape == (2, 6, 5)
    with pytest.raises(ImageReadError, match="has no series 9.9.9"):
        read_dicom_series(tmp_path / "both", series_uid="9.9.9")


def test_one_dcm_file_reads_its_whole_series(tmp_path: Path) -> None:
    volume, _ = write_series(tmp_path / "s", n=3)
    one = sorted((tmp_path / "s").iterdir())[0]
    image = read_image(one)
    np.testing.assert_array_equal(image.array[0], volume)
    assert image.same_geometry(read_dicom_series(tmp_path / "s"))


# ----------------------------------------------------------------------------------------------------------
# Real data: CT series, JPEG 2000 lossless (TotalSegmentator example)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def totalseg_ct() -> Image:
    return read_dicom_series(shared("dicom_ct_series_totalseg") / "dicom")


def test_totalseg_ct_matches_nifti_grid(totalseg_ct: Image) -> None:
    nifti = sitk.ReadImage(
        str(shared("dicom_ct_series_totalseg") / "totalseg_prediction_fast_ml.nii.gz")
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
    assert_same_as_sitk(totalseg_ct, sitk_series(shared("dicom_ct_series_totalseg") / "dicom"))


# ----------------------------------------------------------------------------------------------------------
# Real data: 3-slice CT beside its DICOM SEG objects (dcmqi)
# ----------------------------------------------------------------------------------------------------------


def test_liver_ct_series(liver_ct: Image, liver_dir: Path) -> None:
    assert liver_ct.array.shape == (1, 3, 512, 512)
    assert [Path(f).name for f in liver_ct.meta["source_files"]] == [
        "03.dcm",
        "02.dcm",
        "01.dcm",
    ]  # z ascending
    assert_same_as_sitk(liver_ct, sitk_series(liver_dir / "ct"))


def test_listing_shows_seg_objects(liver_dir: Path) -> None:
    found = list_dicom_series(liver_dir)
    assert [info.modality for info in found] == ["CT", "SEG", "SEG"]
    assert found[0].num_files == 3


# ----------------------------------------------------------------------------------------------------------
# Real data: brain MR, several series in one folder
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_dir() -> Path:
    return shared("dicom_mr_brain")


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
