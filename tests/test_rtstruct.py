"""RTSTRUCT output (``medseg predict --format rtstruct``): dciodvfy-clean on real CT, masks survive the round trip
(real DICOM SEG masks and a synthetic series with a hole), references to the source series, refusals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from builders import ct_series_datasets, shared, write_datasets
from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.evaluate.overlap import dice_from_counts
from medseg.infer.cohort import PredictInput, output_path, write_prediction
from medseg.infer.predict import Prediction
from medseg.io import read_image, write_image
from medseg.io.dicom_rtstruct import fill_contours, label_contours, read_rtstruct, write_rtstruct
from medseg.io.dicom_seg import read_dicom_seg
from medseg.io.dicom_series import read_dicom_series
from medseg.io.image import Image

REAL_SEGS = ("liver_seg", "partial_overlaps_seg")  # 1 segment (Liver); 5 overlapping ones (highest wins)


def _real_labels(name: str) -> tuple[Path, Image, Image, dict[int, str]]:
    """The real CT series folder, its Image, a real mask on it (label map of a dcmqi DICOM SEG) and its names."""
    liver = shared("dicom_ct_liver_seg")
    ct = read_dicom_series(liver / "ct")
    labels = read_dicom_seg(liver / "seg" / f"{name}.dcm", source=ct)
    assert labels.same_geometry(ct)
    return liver / "ct", ct, labels, {int(k): str(v) for k, v in labels.meta["segment_labels"].items()}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return dice_from_counts(int(a.sum()), int(b.sum()), int((a & b).sum()), empty="one")


@pytest.mark.parametrize("seg", REAL_SEGS)
def test_dciodvfy_finds_no_error_in_an_rtstruct_of_real_ct(tmp_path: Path, seg: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; .ci/run does it as root)")
    series, ct, labels, names = _real_labels(seg)
    path = write_rtstruct(labels.array, series, tmp_path / "case.rtstruct.dcm", names,
                          sop_instance_uids=ct.meta["sop_instance_uids"])
    report = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)
    assert "RTStructureSet" in lines, "\n".join(lines)  # dciodvfy recognised the IOD


def test_dciodvfy_finds_no_error_with_an_empty_roi(tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; .ci/run does it as root)")
    folder, ct, labels = _synthetic(tmp_path)
    path = write_rtstruct(labels, folder, tmp_path / "s.dcm", {1: "liver", 2: "spleen", 3: "lesion"})
    report = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert [line for line in lines if line.startswith(("Error", "Warning"))] == [], "\n".join(lines)


@pytest.mark.parametrize("seg", REAL_SEGS)
def test_real_masks_survive_the_round_trip(tmp_path: Path, seg: str) -> None:
    series, ct, labels, names = _real_labels(seg)
    path = write_rtstruct(labels.array, series, tmp_path / "case.rtstruct.dcm", names,
                          sop_instance_uids=ct.meta["sop_instance_uids"])
    back = read_rtstruct(path, series)  # the series given as a folder
    assert back.same_geometry(ct) and back.meta["roi_names"] == names
    for value in names:
        original, restored = labels.array[0] == value, back.array[0] == value
        assert original.any()
        assert _dice(original, restored) >= 0.95, names[value]
    np.testing.assert_array_equal(back.array, labels.array)  # pixel-edge contours: exact


def test_real_rtstruct_references_the_source_series(tmp_path: Path) -> None:
    series, ct, labels, names = _real_labels("liver_seg")
    path = write_rtstruct(labels.array, series, tmp_path / "case.rtstruct.dcm", names)  # default slice order
    ds = pydicom.dcmread(path)
    source = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.PatientID == source.PatientID
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == source.FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    (referenced,) = study.RTReferencedSeriesSequence
    assert study.ReferencedSOPInstanceUID == source.StudyInstanceUID
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence] == ct.meta["sop_instance_uids"]
    np.testing.assert_array_equal(read_rtstruct(path, ct).array, labels.array)


def _synthetic(tmp_path: Path) -> tuple[Path, Image, np.ndarray]:
    """A 6-slice CT series and a label map: a ring (a hole) of label 1, two blobs of "liver tumour" (label 3)
    touching at a corner, label 2 unused."""
    folder = tmp_path / "series"
    write_datasets(ct_series_datasets(n=6, shape=(24, 20)), folder)
    ct = read_dicom_series(folder)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:5, 3:15, 2:12] = 1
    labels[2:4, 6:11, 5:9] = 0  # a hole through slices 2 and 3
    labels[3, 17:20, 13:16] = 3
    labels[3, 20:23, 16:19] = 3  # touches the other blob only at a corner
    labels[5, 0, :] = 3  # an edge row of the image
    return folder, ct, labels


def test_synthetic_round_trip_with_a_hole(tmp_path: Path) -> None:
    folder, ct, labels = _synthetic(tmp_path)
    names = {0: "background", 1: "liver", 2: "spleen", 3: "liver tumour"}
    path = write_rtstruct(labels, folder, tmp_path / "s.rtstruct.dcm", names,
                          sop_instance_uids=ct.meta["sop_instance_uids"])
    back = read_rtstruct(path, ct)
    np.testing.assert_array_equal(back.array[0], labels)
    assert back.meta["roi_names"] == {1: "liver", 2: "spleen", 3: "liver tumour"}

    ds = pydicom.dcmread(path)
    assert [roi.ROIName for roi in ds.StructureSetROISequence] == ["liver", "spleen", "liver tumour"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "ORGAN", "GTV"]
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence] == [
        list(bytes.fromhex(label_colour(v)[1:])) for v in (1, 2, 3)]
    liver, spleen, tumour = ds.ROIContourSequence
    assert "ContourSequence" not in spleen  # an empty ROI: listed, without contours
    per_slice = [0] * 6
    positions = {uid: z for z, uid in enumerate(ct.meta["sop_instance_uids"])}
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm")))}
    for contour in liver.ContourSequence:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        (image,) = contour.ContourImageSequence
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert len(points) == contour.NumberOfContourPoints
        np.testing.assert_allclose(points[:, 2], float(sources[image.ReferencedSOPInstanceUID].ImagePositionPatient[2]))
        per_slice[positions[image.ReferencedSOPInstanceUID]] += 1
    assert per_slice == [0, 1, 2, 2, 1, 0]  # outer boundary, plus the hole on slices 2 and 3
    assert len(tumour.ContourSequence) == 3  # corner-touching blobs are separate contours


def test_contours_in_patient_millimetres(tmp_path: Path) -> None:
    folder, ct, _ = _synthetic(tmp_path)
    labels = np.zeros(ct.shape, np.uint8)
    labels[2, 4:6, 3:8] = 1  # rows 4-5, columns 3-7: IPP (-10, -20), 1 mm pixels
    path = write_rtstruct(labels, folder, tmp_path / "s.dcm", {1: "box"},
                          sop_instance_uids=ct.meta["sop_instance_uids"])
    (contour,) = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    assert {(x, y) for x, y, _ in points} == {(-7.5, -16.5), (-2.5, -16.5), (-2.5, -14.5), (-7.5, -14.5)}


def test_contours_without_image_links_go_by_plane_position(tmp_path: Path) -> None:
    folder, ct, labels = _synthetic(tmp_path)
    path = write_rtstruct(labels, folder, tmp_path / "s.dcm", {1: "liver", 3: "lesion"},
                          sop_instance_uids=ct.meta["sop_instance_uids"])
    ds = pydicom.dcmread(path)
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            del contour.ContourImageSequence
    ds.save_as(path)
    np.testing.assert_array_equal(read_rtstruct(path, folder).array[0], labels)


def test_gantry_tilted_series_round_trip_by_slice_positions(tmp_path: Path) -> None:
    folder = tmp_path / "tilted"
    write_datasets(ct_series_datasets(n=5, shift=0.5), folder)  # slice k moved k * 0.5 mm along y
    ct = read_dicom_series(folder)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 3:9, 4:10] = 1
    labels[2, 5:7, 6:8] = 0
    path = write_rtstruct(labels, folder, tmp_path / "t.dcm", {1: "liver"})
    (contour, *_) = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence
    assert float(contour.ContourData[1]) == -20.0 + 0.5 + 2.5  # slice 1: its own position, row 3's top edge
    np.testing.assert_array_equal(read_rtstruct(path, folder).array[0], labels)


def test_label_contours_fill_back_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 16, 2))) < rng.random()
        np.testing.assert_array_equal(fill_contours(label_contours(mask), mask.shape), mask)
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    outer, hole = label_contours(ring)
    assert outer.tolist() == [[0.5, 0.5], [0.5, 7.5], [7.5, 7.5], [7.5, 0.5]]
    assert sorted(map(tuple, hole.tolist())) == [(2.5, 2.5), (2.5, 5.5), (5.5, 2.5), (5.5, 5.5)]


def test_write_prediction_rtstruct_for_a_dicom_series_and_refusal_otherwise(tmp_path: Path) -> None:
    folder, ct, labels = _synthetic(tmp_path)
    prediction = Prediction(labels=Image(labels[None], ct.spacing, ct.origin, ct.direction, dict(ct.meta)))
    item = PredictInput("case", [folder])
    assert output_path(item, tmp_path / "out", "rtstruct") == tmp_path / "out" / "case.rtstruct.dcm"
    (tmp_path / "out").mkdir()
    record = write_prediction(prediction, item, tmp_path / "out", "rtstruct", {1: "liver", 2: "spleen", 3: "lesion"})
    assert record["output"] == str(tmp_path / "out" / "case.rtstruct.dcm")
    np.testing.assert_array_equal(read_rtstruct(record["output"], folder).array[0], labels)

    nifti = tmp_path / "scan.nii.gz"
    write_image(read_image(folder), nifti)
    with pytest.raises(MedsegError, match="is not a DICOM series folder or .zip: an RTSTRUCT must reference one"):
        write_prediction(prediction, PredictInput("scan", [nifti]), tmp_path / "out", "rtstruct", {1: "liver"})


def test_rtstruct_writer_and_reader_refusals(tmp_path: Path) -> None:
    folder, ct, labels = _synthetic(tmp_path)
    with pytest.raises(MedsegError, match="does not match the series"):
        write_rtstruct(labels[:-1], folder, tmp_path / "x.dcm", {1: "a", 3: "b"})
    with pytest.raises(MedsegError, match="needs a 3D label map"):
        write_rtstruct(labels[0], folder, tmp_path / "x.dcm", {1: "a", 3: "b"})
    with pytest.raises(MedsegError, match=r"values \[3\] without a name"):
        write_rtstruct(labels, folder, tmp_path / "x.dcm", {1: "a"})
    with pytest.raises(MedsegError, match="no foreground labels"):
        write_rtstruct(labels, folder, tmp_path / "x.dcm", {0: "background"})
    with pytest.raises(MedsegError, match="is not an RTSTRUCT"):
        read_rtstruct(next(folder.glob("*.dcm")), ct)
