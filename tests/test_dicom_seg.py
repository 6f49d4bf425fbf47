"""DICOM SEG (``medseg.io.dicom_seg``): reading the real dcmqi SEGs in ../shared/data onto their CT, and writing
predicted label maps as DICOM SEG (round trips on the real CT, or a synthetic series where it is absent)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from builders import SHARED_DATA, count_zip_opens, shared, write_series
from medseg.errors import ImageReadError, MedsegError
from medseg.io import read_image
from medseg.io.dicom_seg import read_dicom_seg, read_dicom_seg_segments, write_dicom_seg
from medseg.io.dicom_series import read_dicom_series
from medseg.io.image import Image

LIVER = SHARED_DATA / "dicom_ct_liver_seg"


# ----------------------------------------------------------------------------------------------------------
# Reading: 3-slice CT with DICOM SEG (dcmqi)
# ----------------------------------------------------------------------------------------------------------


def read_nrrd(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


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
    unrelated = read_dicom_series(shared("dicom_mr_brain") / "hippocrop_study1")
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


def test_reading_a_seg_as_series_is_refused(liver_dir: Path) -> None:
    with pytest.raises(ImageReadError, match="only DICOM SEG"):
        read_dicom_series(liver_dir / "seg")
    with pytest.raises(ImageReadError, match="not a DICOM SEG"):
        read_dicom_seg(liver_dir / "ct" / "01.dcm")


def test_read_image_of_a_seg_file_gives_its_label_map(liver_dir: Path) -> None:
    seg_path = liver_dir / "seg" / "liver_seg.dcm"
    via_read_image = read_image(seg_path)
    np.testing.assert_array_equal(via_read_image.array, read_dicom_seg(seg_path).array)
    assert via_read_image.meta["format"] == "dicom-seg"


def test_liver_seg_source_given_as_zip_is_opened_once(liver_ct: Image, liver_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "liver.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(liver_dir.rglob("*.dcm")):
            zf.write(file, file.relative_to(liver_dir).as_posix())
    opened = count_zip_opens(monkeypatch)
    labels = read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", source=archive)
    assert opened == [archive]  # one scan picks the referenced series and reads it
    assert labels.same_geometry(liver_ct)
    np.testing.assert_array_equal(labels.array, read_dicom_seg(liver_dir / "seg" / "liver_seg.dcm", liver_ct).array)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _liver_series(tmp_path: Path) -> Path:
    if (LIVER / "ct").is_dir():
        return LIVER / "ct"
    write_series(tmp_path / "series", n=3)
    return tmp_path / "series"


def test_dicom_seg_round_trip_reproduces_the_label_map(tmp_path):
    series = _liver_series(tmp_path)
    ct = read_image(series)
    labels = np.zeros(ct.shape, np.uint8)
    z, y, x = ct.shape
    labels[0, y // 4: y // 2, x // 4: x // 2] = 1
    labels[1:, y // 2: 3 * y // 4, x // 3: 2 * x // 3] = 2
    labels[-1, :3, :3] = 1
    path = write_dicom_seg(labels, series, tmp_path / "pred.seg.dcm", {0: "background", 1: "liver", 2: "tumour"},
                           sop_instance_uids=ct.meta["sop_instance_uids"])
    back = read_dicom_seg(path, series)
    np.testing.assert_array_equal(back.array[0], labels)
    assert back.same_geometry(ct)
    assert back.meta["segment_labels"] == {1: "liver", 2: "tumour"}
    assert back.meta["referenced_series_instance_uids"] == [ct.meta["series_instance_uid"]]
    with pytest.raises(MedsegError, match="does not match the series"):
        write_dicom_seg(labels[:, :-1], series, tmp_path / "bad.dcm", {1: "liver", 2: "tumour"})


def test_dicom_seg_from_a_zip_in_the_default_slice_order(tmp_path: Path) -> None:
    """Without sop_instance_uids the Z order is read_dicom_series' (files written in reverse, shuffled names)."""
    write_series(tmp_path / "s", n=4)
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((tmp_path / "s").iterdir()):
            zf.write(file, file.name)
    ct = read_dicom_series(archive)
    labels = np.zeros(ct.shape, np.uint8)
    for k in range(ct.shape[0]):
        labels[k, k, : k + 1] = 3  # a different mask on every slice: any reordering shows
    path = write_dicom_seg(labels[None], archive, tmp_path / "out" / "pred.seg.dcm", {3: "vessel"})
    back = read_dicom_seg(path, archive)
    np.testing.assert_array_equal(back.array[0], (labels > 0).astype(np.uint8))  # label 3 is segment 1
    assert back.meta["segment_labels"] == {1: "vessel"}
    assert back.same_geometry(ct)


def test_dicom_seg_writer_refusals(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=2)
    labels = np.zeros((2, 6, 5), np.uint8)
    labels[0, 0, 0] = 2
    with pytest.raises(MedsegError, match="needs a 3D label map"):
        write_dicom_seg(labels[0], tmp_path / "s", tmp_path / "a.dcm", {2: "x"})
    with pytest.raises(MedsegError, match="no foreground labels"):
        write_dicom_seg(labels, tmp_path / "s", tmp_path / "b.dcm", {0: "background"})
    with pytest.raises(MedsegError, match=r"values \[2\] without a name"):
        write_dicom_seg(labels, tmp_path / "s", tmp_path / "c.dcm", {1: "liver"})
    uids = read_dicom_series(tmp_path / "s").meta["sop_instance_uids"]
    with pytest.raises(MedsegError, match="lacks 1 slice"):
        write_dicom_seg(labels, tmp_path / "s", tmp_path / "d.dcm", {2: "x"}, sop_instance_uids=["1.2.3", uids[1]])
    assert not any(tmp_path.glob("?.dcm"))


