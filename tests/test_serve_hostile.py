"""The service against a hostile client: bodies refused before they are read (no token, too large, chunked),
cases stopped when their request gives up, bounded jobs, NaN scans, leftover folders of killed services.

The body tests drive the app through ``httpx.ASGITransport``, which pulls a streaming body from its generator
only as the app asks for it, so the bytes the generator yielded are the bytes the service took in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from builders import blob_case
from medseg.io import Image, write_image
from medseg.io.limits import ReadLimits
from medseg.serve import ServeConfig, create_app
from medseg.serve.cases import ClientError, FiniteJSONResponse, finite
from medseg.serve.guard import ENVELOPE, UNAUTHORIZED
from medseg.serve.jobs import JobStore
from medseg.serve.workdir import OWNER_FILE, PREFIX, remove_leftovers

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20
CHUNK = 1 << 16
BOUNDARY = "medsegtestboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
LARGE = (32, 32, 32)


def _nifti(folder: Path, bad: float | None = None, shape=(16, 16, 16)) -> bytes:
    image, _ = blob_case(np.random.default_rng(3), shape)
    array = (image * 100 + 300)[None].astype(np.float32)
    if bad is not None:
        array[0, 3, 4, 5] = bad
    path = folder / "scan.nii.gz"
    write_image(Image.from_array(array, spacing=(1.0, 1.0, 1.5)), path)
    return path.read_bytes()


def _files(data: bytes) -> dict:
    return {"file": ("scan.nii.gz", data, "application/octet-stream")}


HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="scan.nii.gz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n").encode()
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def _multipart(data: bytes) -> bytes:
    return HEAD + data + TAIL


async def _chunked(total: int, sent: list[int]) -> AsyncIterator[bytes]:
    """A multipart upload of ``total`` file bytes in 64 KiB chunks, adding each chunk's size to ``sent[0]``."""
    for piece in (HEAD, *(bytes(CHUNK) for _ in range(total // CHUNK)), TAIL):
        sent[0] += len(piece)
        yield piece


def _in_flight(text: str) -> float:
    return next(float(row.split()[-1]) for row in text.splitlines() if row.startswith("medseg_cases_in_flight "))


def _count(text: str, prefix: str) -> float:
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(prefix))


class Slow(torch.nn.Module):
    """A fold's network that takes ``seconds`` longer per forward pass (a batch of windows): a slow model, for the
    time limits. A :data:`LARGE` scan is 27 windows of the tiny plan's 16-voxel patch, in 14 batches."""

    def __init__(self, inner: torch.nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner(x)


@contextlib.contextmanager
def _slow(app, seconds: float):
    served = next(iter(app.state.models.values()))
    original = served.predictor.models
    served.predictor.models = [Slow(model, seconds) for model in original]
    try:
        yield served.name
    finally:
        served.predictor.models = original


def _wait(predicate, seconds: float = 20.0) -> None:
    """Until ``predicate()`` (a hang, not speed: a loaded machine is slow)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(bundle_3d):
    with TestClient(create_app([bundle_3d], ServeConfig(token=TOKEN, max_upload_bytes=MIB))) as test_client:
        yield test_client


def _model(app) -> str:
    return next(iter(app.state.models))


# ---- bodies refused before they are read --------------------------------------------------------------------


def test_a_request_without_the_token_is_refused_before_its_body_is_read(bundle_3d):
    app = create_app([bundle_3d], ServeConfig(token=TOKEN, max_upload_bytes=MIB))
    url = f"/v1/models/{_model(app)}/segment"

    async def main() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://medseg") as http:
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                         {"Authorization": f"Bearer {TOKEN}x"}):
                sent = [0]
                refused = await http.post(url, content=_chunked(64 * MIB, sent),
                                          headers={"Content-Type": MULTIPART, **auth})
                assert refused.status_code == 401 and refused.json() == {"detail": UNAUTHORIZED}
                assert refused.headers["www-authenticate"] == "Bearer" and refused.headers["x-request-id"]
                assert sent[0] == 0  # not one byte of the 64 MiB was asked for
                assert not list(app.state.root.iterdir())  # no case folder
                assert (await http.get("/health")).status_code == 200
            plain = await http.post("/v1/models/nope/jobs", content=b"x" * 100, headers={"Content-Type": MULTIPART})
            assert plain.status_code == 401  # before routing: an unknown model tells a stranger nothing
            assert (await http.get("/v1/models")).status_code == 401  # the dependency still guards GET routes
            metrics = (await http.get("/metrics")).text
            assert _count(metrics, 'medseg_requests_total{route="/v1/models/{name}/segment",status="401"}') == 4

    asyncio.run(main())


def test_an_upload_over_the_limit_is_cut_off_as_it_arrives(bundle_3d):
    app = create_app([bundle_3d], ServeConfig(token=TOKEN, max_upload_bytes=MIB))
    name = _model(app)

    async def main() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://medseg") as http:
            for path in ("segment", "jobs", "view"):
                sent = [0]
                cut = await http.post(f"/v1/models/{name}/{path}", content=_chunked(64 * MIB, sent),
                                      headers={"Content-Type": MULTIPART, **AUTH})
                assert cut.status_code == 413 and "limit of 1048576 bytes" in cut.json()["detail"]
                assert sent[0] <= MIB + ENVELOPE + CHUNK  # stopped at the limit, not at 64 MiB
                assert not list(app.state.root.iterdir()) and not app.state.jobs.jobs
                assert (await http.get("/health")).json()["in_flight"] == 0
            sent = [0]
            declared = await http.post(f"/v1/models/{name}/segment", content=_chunked(64 * MIB, sent),
                                       headers={"Content-Type": MULTIPART, "Content-Length": str(64 * MIB), **AUTH})
            assert declared.status_code == 413 and sent[0] == 0  # the declared length alone is enough
            metrics = (await http.get("/metrics")).text
            assert _count(metrics, 'medseg_requests_total{route="/v1/models/{name}/segment",status="413"}') == 2

    asyncio.run(main())


def test_the_file_alone_is_held_to_the_limit_and_a_form_holds_one_file(tmp_path, client):
    url = f"/v1/models/{_model(client.app)}/segment"
    over = client.post(url, files=_files(bytes(MIB + 1)), headers=AUTH)  # within the envelope, over the limit
    assert over.status_code == 413 and not list(client.app.state.root.iterdir())
    two = client.post(url, files=[("file", ("a.nii.gz", b"x", "application/octet-stream")),
                                  ("file", ("b.nii.gz", b"y", "application/octet-stream"))], headers=AUTH)
    assert two.status_code == 400 and "Too many files" in two.json()["detail"]
    fields = client.post(url, files=_files(_nifti(tmp_path)), data={f"f{i}": "v" for i in range(20)}, headers=AUTH)
    assert fields.status_code == 400 and "Too many fields" in fields.json()["detail"]
    assert client.get("/health").status_code == 200


# ---- NaN and infinite voxels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_scan_with_nan_or_infinite_voxels_gets_422_in_every_format(tmp_path, client, bad):
    url = f"/v1/models/{_model(client.app)}"
    data = _nifti(tmp_path, bad=bad)
    for query in ("", "?format=json", "?format=json&uncertainty=true"):
        refused = client.post(f"{url}/segment{query}", files=_files(data), headers=AUTH)
        assert refused.status_code == 422, (query, refused.text)
        detail = refused.json()["detail"]
        assert f"holds 1 {'NaN' if np.isnan(bad) else 'infinite'} voxel" in detail
        assert str(client.app.state.root) not in detail and tempfile.gettempdir() not in detail
        assert client.get("/health").status_code == 200
    viewed = client.post(f"{url}/view?uncertainty=true", files=_files(data), headers=AUTH)
    assert viewed.status_code == 422
    job = client.post(f"{url}/jobs?format=json&uncertainty=true", files=_files(data), headers=AUTH).json()
    _wait(lambda: client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] == "failed")
    failed = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    assert failed["error"]["status"] == 422 and failed["error"]["detail"] == detail
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=AUTH).status_code == 422
    assert not list(client.app.state.root.iterdir())


def test_json_answers_never_hold_nan(tmp_path, client, monkeypatch):
    served = client.app.state.models[_model(client.app)]
    real = served.drift.check

    def check(image, labels):
        found = real(image, labels)
        return found | {"channels": [{"channel": 0, "median": float("nan")}], "ratio": np.float32("inf")}

    monkeypatch.setattr(served.drift, "check", check)
    answered = client.post(f"/v1/models/{served.name}/segment?format=json", files=_files(_nifti(tmp_path)),
                           headers=AUTH)
    assert answered.status_code == 200

    def strict(constant: str):
        raise AssertionError(f"{constant} in a JSON answer")

    body = json.loads(answered.text, parse_constant=strict)
    assert body["drift"]["channels"][0]["median"] is None and body["drift"]["ratio"] is None
    assert finite({"a": [float("-inf"), (1.5, np.float64("nan"))], "b": "NaN"}) == {"a": [None, [1.5, None]],
                                                                                     "b": "NaN"}
    assert FiniteJSONResponse({"x": float("nan")}).body == b'{"x":null}'


def test_the_read_limits_are_the_services_to_set(tmp_path, bundle_3d):
    config = ServeConfig(token=TOKEN, read_limits=ReadLimits(max_voxels=1000))
    with TestClient(create_app([bundle_3d], config)) as client:
        refused = client.post(f"/v1/models/{_model(client.app)}/segment", files=_files(_nifti(tmp_path)), headers=AUTH)
        detail = refused.json()["detail"]
        assert refused.status_code == 400 and "4,096 voxels" in detail and "max_voxels" in detail
        assert tempfile.gettempdir() not in detail and not list(client.app.state.root.iterdir())


# ---- time limits ----------------------------------------------------------------------------------------------


def test_a_timed_out_request_stops_its_case_and_frees_the_slot(tmp_path, bundle_3d):
    config = ServeConfig(token=TOKEN, request_timeout_s=0.3, max_concurrency=1, max_queue=0)
    with TestClient(create_app([bundle_3d], config)) as client:
        data = _nifti(tmp_path, shape=LARGE)
        with _slow(client.app, 0.3) as name:
            start = time.monotonic()
            late = client.post(f"/v1/models/{name}/segment", files=_files(data), headers=AUTH)
            assert late.status_code == 504 and "stopped" in late.json()["detail"]
            _wait(lambda: client.get("/health").json()["in_flight"] == 0)
            freed = time.monotonic() - start
        metrics = client.get("/metrics").text
        assert _in_flight(metrics) == 0
        assert _count(metrics, f'medseg_cases_total{{model="{name}",outcome="cancelled"}}') == 1
        assert freed < 2.0  # stopped at the next batch of windows: all 14 batches take 4 s or more
        assert not list(client.app.state.root.iterdir())
        client.app.state.config.request_timeout_s = 120.0  # the model is fast again, the machine may be slow
        admitted = client.post(f"/v1/models/{name}/segment", files=_files(data), headers=AUTH)
        assert admitted.status_code == 200  # the only slot is free again


def test_a_client_that_goes_away_has_its_case_stopped(tmp_path, bundle_3d):
    app = create_app([bundle_3d], ServeConfig(token=TOKEN, request_timeout_s=60, max_concurrency=1, max_queue=0))
    body = _multipart(_nifti(tmp_path, shape=LARGE))
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}  # gone right after its upload

    async def send(message: dict) -> None:
        sent.append(message)

    path = f"/v1/models/{_model(app)}/segment"
    headers = {"host": "medseg", "content-type": MULTIPART, "content-length": str(len(body)), **AUTH}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("medseg", 80)}

    async def main() -> float:
        async with app.router.lifespan_context(app):
            start = time.monotonic()
            await app(scope, receive, send)
            while app.state.admission.pending:
                assert time.monotonic() - start < 20
                await asyncio.sleep(0.02)
            seconds = time.monotonic() - start
            assert not list(app.state.root.iterdir())  # the case's folder went with it
            return seconds

    with _slow(app, 0.3):
        seconds = asyncio.run(main())
    assert sent[0]["status"] == 499 and seconds < 2.0


def test_jobs_have_a_time_limit_a_cap_and_are_swept_on_a_timer(tmp_path, bundle_3d):
    config = ServeConfig(token=TOKEN, job_timeout_s=0.3, max_jobs=1, job_ttl_s=1.0, max_queue=2)
    with TestClient(create_app([bundle_3d], config)) as client:
        data = _nifti(tmp_path, shape=LARGE)
        with _slow(client.app, 0.5) as name:
            first = client.post(f"/v1/models/{name}/jobs", files=_files(data), headers=AUTH)
            assert first.status_code == 202
            full = client.post(f"/v1/models/{name}/jobs", files=_files(data), headers=AUTH)
            assert full.status_code == 503 and full.headers["retry-after"] == "5" and "jobs" in full.json()["detail"]
            job_id = first.json()["id"]
            _wait(lambda: client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "failed")
        failed = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["error"]
        assert failed == {"status": 504, "detail": "segmentation took longer than 0.3 s and was stopped"}
        assert client.get(f"/v1/jobs/{job_id}/result", headers=AUTH).status_code == 504
        assert client.get("/health").json()["in_flight"] == 0 and not list(client.app.state.root.iterdir())
        _wait(lambda: client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404, 10)  # no new job came
        assert len(client.app.state.jobs) == 0


def test_the_job_store_makes_room_by_dropping_the_oldest_finished_job():
    store = JobStore(ttl_s=100.0, max_jobs=2, retry_after_s=7)
    old, newer, third, fourth = (store.new("m", want_json=False) for _ in range(4))
    store.add(old)
    store.add(newer)
    old.finished, newer.finished = 10.0, 20.0
    store.add(third)
    assert list(store.jobs) == [newer.id, third.id]  # the oldest finished one went
    newer.finished = None  # both unfinished now: nothing may go
    with pytest.raises(ClientError) as caught:
        store.add(fourth)
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "7"} and len(store) == 2


# ---- folders left by a killed service --------------------------------------------------------------------------


def _leftover(parent: Path, name: str, pid: int | None, host: str | None = None) -> Path:
    folder = parent / name
    (folder / "cases" / "case-x").mkdir(parents=True)
    (folder / "cases" / "case-x" / "upload.nii.gz").write_bytes(b"patient data")
    if pid is not None:
        (folder / OWNER_FILE).write_text(f"{pid}\n{host or socket.gethostname()}\n")
    return folder


def test_start_up_removes_only_the_folders_of_services_that_no_longer_run(tmp_path, bundle_3d, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = finished.pid
    gone = _leftover(tmp_path, f"{PREFIX}killed", dead)
    kept = [_leftover(tmp_path, f"{PREFIX}live", os.getppid()),  # a running process
            _leftover(tmp_path, f"{PREFIX}nomarker", None),
            _leftover(tmp_path, f"{PREFIX}otherhost", dead, host="elsewhere"),
            _leftover(tmp_path, "other-tool-killed", dead)]
    target = _leftover(tmp_path, "target", dead)
    (tmp_path / f"{PREFIX}link").symlink_to(target)  # a link is never followed
    linked_marker = _leftover(tmp_path, f"{PREFIX}linkedmarker", None)
    (linked_marker / OWNER_FILE).symlink_to(target / OWNER_FILE)
    kept += [target, linked_marker]

    with monkeypatch.context() as other_user:
        other_user.setattr(os, "getuid", lambda: os.geteuid() + 1)  # none of these folders is theirs
        assert remove_leftovers() == []

    with TestClient(create_app([bundle_3d], ServeConfig(token=TOKEN))) as client:
        home = client.app.state.home
        assert not gone.exists() and all(folder.exists() for folder in kept)
        assert home.parent == tmp_path and home.name.startswith(PREFIX)
        assert (home / OWNER_FILE).read_text().split() == [str(os.getpid()), socket.gethostname()]
        assert client.app.state.root.parent == home
        assert remove_leftovers() == []  # a running service's folder is left alone
        assert client.get("/health").status_code == 200
    assert not home.exists()
