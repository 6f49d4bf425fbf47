"""The HTTP service with a real tiny bundle: every endpoint, auth, limits, bad uploads, concurrency, metrics."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import zipfile
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from builders import blob_case, write_series
from medseg.bundle import DRIFT_FILE, RUN_FINGERPRINT_FILE, load_bundle, read_drift_reference
from medseg.errors import MedsegError
from medseg.io import Image, read_image, write_image
from medseg.serve import ServeConfig, check_bind, create_app, load_token
from medseg.serve import cases as serve_cases
from medseg.serve.admission import Admission
from medseg.serve.cases import CaseResult, ClientError, mask_suffix, upload_suffix
from medseg.serve.config import is_loopback
from medseg.serve.drift import DriftReference
from medseg.serve.jobs import Job, JobStore

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(bundle_3d):
    with TestClient(create_app([bundle_3d], ServeConfig(token=TOKEN))) as test_client:
        yield test_client


def _nifti(tmp_path: Path, offset: float = 300.0, channels: int = 1, shape=(16, 16, 16)) -> bytes:
    image, _ = blob_case(np.random.default_rng(2), shape)
    array = np.stack([image * 100 + offset] * channels)
    path = tmp_path / f"scan{channels}.nii.gz"
    write_image(Image.from_array(array, spacing=(1.0, 1.0, 1.5)), path)
    return path.read_bytes()


def _files(data: bytes, name: str = "scan.nii.gz") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def _model(client) -> str:
    return client.get("/v1/models", headers=AUTH).json()[0]["name"]


def test_health_models_docs_and_auth(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    models = client.get("/v1/models", headers=AUTH).json()
    (model,) = models
    assert model["name"] == "Blobs3D"  # the folder is called "bundle": the plan's data set name is used
    assert model["labels"] == {"0": "background", "1": "small", "2": "bright"}
    assert model["channels"]["count"] == 1 and model["dimension"] == 3 and model["version"]
    assert "val_dice" in model["training"]["folds"]["0"]
    assert model["drift_reference"] == DRIFT_FILE  # the bundle's own reference, not the run folder's fingerprint
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{name}/segment", "/v1/models/{name}/jobs", "/v1/jobs/{job_id}/result"} <= set(paths)
    assert client.post(f"/v1/models/{model['name']}/segment", files=_files(b"x")).status_code == 401
    assert client.get("/v1/models/nope", headers=AUTH).status_code == 404


def test_segment_returns_a_mask_on_the_input_grid_or_json(tmp_path, client):
    name = _model(client)
    data = _nifti(tmp_path)
    response = client.post(f"/v1/models/{name}/segment", files=_files(data), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["x-medseg-drift"] in ("true", "false")
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    mask, source = read_image(tmp_path / "mask.nii.gz"), read_image(tmp_path / "scan1.nii.gz")
    assert mask.shape == source.shape and mask.same_geometry(source)
    assert set(np.unique(mask.array)) <= {0, 1, 2}
    body = client.post(f"/v1/models/{name}/segment?format=json&uncertainty=true", files=_files(data),
                       headers=AUTH).json()
    assert set(body["volumes"]) == {"small", "bright"} and body["volume_unit"] == "ml"
    for name_, volume in body["volumes"].items():  # each label's lesions, as predictions.json lists them
        listed = body["components"][name_]
        assert listed["count"] == len(listed["components"]) and listed["count"] <= 100
        assert sum(c["volume"] for c in listed["components"]) == pytest.approx(volume)
    assert body["shape"] == [16, 16, 16] and body["drift"]["reference"] == DRIFT_FILE
    assert 0.0 <= body["uncertainty"]["mean"] <= 1.0 and "fraction_above_0_5" in body["uncertainty"]
    assert not list(client.app.state.root.iterdir())  # the upload's private folder is gone


def test_dicom_zip_gives_nifti_and_bad_zips_are_named(tmp_path, client):
    name = _model(client)
    write_series(tmp_path / "series", n=4)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "series").iterdir()):
            z.write(path, f"series/{path.name}")
    response = client.post(f"/v1/models/{name}/segment", files=_files(archive.getvalue(), "ct.zip"), headers=AUTH)
    assert response.status_code == 200, response.text
    assert 'filename="mask.nii.gz"' in response.headers["content-disposition"]
    (tmp_path / "dicom_mask.nii.gz").write_bytes(response.content)
    assert read_image(tmp_path / "dicom_mask.nii.gz").shape == (4, 6, 5)

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../etc/evil.dcm", b"DICM")
    response = client.post(f"/v1/models/{name}/segment", files=_files(evil.getvalue(), "evil.zip"), headers=AUTH)
    assert response.status_code == 400 and "unsafe path" in response.json()["detail"]

    write_series(tmp_path / "two" / "a", n=2, series_uid="1.2.3.100")
    write_series(tmp_path / "two" / "b", n=2, series_uid="1.2.3.200")
    both = io.BytesIO()
    with zipfile.ZipFile(both, "w") as z:
        for path in sorted((tmp_path / "two").rglob("*.dcm")):
            z.write(path, path.relative_to(tmp_path / "two").as_posix())
    response = client.post(f"/v1/models/{name}/segment", files=_files(both.getvalue(), "two.zip"), headers=AUTH)
    detail = response.json()["detail"]
    assert response.status_code == 400 and "1.2.3.100" in detail and "1.2.3.200" in detail
    assert str(client.app.state.root) not in detail  # no server paths in answers


def test_bad_uploads_are_named(tmp_path, client):
    name = _model(client)
    url = f"/v1/models/{name}/segment"
    corrupt = client.post(url, files=_files(b"not a nifti at all" * 10), headers=AUTH)
    assert corrupt.status_code == 400 and "cannot read" in corrupt.json()["detail"]
    two_channels = client.post(url, files=_files(_nifti(tmp_path, channels=2)), headers=AUTH)
    assert two_channels.status_code == 422 and "2 channel(s)" in two_channels.json()["detail"]
    png = tmp_path / "x.png"
    write_image(Image.from_array(np.zeros((1, 8, 8), np.uint8)), png)
    flat = client.post(url, files=_files(png.read_bytes(), "x.png"), headers=AUTH)
    assert flat.status_code == 422 and "3D" in flat.json()["detail"]
    assert client.post(url, files=_files(b"abc", "notes.txt"), headers=AUTH).status_code == 415
    assert client.post(url, files=_files(b"", "empty.nii.gz"), headers=AUTH).status_code == 400
    assert client.post("/v1/models/nope/segment", files=_files(b"abc"), headers=AUTH).status_code == 404


def test_jobs_run_in_the_background(tmp_path, client):
    name = _model(client)
    submitted = client.post(f"/v1/models/{name}/jobs", files=_files(_nifti(tmp_path)), headers=AUTH)
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
    deadline = time.time() + 300  # a hang, not speed: a loaded CI machine is slow
    while (status := client.get(f"/v1/jobs/{job_id}", headers=AUTH).json())["status"] not in ("done", "failed"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert status["status"] == "done" and set(status["result"]["volumes"]) == {"small", "bright"}
    result = client.get(f"/v1/jobs/{job_id}/result", headers=AUTH)
    assert result.status_code == 200 and result.content[:2] == b"\x1f\x8b"  # gzip: a .nii.gz mask
    assert client.get(f"/v1/jobs/{job_id}/result?format=json", headers=AUTH).json()["shape"] == [16, 16, 16]
    assert client.get("/v1/jobs/unknown", headers=AUTH).status_code == 404


def _drift_count(client, name: str) -> float:
    line = f'medseg_input_drift_total{{model="{name}"}} '
    return next((float(row[len(line):]) for row in client.get("/metrics").text.splitlines()
                 if row.startswith(line)), 0.0)


def test_drift_is_flagged_and_counted_in_metrics(tmp_path, client):
    name = _model(client)
    before = _drift_count(client, name)
    body = client.post(f"/v1/models/{name}/segment?format=json", files=_files(_nifti(tmp_path, offset=1e5)),
                       headers=AUTH).json()
    assert body["drift"]["flag"] is True and "outside the training range" in body["drift"]["reasons"][0]
    text = client.get("/metrics").text
    for metric in ("medseg_requests_total", "medseg_request_seconds_bucket", "medseg_queue_depth",
                   "medseg_model_load_seconds", "medseg_input_drift_total"):
        assert metric in text
    assert _drift_count(client, name) == before + 1
    assert 'route="/v1/models/{name}/segment",status="200"' in text


def test_size_limit_queue_limit_and_timeout(tmp_path, bundle_3d, monkeypatch):
    config = ServeConfig(token=TOKEN, max_upload_bytes=2000, max_concurrency=1, max_queue=0, request_timeout_s=0.5)
    gate = threading.Event()
    real = serve_cases.run_case

    def slow(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(serve_cases, "run_case", slow)
    with TestClient(create_app([bundle_3d], config)) as client:
        name = _model(client)
        url = f"/v1/models/{name}/segment"
        big = client.post(url, files=_files(b"\0" * 5000), headers=AUTH)
        assert big.status_code == 413 and "limit" in big.json()["detail"]
        small = _nifti(tmp_path, shape=(8, 8, 8))
        assert len(small) < 2000
        job = client.post(f"/v1/models/{name}/jobs", files=_files(small), headers=AUTH)
        assert job.status_code == 202  # takes the only slot, blocked on the gate
        busy = client.post(url, files=_files(small), headers=AUTH)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "medseg_queue_depth" in client.get("/metrics").text
        gate.set()
        deadline = time.time() + 300  # a hang, not speed: a loaded CI machine is slow
        while client.get(f"/v1/jobs/{job.json()['id']}", headers=AUTH).json()["status"] != "done":
            assert time.time() < deadline
            time.sleep(0.05)
        gate.clear()
        timed_out = client.post(url, files=_files(small), headers=AUTH)
        assert timed_out.status_code == 504
        gate.set()


def test_no_token_means_loopback_only(tmp_path, monkeypatch):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "token")
    with pytest.raises(MedsegError, match="without an API token"):
        check_bind("0.0.0.0", None)
    monkeypatch.setenv("MEDSEG_API_TOKEN", "from-env")
    assert load_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert load_token(tmp_path / "token") == "from-file"
    monkeypatch.delenv("MEDSEG_API_TOKEN")
    assert load_token() is None


# ---- the bundle's drift reference ------------------------------------------------------------------------------


def test_a_copied_bundle_still_flags_drift(tmp_path, bundle_3d):
    copy = tmp_path / "elsewhere" / "hippo-model"
    shutil.copytree(bundle_3d, copy)
    assert not (copy.parent / RUN_FINGERPRINT_FILE).exists()  # nothing of the run folder came along
    with TestClient(create_app([copy], ServeConfig(token=TOKEN))) as client:
        (model,) = client.get("/v1/models", headers=AUTH).json()
        assert model["name"] == "hippo-model" and model["drift_reference"] == DRIFT_FILE
        url = f"/v1/models/{model['name']}/segment?format=json"
        drifted = client.post(url, files=_files(_nifti(tmp_path, offset=1e5)), headers=AUTH).json()["drift"]
        assert drifted["flag"] is True and drifted["reference"] == DRIFT_FILE
        assert "outside the training range" in drifted["reasons"][0]
        assert drifted["channels"][0]["expected"]  # compared with the training foreground, not the plan


def test_drift_reference_summarises_the_run_fingerprint_and_old_bundles_fall_back_to_it(tmp_path, bundle_3d):
    fingerprint = json.loads((bundle_3d.parent / RUN_FINGERPRINT_FILE).read_text())
    stored = json.loads((bundle_3d / DRIFT_FILE).read_text())
    spacings = np.asarray(fingerprint["spacings"])
    assert stored["foreground_percentiles"] == [[c["percentile_00_5"], c["percentile_99_5"]]
                                                for c in fingerprint["intensities"]]
    assert stored["spacing_min"] == spacings.min(0).tolist() and stored["spacing_max"] == spacings.max(0).tolist()
    assert stored["cases"] == len(spacings) and "shapes" not in stored  # a summary, no per-case list
    new = DriftReference.from_bundle(load_bundle(bundle_3d))

    old_run = tmp_path / "old_run"  # a bundle written before drift_reference.json, still in its run folder
    shutil.copytree(bundle_3d, old_run / "bundle")
    (old_run / "bundle" / DRIFT_FILE).unlink()
    shutil.copyfile(bundle_3d.parent / RUN_FINGERPRINT_FILE, old_run / RUN_FINGERPRINT_FILE)
    old = DriftReference.from_bundle(load_bundle(old_run / "bundle"))
    assert old.source == RUN_FINGERPRINT_FILE and new.source == DRIFT_FILE
    assert (old.intervals, old.spacing_low, old.spacing_high) == (new.intervals, new.spacing_low, new.spacing_high)

    (old_run / RUN_FINGERPRINT_FILE).unlink()  # an old bundle copied away: the plan's figures, as before
    assert read_drift_reference(old_run / "bundle") is None
    bare = DriftReference.from_bundle(load_bundle(old_run / "bundle"))
    assert bare.source == "none" and bare.intervals == [None]  # a z-score plan has no intensity window


# ---- the parts, alone ------------------------------------------------------------------------------------------


def test_admission_slots_bound_running_plus_waiting():
    slots = Admission(concurrency=2, queue=1)
    assert slots.capacity == 3
    assert [slots.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert slots.pending == 3 and slots.waiting == 1
    slots.release()
    assert slots.waiting == 0 and slots.try_acquire() and not slots.try_acquire()


def _future(result=None, error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


def test_job_store_records_outcomes_and_prunes_only_old_finished_jobs():
    store = JobStore(ttl_s=10.0)
    done, failed, crashed, running = (store.new("m", want_json=False) for _ in range(4))
    assert len({done.id, failed.id, crashed.id, running.id}) == 4 and done.status == "queued"
    for job in (done, failed, crashed, running):
        store.add(job)
    result = CaseResult({"volumes": {"a": 1.0}}, b"mask", ".nii.gz")
    done.finish(_future(result))
    failed.finish(_future(error=ClientError(422, "3D expected")))
    crashed.finish(_future(error=RuntimeError("boom")))
    running.start()
    assert done.describe()["status"] == "done" and done.describe()["result"] == {"volumes": {"a": 1.0}}
    assert failed.describe()["error"] == {"status": 422, "detail": "3D expected"}
    assert crashed.error == {"status": 500, "detail": "RuntimeError"}  # the type only: no message, no data
    assert running.status == "running" and "result" not in running.describe()
    store.prune(now=done.finished + 5)
    assert len(store) == 4
    store.prune(now=done.finished + 11)
    assert list(store.jobs) == [running.id] and store.get(done.id) is None and running.id in store
    assert isinstance(store.get(running.id), Job)


def test_upload_and_mask_formats_and_loopback():
    assert upload_suffix("scan.NII.GZ") == ".nii.gz" and upload_suffix("series.zip") == ".zip"
    for name, status in (("scan.nrrd", 415), ("notes.txt", 415), ("noext", 400), (None, 400)):
        with pytest.raises(ClientError) as caught:
            upload_suffix(name)
        assert caught.value.status == status
    assert [mask_suffix(s) for s in (".zip", ".jpg", ".jpeg", ".png", ".nii")] == \
        [".nii.gz", ".png", ".png", ".png", ".nii"]
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
