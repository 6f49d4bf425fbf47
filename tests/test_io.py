"""Image I/O: every format, geometry kept end to end, atomic writes, clear errors on bad files."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from builders import shared
from medseg.errors import ImageReadError
from medseg.io import Image, read_image, write_image


def oblique_image(channels: int = 1) -> Image:
    rng = np.random.default_rng(0)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Image(
        rng.normal(size=(channels, 5, 6, 7)).astype(np.float32),
        spacing=(0.8, 0.9, 2.5),
        origin=(-10.0, 20.0, 30.5),
        direction=tuple(rotation.ravel()),
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_3d_round_trip_keeps_array_and_geometry(tmp_path, suffix):
    image = oblique_image()
    path = write_image(image, tmp_path / f"x{suffix}")
    back = read_image(path)
    assert back.shape == (5, 6, 7)
    np.testing.assert_allclose(back.array, image.array, rtol=1e-6)
    assert back.same_geometry(image, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_medseg_geometry_agrees_with_simpleitk_lps(tmp_path, suffix):
    """Files written by medseg read in SimpleITK (LPS natively) with the same geometry and voxel order."""
    image = oblique_image()
    path = write_image(image, tmp_path / f"x{suffix}")
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetSpacing(), image.spacing, rtol=1e-6)
    np.testing.assert_allclose(itk.GetOrigin(), image.origin, atol=1e-5)
    np.testing.assert_allclose(itk.GetDirection(), image.direction, atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(itk), image.array[0], rtol=1e-6)


def test_nifti_affine_is_ras_and_preserved_bit_for_bit(tmp_path):
    affine = np.array([[-0.9, 0.1, 0, 12.3], [0.05, 1.1, 0, -4.2], [0, 0, 3.0, 7.7], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "in.nii.gz"))
    image = read_image(tmp_path / "in.nii.gz")
    assert image.shape == (6, 5, 4)  # (z, y, x)
    assert image.array[0, 2, 1, 3] == data[3, 1, 2]
    # RAS x grows to the right; LPS x to the left: the first origin coordinate flips sign.
    assert image.origin[0] == pytest.approx(-12.3) and image.origin[2] == pytest.approx(7.7)
    write_image(image, tmp_path / "out.nii.gz")
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert np.array_equal(out.affine, nib.load(str(tmp_path / "in.nii.gz")).affine)
    assert np.array_equal(np.asanyarray(out.dataobj), data)


def test_4d_nifti_is_channels_first(tmp_path):
    data = np.random.default_rng(1).normal(size=(7, 6, 5, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "mm.nii.gz"))
    image = read_image(tmp_path / "mm.nii.gz")
    assert image.channels == 2 and image.shape == (5, 6, 7)
    np.testing.assert_array_equal(image.array[1], data[..., 1].T)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_2d_grey_and_rgb_round_trip(tmp_path, suffix):
    grey = Image.from_array(np.random.default_rng(0).integers(0, 255, (1, 9, 11), dtype=np.uint8))
    rgb = Image.from_array(np.random.default_rng(1).integers(0, 255, (3, 9, 11), dtype=np.uint8))
    for name, image in (("grey", grey), ("rgb", rgb)):
        back = read_image(write_image(image, tmp_path / f"{name}{suffix}"))
        assert back.array.shape == image.array.shape
        np.testing.assert_array_equal(back.array, image.array)


def test_jpeg_reads_rgb_channels_first(tmp_path):
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((8, 10, 3), (200, 100, 50), np.uint8)).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    assert image.array.shape == (3, 8, 10)
    assert abs(int(image.array[0].mean()) - 200) < 5


def test_16_bit_png_label_and_float_tiff(tmp_path):
    labels = Image.from_array(np.array([[[0, 300], [1000, 2]]], dtype=np.uint16))
    np.testing.assert_array_equal(read_image(write_image(labels, tmp_path / "l.png")).array, labels.array)
    floats = Image.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 4))
    np.testing.assert_array_equal(read_image(write_image(floats, tmp_path / "f.tiff")).array, floats.array)


def test_write_is_atomic_on_failure(tmp_path):
    """A float image cannot be written as PNG: the error names the file and nothing is left behind."""
    image = Image.from_array(np.full((1, 4, 4), 0.5, np.float32))
    with pytest.raises(ImageReadError, match="do not fit .png"):
        write_image(image, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_existing_file_only_when_complete(tmp_path):
    target = tmp_path / "mask.png"
    write_image(Image.from_array(np.ones((1, 4, 4), np.uint8)), target)
    with pytest.raises(ImageReadError):
        write_image(Image.from_array(np.full((1, 4, 4), -1, np.int32)), target)
    assert read_image(target).array.max() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_truncated_nifti_is_a_clear_error(tmp_path):
    path = tmp_path / "scan.nii.gz"
    write_image(oblique_image(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_text_file_named_png_is_a_clear_error(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a readable PNG image"):
        read_image(path)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageReadError, match="unknown image format"):
        read_image(tmp_path / "notes.txt")


def test_gzip_of_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(ImageReadError, match="cannot read NIfTI"):
        read_image(path)


# ---- real data -------------------------------------------------------------------------------------------


def test_real_hippocampus_nifti_matches_simpleitk():
    root = shared("msd_hippocampus")
    path = root / "imagesTr" / "hippocampus_001.nii.gz"
    image = read_image(path)
    itk = sitk.ReadImage(str(path))
    assert image.shape == sitk.GetArrayFromImage(itk).shape
    np.testing.assert_allclose(image.array[0], sitk.GetArrayFromImage(itk))
    np.testing.assert_allclose(image.spacing, itk.GetSpacing())
    np.testing.assert_allclose(image.origin, itk.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.direction, itk.GetDirection(), atol=1e-6)
    label = read_image(root / "labelsTr" / "hippocampus_001.nii.gz")
    assert set(np.unique(label.array)) == {0, 1, 2}


@pytest.mark.parametrize(
    ("name", "case", "channels"),
    [("jsrt_scr", "JPCLN001", 1), ("isbi2012_em_membrane", "train_00", 1), ("drive", "21_training", 3)],
)
def test_real_2d_png_sets(name, case, channels):
    root = shared(name)
    image = read_image(root / "images" / f"{case}.png")
    mask = read_image(root / "masks" / f"{case}.png")
    assert image.channels == channels and mask.channels == 1
    assert image.shape == mask.shape
    assert mask.array.dtype == np.uint8 and mask.array.max() >= 1


def test_real_nrrd_label_map():
    path = shared("dicom_ct_liver_seg") / "nrrd" / "liver_spine_seg.nrrd"
    image = read_image(path)
    assert image.shape == (3, 512, 512)
    assert set(np.unique(image.array)) <= {0, 1, 2} and image.spacing[0] == pytest.approx(0.8105, abs=1e-3)


def test_real_nifti_to_mha_conversion_keeps_geometry(tmp_path):
    source = shared("dicom_ct_series_totalseg") / "totalseg_prediction_fast_ml.nii.gz"
    image = read_image(source)
    back = read_image(write_image(image, tmp_path / "seg.mha"))
    assert back.same_geometry(image, atol=1e-4)
    np.testing.assert_array_equal(back.array, image.array)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Temporary files are private (mkstemp: 0600); the finished file follows the umask like a plain open()."""
    import os

    old = os.umask(0o022)
    try:
        path = write_image(Image.from_array(np.ones((1, 4, 4), np.uint8)), tmp_path / "mask.png")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
