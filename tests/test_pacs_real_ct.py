"""A real CT series (TotalSegmentator's 20-slice 512x512 sample, JPEG 2000 lossless) through a real Orthanc PACS:
storescu -> Orthanc -> `medseg dicom-node` (Orthanc's REST /modalities/.../store) -> SEG back in Orthanc, found by
QIDO-RS, dciodvfy-clean, read back by highdicom to the predictor's labels; the same through `medseg dicomweb`;
and the failures a hospital meets: an incomplete series, and the PACS down while the SEG is sent.

The model is the tests' tiny bundle predicting on a 4 mm grid (a transport test: what matters is that the labels
that come back are the ones the predictor gave, on the source grid, in the same study)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from builders import Orthanc, free_port, run_cli, shared, wait_for
from medseg.pacs import DicomNode, parse_destination
from medseg.pacs.segment import short_hash


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory) -> tuple[Path, list[pydicom.Dataset]]:
    """The sample series as a PACS holds it: its export blanked the study, series and SOP UIDs in the data set
    (SOP ones are kept in the file meta), which any PACS refuses; they are filled in, pixels left as they are."""
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk; .ci/run does it as root)")
    source = shared("dicom_ct_series_totalseg") / "dicom"
    folder = tmp_path_factory.mktemp("real_ct") / "ct"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    datasets = []
    for k, path in enumerate(sorted(source.iterdir())):
        ds = pydicom.dcmread(path)
        meta = ds.file_meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, 2
        ds.PatientID, ds.PatientName, ds.StudyID, ds.AccessionNumber = "MEDSEG-REAL-1", "Real^Ct", "1", ""
        ds.save_as(folder / f"ct{k:02d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    assert datasets[0].file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless and datasets[0].Rows == 512
    return folder, datasets


@pytest.fixture(scope="module")
def coarse_bundle(bundle_3d: Path, tmp_path_factory) -> Path:
    """The tiny bundle predicting on a 4 mm grid: a 512x512x20 CT in seconds (39 s on its own 1 mm grid)."""
    bundle = shutil.copytree(bundle_3d, tmp_path_factory.mktemp("coarse") / "bundle")
    plan = json.loads((bundle / "plan.json").read_text())
    plan["target_spacing"] = [4.0, 4.0, 4.0]
    plan["label_codes"]["bright"] = {"category": ["91723000", "SCT", "Anatomical Structure"],
                                     "type": ["10200004", "SCT", "Liver"]}
    (bundle / "plan.json").write_text(json.dumps(plan))
    return bundle


def _storescu(pacs: Orthanc, files: list[Path]) -> None:
    """storescu the files into Orthanc as they are (``-xv`` proposes their JPEG 2000 lossless transfer syntax)."""
    subprocess.run(["storescu", "-xv", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), *map(str, files)],
                   check=True, capture_output=True, timeout=60)


def _seg_from_pacs(pacs: Orthanc, target: Path, modality: str = "SEG") -> Path:
    """The one SEG (or RTSTRUCT) in Orthanc, as a file: found by QIDO-RS (not by Orthanc's own index), fetched by
    WADO-RS."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(pacs.dicomweb_url)
    found = wait_for(lambda: client.search_for_instances(search_filters={"Modality": modality}), 15,
                      f"the {modality} found by QIDO-RS")
    assert len(found) == 1, found
    header = pydicom.Dataset.from_json(found[0])
    seg = client.retrieve_instance(header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
    seg.save_as(target, enforce_file_format=True)
    return target


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []
    report = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _prediction(folder: Path, bundle: Path) -> np.ndarray:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.io import read_image

    return Predictor(load_bundle(bundle)).predict(read_image(folder)).labels.array[0]


def _assert_seg_is_the_prediction(path: Path, folder: Path, datasets: list[pydicom.Dataset], bundle: Path) -> None:
    """dciodvfy finds no error, the SEG belongs to the source study and frame of reference, references every
    slice, codes "bright" as the bundle's plan says, and highdicom reads it back to the predictor's labels."""
    from medseg.io.dicom_seg import read_dicom_seg_segments

    assert _dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == \
        {str(ds.SOPInstanceUID) for ds in datasets}
    codes = {str(s.SegmentLabel): s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert codes == {"small": "85756007", "bright": "10200004"}  # the bundle's codes, no --label-codes given
    expected = _prediction(folder, bundle)
    segments = read_dicom_seg_segments(path, folder)
    assert segments.array.shape[1:] == expected.shape == (20, 512, 512)  # on the source grid
    for channel, name in enumerate(segments.meta["segment_names"]):
        value = {"small": 1, "bright": 2}[name]
        assert (expected == value).any(), f"the model predicts no {name}: the comparison would prove nothing"
        np.testing.assert_array_equal(segments.array[channel] > 0, expected == value)


def test_a_real_ct_goes_from_orthanc_to_the_node_and_its_seg_comes_back(tmp_path: Path, real_ct, coarse_bundle,
                                                                        caplog) -> None:
    """With an RTSTRUCT of the same prediction too (``--rtstruct``), for radiotherapy planning systems."""
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.io.dicom_rtstruct import read_rtstruct

    folder, datasets = real_ct
    caplog.set_level(logging.INFO)
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", {"medseg": ["MEDSEG", "127.0.0.1", node_port]}, dicomweb=True) as pacs:
        node = DicomNode({"ct": Predictor(load_bundle(coarse_bundle))}, "MEDSEG",
                         parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"), allow=["ORTHANC"],
                         idle_timeout=30, outbox=tmp_path / "outbox", formats=("seg", "rtstruct"))
        node.start("127.0.0.1", node_port)
        try:
            _storescu(pacs, sorted(folder.iterdir()))
            (series,) = pacs.find("Series", {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
            start = time.monotonic()
            pacs.post("/modalities/medseg/store", {"Resources": [series["ID"]], "Synchronous": True})
            assert node.wait_idle(120), "the node did not finish the series"
            seconds = time.monotonic() - start
            path = _seg_from_pacs(pacs, tmp_path / "seg.dcm")
            rtstruct = _seg_from_pacs(pacs, tmp_path / "rtstruct.dcm", "RTSTRUCT")
            for modality in ("SEG", "RTSTRUCT"):
                (stored,) = pacs.find("Series", {"Modality": modality})
                assert stored["ParentStudy"] == series["ParentStudy"]  # stored into the same study
        finally:
            node.stop()
    assert node.failed == [] and len(node.sent) == 2
    _assert_seg_is_the_prediction(path, folder, datasets, coarse_bundle)
    assert _dciodvfy_errors(rtstruct) == []
    contours = read_rtstruct(rtstruct, folder)
    assert contours.meta["roi_names"] == {1: "small", 2: "bright"}
    np.testing.assert_array_equal(contours.array[0], _prediction(folder, coarse_bundle))  # pixel-edge contours
    assert "MEDSEG-REAL-1" not in caplog.text and str(datasets[0].SeriesInstanceUID) not in caplog.text
    print(json.dumps({"real_ct_node_round_trip_s": round(seconds, 2), "slices": len(datasets)}))


def test_a_real_ct_study_is_segmented_through_dicomweb(tmp_path: Path, real_ct, coarse_bundle, capsys) -> None:
    folder, datasets = real_ct
    study = str(datasets[0].StudyInstanceUID)
    with Orthanc(tmp_path / "orthanc", {}, dicomweb=True) as pacs:
        _storescu(pacs, sorted(folder.iterdir()))
        assert run_cli("dicomweb", str(coarse_bundle), "--url", pacs.dicomweb_url, "--study", study) == 0
        (outcome,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert outcome["status"] == "segmented", outcome
        path = _seg_from_pacs(pacs, tmp_path / "seg.dcm")
    _assert_seg_is_the_prediction(path, folder, datasets, coarse_bundle)


def test_an_incomplete_real_series_is_refused_and_nothing_is_sent(tmp_path: Path, real_ct, coarse_bundle,
                                                                  caplog) -> None:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor

    folder, datasets = real_ct
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", {"medseg": ["MEDSEG", "127.0.0.1", node_port]}) as pacs:
        node = DicomNode({"ct": Predictor(load_bundle(coarse_bundle))}, "MEDSEG",
                         parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"), idle_timeout=30)
        node.start("127.0.0.1", node_port)
        try:
            files = sorted(folder.iterdir())
            _storescu(pacs, files[:9] + files[10:])  # slice 10 of 20 never reached the PACS
            (series,) = pacs.find("Series", {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
            with caplog.at_level(logging.WARNING, logger="medseg.pacs"):
                pacs.post("/modalities/medseg/store", {"Resources": [series["ID"]], "Synchronous": True})
                assert node.wait_idle(60)
            time.sleep(1)
            assert pacs.find("Series", {"Modality": "SEG"}) == []  # nothing sent for a series with a hole
        finally:
            node.stop()
    assert node.failed == [short_hash(datasets[0].SeriesInstanceUID)] and node.sent == []
    assert "19 instances" in caplog.text and "non-uniform slice spacing" in caplog.text


class _GatedPredictor:
    """Holds each prediction until ``gate`` is set, so a test can take the PACS down before the SEG is sent."""

    def __init__(self, predictor, gate: threading.Event) -> None:
        self.predictor, self.gate, self.plan = predictor, gate, predictor.plan

    def predict(self, image, where=None):
        assert self.gate.wait(60), "the test never opened the gate"
        return self.predictor.predict(image, where)


def test_the_pacs_down_during_the_send_keeps_the_seg_until_it_is_back(tmp_path: Path, real_ct, coarse_bundle,
                                                                      caplog) -> None:
    """Retried, then reported and kept in the outbox; sent when the PACS answers again: never lost."""
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor

    folder, datasets = real_ct
    gate = threading.Event()
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"medseg": ["MEDSEG", "127.0.0.1", node_port]})
    node = DicomNode({"ct": _GatedPredictor(Predictor(load_bundle(coarse_bundle)), gate)}, "MEDSEG",
                     parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"), idle_timeout=30,
                     outbox=tmp_path / "outbox", retries=2)
    node.retry_wait = 0.1
    node.start("127.0.0.1", node_port)
    try:
        with pacs:
            _storescu(pacs, sorted(folder.iterdir()))
            (series,) = pacs.find("Series", {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
            pacs.post("/modalities/medseg/store", {"Resources": [series["ID"]], "Synchronous": True})
        # Orthanc is down now; the node segments and tries to send
        with caplog.at_level(logging.WARNING, logger="medseg.pacs"):
            gate.set()
            assert node.wait_idle(120)
        (kept,) = (tmp_path / "outbox").glob("*.seg.dcm")
        assert node.failed == [short_hash(datasets[0].SeriesInstanceUID)] and node.sent == []
        assert "try 2 of 2" in caplog.text and "kept as" in caplog.text
        with pacs:  # the same Orthanc (ports, storage) back up
            node.flush_outbox()
            (seg_series,) = wait_for(lambda: pacs.find("Series", {"Modality": "SEG"}), 15, "the SEG from the outbox")
            assert seg_series["ParentStudy"] == series["ParentStudy"]
            assert len(pacs.find("Series", {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})) == 1
    finally:
        gate.set()
        node.stop()
    assert not kept.exists()  # removed from the outbox once stored
