"""medseg dicom-pull against a real Orthanc: C-FIND the study's series, C-MOVE the CT to the node, the SEG stored
back into the study and found again by C-FIND; a second run skips what a medseg SEG references; a PACS that does
not know the node, and no PACS at all, give clear failures."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pydicom
import pytest

from builders import Orthanc, ct_series_datasets, free_port, run_cli, sr_dataset
from medseg.errors import MedsegError
from medseg.pacs import DicomNode, DicomPuller, parse_destination
from medseg.pacs.segment import short_hash


def _upload(pacs: Orthanc, datasets: list[pydicom.Dataset]) -> None:
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        pacs.request("POST", "/instances", buffer.getvalue())


def _open_to_strangers(pacs: Orthanc) -> None:
    """Let Orthanc answer C-FIND, C-MOVE and C-GET from AE titles it does not know (before it starts): the way to
    reach its C-MOVE refusal of an unknown move destination."""
    config = json.loads(pacs.config.read_text())
    config.update(DicomAlwaysAllowFind=True, DicomAlwaysAllowMove=True, DicomAlwaysAllowGet=True)
    pacs.config.write_text(json.dumps(config))


def test_a_study_is_pulled_segmented_stored_back_and_not_twice(tmp_path: Path, bundle_3d: Path, capsys,
                                                             caplog) -> None:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor

    start = time.monotonic()
    caplog.set_level(logging.INFO)
    datasets = ct_series_datasets(n=8, shape=(32, 28))
    study, ct = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    report = sr_dataset(study)
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", {"medseg": ["MEDSEG", "127.0.0.1", node_port]}) as pacs:
        _upload(pacs, [*datasets, report])
        address = f"ORTHANC@127.0.0.1:{pacs.dicom_port}"
        node = DicomNode({"blobs": Predictor(load_bundle(bundle_3d))}, "MEDSEG", parse_destination(address),
                         idle_timeout=20, outbox=tmp_path / "outbox")
        node.start("127.0.0.1", node_port)
        try:
            outcomes = DicomPuller(node, parse_destination(address), f"127.0.0.1:{node_port}").run_study(study)
        finally:
            node.stop()
        by_series = {o.series: o for o in outcomes}
        assert set(by_series) == {short_hash(ct), short_hash(report.SeriesInstanceUID)}
        segmented, skipped = by_series[short_hash(ct)], by_series[short_hash(report.SeriesInstanceUID)]
        assert (segmented.status, segmented.model) == ("segmented", "blobs"), segmented
        assert "found by C-FIND" in segmented.detail
        assert skipped.status == "skipped" and "not an image series (SR)" in skipped.detail
        (seg_series,) = pacs.find("Series", {"Modality": "SEG"})
        (ct_series,) = pacs.find("Series", {"SeriesInstanceUID": ct})
        assert seg_series["ParentStudy"] == ct_series["ParentStudy"]  # into the same study
        (instance,) = seg_series["Instances"]
        seg = pydicom.dcmread(io.BytesIO(pacs.request("GET", f"/instances/{instance}/file")))
        assert node.sent == [seg.SOPInstanceUID] and node.failed == []
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct

        code = run_cli("dicom-pull", str(bundle_3d), "--pacs", address, "--study", study, "--modality", "CT",
                       "--aet", "MEDSEG", "--host", "127.0.0.1", "--port", str(node_port),
                       "--outbox", str(tmp_path / "outbox"))  # again, by CLI
        assert code == 0
        again = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert [o["status"] for o in again] == ["skipped"] * 3, again  # CT (a SEG references it), SR, the SEG
        assert {o["detail"] for o in again} >= {"a medseg SEG references it already", "not an image series (SEG)"}
        assert len(pacs.find("Series", {"Modality": "SEG"})) == 1  # nothing stored twice
        assert len(pacs.find("Instance", {"Modality": "SEG"})) == 1
    for secret in ("Test^Patient", "MEDSEG-TEST-1", study, ct):  # no patient data in the logs
        assert secret not in caplog.text
    assert time.monotonic() - start < 60


def test_a_pacs_that_does_not_know_the_node_gives_a_failed_outcome_saying_what_to_declare(tmp_path: Path) -> None:
    datasets = ct_series_datasets(n=4)
    study, node_port = str(datasets[0].StudyInstanceUID), free_port()
    pacs = Orthanc(tmp_path / "open", {})  # no DicomModalities: MEDSEG is no known move destination
    _open_to_strangers(pacs)
    with pacs:
        _upload(pacs, [*datasets, sr_dataset(study)])
        address = parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        node = DicomNode({"blobs": object()}, "MEDSEG", address, idle_timeout=1)  # never asked to segment
        node.start("127.0.0.1", node_port)
        try:
            outcomes = DicomPuller(node, address, f"127.0.0.1:{node_port}", timeout=20).run_study(study, "CT")
        finally:
            node.stop()
        assert sorted(o.status for o in outcomes) == ["failed", "skipped"]
        (failed,) = [o for o in outcomes if o.status == "failed"]
        assert failed.series == short_hash(datasets[0].SeriesInstanceUID) and failed.model == "blobs"
        assert f"declare MEDSEG at 127.0.0.1:{node_port} as a DICOM modality in the PACS ORTHANC" in failed.detail
        assert "C-MOVE" in failed.detail and node.sent == []
        assert pacs.find("Series", {"Modality": "SEG"}) == []

    with Orthanc(tmp_path / "closed", {}) as pacs:  # Orthanc's default: queries from unknown AE titles refused
        _upload(pacs, datasets)
        address = parse_destination(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        node = DicomNode({"blobs": object()}, "MEDSEG", address)
        with pytest.raises(MedsegError, match=r"C-FIND .*AE title MEDSEG.*declare MEDSEG at 127\.0\.0\.1:1 as"):
            DicomPuller(node, address, "127.0.0.1:1").run_study(study)


def test_no_pacs_listening_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    address = parse_destination(f"ORTHANC@127.0.0.1:{free_port()}")
    puller = DicomPuller(DicomNode({"blobs": object()}, "MEDSEG", address), address)
    with pytest.raises(MedsegError, match=r"PACS ORTHANC@127\.0\.0\.1:\d+: cannot connect to the PACS .*--pacs"):
        puller.run_study("1.2.3")
    with pytest.raises(MedsegError, match="cannot connect"):
        puller.studies_since("20240101")
    bundle = str(tmp_path / "not-loaded")  # options are checked before any bundle is read
    for args, message in ((["--pacs", "ORTHANC@h:4242"], "no study to segment"),
                          (["--pacs", "ORTHANC@h:4242", "--since", "2024-01-01"], "--since: '2024-01-01' is not a"),
                          (["--pacs", "ORTHANC", "--study", "1.2.3"], "--pacs: 'ORTHANC' is not AET@host:port")):
        with pytest.raises(MedsegError, match=message):
            run_cli("dicom-pull", bundle, *args)
