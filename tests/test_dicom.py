"""DICOM folders and zip archives (``medseg.io.dicom_archive``): members, safety, truncated files."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from builders import count_zip_opens, shared, write_series, zip_folder
from medseg.errors import ImageReadError
from medseg.io.dicom_archive import DicomArchive
from medseg.io.dicom_series import list_dicom_series, read_dicom_series

# ----------------------------------------------------------------------------------------------------------
# Synthetic folders and archives
# ----------------------------------------------------------------------------------------------------------


def test_synthetic_truncated_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "trunc"
    write_series(folder, n=3)
    victim = next(folder.glob("*_1.dcm"))
    victim.write_bytes(victim.read_bytes()[:-40])  # pixel data cut short
    with pytest.raises(ImageReadError) as caught:
        read_dicom_series(folder)
    assert victim.name in str(caught.value)


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


def test_zip_is_opened_once_per_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(tmp_path / "s", n=4)
    archive = zip_folder(tmp_path / "s", tmp_path / "s.zip")
    opened = count_zip_opens(monkeypatch)
    assert read_dicom_series(archive).shape == (4, 6, 5)
    assert opened == [archive]  # one open for the scan and every slice, not one per member
    opened.clear()
    assert len(list_dicom_series(archive)) == 1
    assert opened == [archive]


def test_archive_members_and_closing(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=2)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    archive_path = zip_folder(tmp_path / "s", tmp_path / "s.zip", prefix="top/")
    with DicomArchive(tmp_path / "s") as folder, DicomArchive(archive_path) as archive:
        assert [m.name for m in archive.members] == [f"top/{m.name}" for m in folder.members]
        assert len(folder.members) == 3
        text = next(m for m in archive.members if m.name.endswith("notes.txt"))
        assert archive.read_dataset(text, headers_only=True) is None
        assert text.location == f"{archive_path}/top/notes.txt"
        dicom = archive.members[0]
        assert archive.read_dataset(dicom, headers_only=True).Modality == "MR"
    with pytest.raises(ValueError, match="closed"):
        archive.open(dicom)


def test_a_file_that_is_no_zip_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "scan.zip"
    plain.write_bytes(b"not a zip archive at all" * 10)
    with pytest.raises(ImageReadError, match="neither a folder nor a zip archive"):
        read_dicom_series(plain)
    with pytest.raises(ImageReadError, match="neither a folder nor a zip archive"):
        list_dicom_series(plain)


# ----------------------------------------------------------------------------------------------------------
# Real data: brain MR archives and truncated files
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_dir() -> Path:
    return shared("dicom_mr_brain")


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