# --------------------------------------------------------------------------------------------------------------
# SEGs that viewers display right: coded terms, colours, algorithm, references; dciodvfy-clean
# --------------------------------------------------------------------------------------------------------------


def _segments(path: Path) -> dict[str, pydicom.Dataset]:
    return {str(s.SegmentLabel): s for s in pydicom.dcmread(path).SegmentSequence}


def test_segment_terms_come_from_the_label_names(tmp_path: Path) -> None:
    from medseg.colours import label_colour
    from medseg.io.dicom_seg import segment_terms

    category, kind, side = segment_terms("Kidney_Left")
    assert (category.value, kind.value, side.value) == ("91723000", "64033007", "7771000")
    assert [t.value for t in segment_terms("LIVER")[:2]] == ["91723000", "10200004"]
    assert [t.value for t in segment_terms("liver tumour")[:2]] == ["49755003", "108369006"]
    assert [t.value for t in segment_terms("hippocampus")[:2]] == ["91723000", "5366008"]
    assert [t.value for t in segment_terms("Anterior")[:2]] == ["85756007", "85756007"]  # unknown: Tissue
    write_series(tmp_path / "s", n=3)
    labels = np.zeros((3, 6, 5), np.uint8)
    labels[0, :2] = 1
    labels[1, 2:] = 4
    path = write_dicom_seg(labels, tmp_path / "s", tmp_path / "seg.dcm", {1: "liver", 4: "right kidney"})
    segments = _segments(path)
    kidney = segments["right kidney"]
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == \
        "24028007"
    liver = segments["liver"]
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    assert liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medseg"
    import highdicom as hd

    for value, segment in ((1, liver), (4, kidney)):  # the palette colour of the label value, as CIELab
        expected = hd.color.CIELabColor.from_rgb(*bytes.fromhex(label_colour(value)[1:])).value
        assert tuple(segment.RecommendedDisplayCIELabValue) == tuple(expected)
    ds = pydicom.dcmread(path)
    (referenced,) = ds.ReferencedSeriesSequence
    assert len(referenced.ReferencedInstanceSequence) == 3  # every source slice, the empty one included
    assert all("DerivationImageSequence" in frame for frame in ds.PerFrameFunctionalGroupsSequence)


def test_label_codes_file_on_predict(tmp_path: Path, bundle_3d: Path) -> None:
    from builders import run_cli

    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"BRIGHT": {"category": ["49755003", "SCT", "Morphologically Abnormal Structure"],
                                            "type": ["108369006", "SCT", "Neoplasm"]}}))
    write_series(tmp_path / "series", n=4)
    assert run_cli("predict", str(bundle_3d), str(tmp_path / "series"), "-o", str(tmp_path / "out"), "--format",
                   "dicom-seg", "--label-codes", str(codes), "--no-progress") == 0
    segments = _segments(tmp_path / "out" / "series.seg.dcm")
    assert segments["bright"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segments["small"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # not listed: Tissue
    codes.write_text("{not json")
    with pytest.raises(MedsegError, match="cannot read label codes"):
        run_cli("predict", str(bundle_3d), str(tmp_path / "series"), "-o", str(tmp_path / "out2"), "--format",
                "dicom-seg", "--label-codes", str(codes))


def test_sop_uids_kept_only_in_the_file_meta_are_used(tmp_path: Path) -> None:
    """Some exports (TotalSegmentator's sample CT) leave SOPClassUID/SOPInstanceUID empty in the data set."""
    write_series(tmp_path / "s", n=2)
    for file in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(file)
        ds.SOPClassUID = ds.SOPInstanceUID = ""
        ds.save_as(file)
    labels = np.ones((2, 6, 5), np.uint8)
    path = write_dicom_seg(labels, tmp_path / "s", tmp_path / "seg.dcm", {1: "liver"})
    uids = set(read_dicom_series(tmp_path / "s").meta["sop_instance_uids"])
    (referenced,) = pydicom.dcmread(path).ReferencedSeriesSequence
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == uids


def test_dciodvfy_finds_no_error_in_a_seg_of_real_ct(tmp_path: Path) -> None:
    """dicom3tools' validator on a SEG of the real 3-slice CT with coded, coloured and lateralised segments."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; .ci/run does it as root)")
    series = shared("dicom_ct_liver_seg") / "ct"
    ct = read_dicom_series(series)
    labels = np.zeros(ct.shape, np.uint8)
    z, y, x = ct.shape
    labels[:, y // 4: y // 2, x // 4: x // 2] = 1
    labels[1:, y // 2: 3 * y // 4, x // 3: 2 * x // 3] = 2
    labels[0, :20, :20] = 3
    path = write_dicom_seg(labels, series, tmp_path / "seg.dcm", {1: "liver", 2: "left kidney", 3: "Anterior"},
                           sop_instance_uids=ct.meta["sop_instance_uids"])
    report = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)
