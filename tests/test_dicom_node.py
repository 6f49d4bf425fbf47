"""medseg as a DICOM node: segment_series on in-memory datasets, the rules, the node's refusals, and the whole
round trip through a real Orthanc PACS (storescu -> Orthanc -> node -> SEG back in Orthanc)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from builders import Orthanc, ct_series_datasets, free_port, run_cli, sr_dataset, wait_for, write_datasets, write_series
from medseg.errors import MedsegError
from medseg.pacs import DicomNode, load_label_codes, load_rules, parse_destination, segment_series, series_image
from medseg.pacs.rules import model_name
from medseg.pacs.segment import short_hash

# --------------------------------------------------------------------------------------------------------------
# segment_series and the series checks (no network)
# --------------------------------------------------------------------------------------------------------------


def test_series_image_from_memory_matches_the_file_reader(tmp_path: Path) -> None:
    from medseg.io.dicom_series import read_dicom_series

    write_series(tmp_path / "s", n=5)  # oblique MR, files in reverse order under shuffled names
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "s").iterdir())]
    random.Random(0).shuffle(datasets)
    image, ordered = series_image(datasets)
    reference = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(image.array, reference.array)
    assert image.same_geometry(reference)
    assert [ds.SOPInstanceUID for ds in ordered] == reference.meta["sop_instance_uids"]


def test_tilted_irregular_and_non_image_series_are_refused() -> None:
    with pytest.raises(MedsegError, match="gantry-tilted or sheared"):
        series_image(ct_series_datasets(n=5, shift=0.5))  # 0.5 mm in plane per 2 mm slice: 14 degrees
    tilted = ct_series_datasets(n=3)
    for ds in tilted:
        ds.GantryDetectorTilt = 12.0
    with pytest.raises(MedsegError, match=r"GantryDetectorTilt 12"):
        series_image(tilted)
    gappy = ct_series_datasets(n=6)
    del gappy[2]
    with pytest.raises(MedsegError, match="non-uniform slice spacing"):
        series_image(gappy)
    with pytest.raises(MedsegError, match="not a single-frame image"):
        series_image([sr_dataset()])
    mixed = ct_series_datasets(n=2) + ct_series_datasets(n=2, seed=1)
    with pytest.raises(MedsegError, match="belong to 2 series"):
        series_image(mixed)
    flat = ct_series_datasets(n=2)
    del flat[1].ImagePositionPatient
    with pytest.raises(MedsegError, match="lacks ImagePositionPatient"):
        series_image(flat)
    series_image(ct_series_datasets(n=4, shift=0.001))  # rounding in positions is not a tilt


def test_segment_series_gives_the_predictor_labels_as_a_seg(tmp_path: Path, bundle_3d: Path) -> None:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.io import read_image
    from medseg.io.dicom_seg import read_dicom_seg

    datasets = ct_series_datasets(n=6)
    write_datasets(datasets, tmp_path / "ct")
    predictor = Predictor(load_bundle(bundle_3d))
    received = [pydicom.dcmread(p) for p in sorted((tmp_path / "ct").iterdir())][::-1]
    seg = segment_series(received, predictor)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in datasets}
    seg.save_as(tmp_path / "seg.dcm")
    back = read_dicom_seg(tmp_path / "seg.dcm", tmp_path / "ct")
    expected = predictor.predict(read_image(tmp_path / "ct")).labels.array[0]
    names = load_bundle(bundle_3d).plan.disk_labels
    relabel = {k + 1: v for k, v in enumerate(sorted(v for v in names if v))}  # segment numbers are 1..N
    np.testing.assert_array_equal(np.vectorize(lambda s: relabel.get(int(s), 0))(back.array[0]), expected)


# --------------------------------------------------------------------------------------------------------------
# Rules, destinations and label codes
# --------------------------------------------------------------------------------------------------------------


def test_rules_pick_a_model_by_modality_body_part_and_description(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"model": "liver", "Modality": "^CT$", "BodyPartExamined": "abdomen|liver"},
        {"model": "brain", "Modality": "MR", "SeriesDescription": "t1"}], "default": None}))
    chosen = load_rules(rules, ["liver", "brain"])
    ct = pydicom.Dataset()
    ct.Modality, ct.BodyPartExamined = "CT", "ABDOMEN"
    assert chosen.choose(ct) == "liver"
    ct.BodyPartExamined = "HEAD"
    assert chosen.choose(ct) is None  # no rule applies and the default is null: skipped
    mr = pydicom.Dataset()
    mr.Modality, mr.SeriesDescription = "MR", "Sag T1 MPRAGE"
    assert chosen.choose(mr) == "brain"
    assert load_rules(None, ["liver", "brain"]).choose(mr) == "liver"  # no file: the first bundle for all
    for bad, message in (({"rules": [{"model": "lung"}]}, "names no model"),
                         ({"rules": [{"model": "liver", "Manufacturer": "x"}]}, "unknown keys"),
                         ({"rules": [{"model": "liver", "Modality": "("}]}, "not a regular expression"),
                         ({"rules": [], "default": "lung"}, "default model")):
        rules.write_text(json.dumps(bad))
        with pytest.raises(MedsegError, match=message):
            load_rules(rules, ["liver", "brain"])
    assert model_name(Path("runs/liver/bundle"), "Liver", {"Liver"}) == "Liver-2"
    assert model_name(Path("models/hippo"), "Hippocampus", set()) == "hippo"


def test_destination_and_label_codes_parsing(tmp_path: Path) -> None:
    destination = parse_destination("ORTHANC@10.0.0.5:4242")
    assert (destination.aet, destination.host, destination.port) == ("ORTHANC", "10.0.0.5", 4242)
    for bad in ("ORTHANC@pacs", "pacs:4242", "A_TITLE_LONGER_THAN_16@h:1", "X@h:99999"):
        with pytest.raises(MedsegError, match="AET@host:port"):
            parse_destination(bad)
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"Anterior": {"category": ["91723000", "SCT", "Anatomical Structure"],
                                             "type": ["5366008", "SCT", "Hippocampus"]}}))
    category, kind, modifier = load_label_codes(path)["Anterior"]
    assert (category.value, kind.value, kind.meaning, modifier) == ("91723000", "5366008", "Hippocampus", None)
    path.write_text(json.dumps({"x": {"category": ["1", "SCT"], "type": ["2", "SCT", "y"]}}))
    with pytest.raises(MedsegError, match=r"category must be \[code, scheme, meaning\]"):
        load_label_codes(path)
    assert load_label_codes(None) == {}


# --------------------------------------------------------------------------------------------------------------
# The node over the network
# --------------------------------------------------------------------------------------------------------------


def _associate(port: int, calling: str = "ORTHANC", contexts: tuple[str, ...] = ()):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    for uid in (Verification, *contexts):
        ae.add_requested_context(uid)
    return ae.associate("127.0.0.1", port, ae_title="MEDSEG")


def test_node_echoes_rejects_unknown_callers_and_refuses_non_images(tmp_path: Path, caplog) -> None:
    port = free_port()
    node = DicomNode({"unused": object()}, "MEDSEG", parse_destination(f"PACS@127.0.0.1:{free_port()}"),
                     allow=["ORTHANC"], idle_timeout=0.5)
    node.start("127.0.0.1", port)
    try:
        assoc = _associate(port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        report = sr_dataset()
        assoc.release()
        assoc = _associate(port, contexts=(pydicom.uid.BasicTextSRStorage,))
        assert assoc.send_c_store(report).Status == 0x0122  # Refused: SOP class not supported
        assoc.release()
        intruder = _associate(port, calling="INTRUDER")
        assert intruder.is_rejected and not intruder.is_established
        assert node.wait_idle(10) and node.sent == [] and node.failed == []
    finally:
        node.stop()
    assert "Patient" not in caplog.text and report.SOPInstanceUID not in caplog.text


def test_an_undeliverable_seg_is_kept_in_the_outbox(tmp_path: Path, caplog) -> None:
    node = DicomNode({"unused": object()}, "MEDSEG", parse_destination(f"PACS@127.0.0.1:{free_port()}"),
                     outbox=tmp_path / "outbox", retries=2)
    node.retry_wait = 0.01
    seg = ct_series_datasets(n=1)[0]  # any dataset with file meta stands for the SEG here
    with caplog.at_level(logging.WARNING, logger="medseg.pacs"):
        assert not node.deliver(seg, "abcd1234")
    kept = list((tmp_path / "outbox").glob("*.dcm"))
    assert len(kept) == 1 and pydicom.dcmread(kept[0]).SOPInstanceUID == seg.SOPInstanceUID
    assert "try 2 of 2" in caplog.text and seg.PatientID not in caplog.text


def test_an_aborted_series_completes_after_the_idle_timeout(tmp_path: Path, bundle_3d: Path) -> None:
    """The sender aborts after the last instance: the idle timeout completes the series; the PACS is down, so the
    SEG lands in the outbox after the retries."""
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor

    port = free_port()
    node = DicomNode({"blobs": Predictor(load_bundle(bundle_3d))}, "MEDSEG",
                     parse_destination(f"PACS@127.0.0.1:{free_port()}"), idle_timeout=0.5,
                     outbox=tmp_path / "outbox", retries=1)
    node.start("127.0.0.1", port)
    try:
        datasets = ct_series_datasets(n=4)
        assoc = _associate(port, contexts=(pydicom.uid.CTImageStorage,))
        assert all(assoc.send_c_store(ds).Status == 0x0000 for ds in datasets)
        assoc.abort()
        assert node.wait_idle(60)
    finally:
        node.stop()
    assert node.failed == [short_hash(datasets[0].SeriesInstanceUID)]  # segmented but not delivered
    (kept,) = (tmp_path / "outbox").glob("*.seg.dcm")
    assert pydicom.dcmread(kept).ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID


# --------------------------------------------------------------------------------------------------------------
# End to end through a real Orthanc
# --------------------------------------------------------------------------------------------------------------


def test_orthanc_sends_a_series_and_gets_the_seg_back(tmp_path: Path, bundle_3d: Path, caplog) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk; .ci/run does it as root)")
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.io import read_image
    from medseg.io.dicom_seg import read_dicom_seg

    start = time.monotonic()
    caplog.set_level(logging.INFO)  # as `medseg dicom-node` logs: every library's INFO lines too
    datasets = ct_series_datasets(n=8, shape=(32, 28))
    files = write_datasets(datasets, tmp_path / "ct")
    predictor = Predictor(load_bundle(bundle_3d))
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", {"medseg": ["MEDSEG", "127.0.0.1", node_port]}) as pacs:
        node = DicomNode({"blobs": predictor}, "MEDSEG", parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"),
                         allow=["ORTHANC"], idle_timeout=20, outbox=tmp_path / "outbox")
        node.start("127.0.0.1", node_port)
        try:
            subprocess.run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(pacs.dicom_port), *map(str, files)],
                           check=True, capture_output=True, timeout=30)
            (series,) = pacs.find("Series", {"SeriesInstanceUID": datasets[0].SeriesInstanceUID})
            assert pacs.post("/modalities/medseg/echo", {}) == {}  # Orthanc's C-ECHO reaches the node
            pacs.post("/modalities/medseg/store", {"Resources": [series["ID"]], "Synchronous": True})
            assert node.wait_idle(60), "the node did not finish the series"
            segs = wait_for(lambda: pacs.find("Series", {"Modality": "SEG"}), 15, "the SEG in Orthanc")
        finally:
            node.stop()
        (seg_series,) = segs
        assert seg_series["ParentStudy"] == series["ParentStudy"]  # stored into the same study
        (instance,) = seg_series["Instances"]
        (tmp_path / "seg.dcm").write_bytes(pacs.request("GET", f"/instances/{instance}/file"))
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in datasets}
    assert node.sent == [seg.SOPInstanceUID] and node.failed == []
    back = read_dicom_seg(tmp_path / "seg.dcm", tmp_path / "ct")
    expected = predictor.predict(read_image(tmp_path / "ct")).labels.array[0]
    np.testing.assert_array_equal(back.array[0] > 0, expected > 0)
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and len(s.RecommendedDisplayCIELabValue) == 3
               and s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medseg"
               for s in seg.SegmentSequence)
    # no patient data in the logs: no name, ID, or UID (series appear as a short hash)
    for secret in ("Test^Patient", "MEDSEG-TEST-1", datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID):
        assert secret not in caplog.text
    assert short_hash(datasets[0].SeriesInstanceUID) in caplog.text
    assert time.monotonic() - start < 90


def test_dicomweb_worker_segments_a_study_once_and_confirms_the_store(tmp_path: Path, bundle_3d: Path,
                                                                    capsys) -> None:
    """QIDO-RS, WADO-RS and STOW-RS against Orthanc's DICOMweb plugin: the SEG lands in the study, a second run
    skips the series a medseg SEG references, and an SR in the study is left alone."""
    import io

    from dicomweb_client.api import DICOMwebClient

    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.pacs import DicomWebWorker

    datasets = ct_series_datasets(n=8, shape=(32, 28))
    study = str(datasets[0].StudyInstanceUID)
    report = sr_dataset(study)
    with Orthanc(tmp_path / "orthanc", {}, dicomweb=True) as pacs:
        for ds in [*datasets, report]:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            pacs.request("POST", "/instances", buffer.getvalue())
        worker = DicomWebWorker(DICOMwebClient(pacs.dicomweb_url), {"blobs": Predictor(load_bundle(bundle_3d))})
        first = {o.status: o for o in worker.run_study(study)}
        assert set(first) == {"segmented", "skipped"}, [o.to_dict() for o in first.values()]
        assert "not an image series" in first["skipped"].detail
        (seg_series,) = pacs.find("Series", {"Modality": "SEG"})
        (series,) = pacs.find("Series", {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
        assert seg_series["ParentStudy"] == series["ParentStudy"]  # into the same study
        code = run_cli("dicomweb", str(bundle_3d), "--url", pacs.dicomweb_url, "--study", study)  # again, by CLI
        assert code == 0
        again = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert [o["status"] for o in again] == ["skipped"] * 3  # CT (SEG references it), SR, the SEG itself
        assert any("references it already" in o["detail"] for o in again)
        assert len(pacs.find("Series", {"Modality": "SEG"})) == 1  # nothing stored twice


def test_a_store_that_qido_cannot_find_is_a_failure_not_a_success(bundle_3d: Path) -> None:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.pacs import DicomWebWorker

    datasets = ct_series_datasets(n=8, shape=(32, 28))

    class ForgetfulServer:  # answers the store, then never shows the SEG (a 200 is not proof)
        def search_for_series(self, study_instance_uid, get_remaining):
            return [datasets[0].to_json_dict()]

        def retrieve_series(self, study, series, media_types=None):
            return datasets

        def store_instances(self, datasets, study_instance_uid):
            return None

        def search_for_instances(self, **query):
            return []

    worker = DicomWebWorker(ForgetfulServer(), {"blobs": Predictor(load_bundle(bundle_3d))})
    (outcome,) = worker.run_study(str(datasets[0].StudyInstanceUID))
    assert outcome.status == "failed" and "QIDO-RS does not find the SEG" in outcome.detail


def test_dicomweb_command_with_rtstruct_stores_both_objects(tmp_path: Path, bundle_3d: Path, capsys) -> None:
    """`--rtstruct`: an RT Structure Set of the same prediction beside the SEG, each confirmed by QIDO-RS."""
    import io

    from medseg.io.dicom_rtstruct import read_rtstruct
    from medseg.io.dicom_seg import read_dicom_seg

    datasets = ct_series_datasets(n=6, shape=(32, 28))
    write_datasets(datasets, tmp_path / "ct")
    with Orthanc(tmp_path / "orthanc", {}, dicomweb=True) as pacs:
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            pacs.request("POST", "/instances", buffer.getvalue())
        assert run_cli("dicomweb", str(bundle_3d), "--url", pacs.dicomweb_url, "--study",
                       str(datasets[0].StudyInstanceUID), "--rtstruct") == 0
        (outcome,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert outcome["status"] == "segmented" and "RTSTRUCT stored" in outcome["detail"], outcome
        for modality in ("SEG", "RTSTRUCT"):
            (series,) = pacs.find("Series", {"Modality": modality})
            (tmp_path / f"{modality}.dcm").write_bytes(pacs.request("GET", f"/instances/{series['Instances'][0]}/file"))
    seg = read_dicom_seg(tmp_path / "SEG.dcm", tmp_path / "ct").array[0]
    contours = read_rtstruct(tmp_path / "RTSTRUCT.dcm", tmp_path / "ct").array[0]
    np.testing.assert_array_equal(seg > 0, contours > 0)  # one prediction, two encodings
