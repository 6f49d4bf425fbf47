"""The segmentation service: models loaded once, uploads in, masks or volumes out.

    app = create_app(["runs/hippo/bundle"], ServeConfig(token="..."))     # an ASGI app (uvicorn, TestClient)

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/models/{name}/segment`` (multipart ``file``; the
mask in the input's format, NIfTI for DICOM, or JSON with ``?format=json``), ``POST /v1/models/{name}/jobs`` +
``GET /v1/jobs/{id}`` + ``GET /v1/jobs/{id}/result``, ``GET /metrics`` (Prometheus), OpenAPI at ``/docs``.
The web viewer: ``GET /`` (files in ``static/``), fed by ``POST /v1/models/{name}/view`` (the segmentation plus a
display copy of scan, labels and uncertainty; see :mod:`medseg.serve.viewer`) and ``GET /v1/views/{id}/mask``.
``GET /v1/examples`` lists the scans in the admin's ``--examples`` folder; ``segment``, ``jobs`` and ``view`` take
``?example=NAME`` instead of an upload (a name from that listing, never a path).

Safety: ``/v1`` needs ``Authorization: Bearer <token>`` when a token is set (compared with
``hmac.compare_digest``); uploads over ``max_upload_bytes`` get 413; at most ``max_concurrency`` cases run and
``max_queue`` wait, beyond that 503 with ``Retry-After``; a case over ``request_timeout_s`` gets 504. Each upload
lives in its own private (0700) temporary folder, deleted once answered. Logs carry request ids, models, sizes,
status and timings, never file names or image content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from medseg import __version__
from medseg.bundle import Bundle, load_bundle
from medseg.errors import MedsegError
from medseg.infer.predict import LOSSY_SUFFIXES, PredictOptions, Predictor
from medseg.io import image_suffix, read_image, write_image
from medseg.serve.drift import DriftReference
from medseg.serve.viewer import ViewCache, examples_folder, list_examples, view_payload

log = logging.getLogger("medseg.serve")

UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".zip")  # no NRRD/MHA: their
# headers may name other files to read (detached data), which an upload must not be able to do
MEDIA_TYPES = {".nii.gz": "application/gzip", ".nii": "application/octet-stream", ".png": "image/png",
               ".tif": "image/tiff", ".tiff": "image/tiff"}
CHUNK = 1 << 20
STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PRIVATE = {"Cache-Control": "no-store"}  # answers holding patient data


@dataclass
class ServeConfig:
    token: str | None = None  # bearer token for /v1; None: no auth (loopback only, see check_bind)
    max_upload_bytes: int = 256 * 2**20
    request_timeout_s: float = 300.0
    max_concurrency: int = 1  # cases segmented at once
    max_queue: int = 4  # cases waiting; more get 503
    retry_after_s: int = 5
    job_ttl_s: float = 3600.0  # finished jobs (and their result files) are kept this long
    backend: str = "torch"
    tta: bool | None = None
    examples: str | Path | None = None  # a folder of scans the viewer offers by name (``--examples``)
    view_ttl_s: float = 900.0  # a viewer's mask stays downloadable this long
    view_cache_size: int = 16  # masks kept for download at most (oldest dropped first)


def load_token(token_file: str | Path | None = None) -> str | None:
    """The API token from ``token_file`` (first line) or ``MEDSEG_API_TOKEN``; None when neither is set."""
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise MedsegError("does not exist", path, "give a file holding the API token")
        token = path.read_text().strip().splitlines()[0].strip() if path.read_text().strip() else ""
        if not token:
            raise MedsegError("is empty", path, "write the API token into it")
        return token
    return os.environ.get("MEDSEG_API_TOKEN") or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve without a token on anything but a loopback address."""
    if token is None and not is_loopback(host):
        raise MedsegError(f"will not listen on {host} without an API token: anyone who can reach it could upload "
                          "scans", "--host", "set MEDSEG_API_TOKEN or --token-file, or use --host 127.0.0.1")


class ClientError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Served:
    name: str
    bundle: Bundle
    predictor: Predictor
    drift: DriftReference
    load_seconds: float

    def describe(self) -> dict[str, Any]:
        plan, metrics = self.bundle.plan, self.bundle.metrics
        folds = {k: {key: v.get(key) for key in ("val_dice", "val_dice_mean", "cases", "steps", "elapsed_s")
                     if key in v} for k, v in metrics.get("folds", {}).items()}
        return {"name": self.name, "version": plan.medseg_version, "dataset": plan.dataset_name,
                "labels": {str(k): v for k, v in plan.labels.items()},
                "channels": {"count": plan.channels, "names": {str(k): v for k, v in plan.channel_names.items()}},
                "dimension": plan.data_dim, "model": plan.model, "folds": self.bundle.folds,
                "backend": self.predictor.options.backend, "tta": self.predictor.tta,
                "training": {"folds": folds, "inference": metrics.get("inference", {})},
                "drift_reference": self.drift.source}


@dataclass
class CaseResult:
    body: dict[str, Any]  # the JSON answer
    mask: bytes
    suffix: str
    view: dict[str, Any] | None = None  # the viewer's display copy (``/view`` only)


@dataclass
class Job:
    id: str
    model: str
    want_json: bool
    created: float = field(default_factory=time.time)
    status: str = "queued"  # queued, running, done, failed
    result: CaseResult | None = None
    error: dict[str, Any] | None = None
    finished: float | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "model": self.model, "status": self.status,
                               "created": round(self.created, 3)}
        if self.result is not None:
            out["result"] = self.result.body
        if self.error is not None:
            out["error"] = self.error
        return out


class Admission:
    """Bounded work: ``running + waiting <= capacity``; a slot is freed when its case ends (not when its request
    gives up), so a timed-out case still counts until it really stops."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency, self.capacity = concurrency, concurrency + queue
        self.pending = 0
        self.lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self.lock:
            if self.pending >= self.capacity:
                return False
            self.pending += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.pending -= 1

    @property
    def waiting(self) -> int:
        return max(0, self.pending - self.concurrency)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("medseg_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("medseg_request_seconds", "HTTP request latency", ["route"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.queue = Gauge("medseg_queue_depth", "Cases waiting for a worker", registry=r)
        self.running = Gauge("medseg_cases_in_flight", "Cases admitted (running or waiting)", registry=r)
        self.load = Gauge("medseg_model_load_seconds", "Seconds to load each model", ["model"], registry=r)
        self.drift = Counter("medseg_input_drift", "Inputs flagged as unlike the training data", ["model"],
                             registry=r)
        self.cases = Counter("medseg_cases", "Cases segmented", ["model", "outcome"], registry=r)


def _model_name(bundle: Bundle, taken: set[str]) -> str:
    name = bundle.folder.name
    if name in ("bundle", "") or name in taken:
        name = bundle.plan.dataset_name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def _upload_suffix(filename: str | None) -> str:
    suffix = image_suffix(filename or "")
    if suffix not in UPLOAD_SUFFIXES:
        raise ClientError(415 if suffix else 400, f"upload '{suffix or '(no extension)'}' is not a supported format; "
                          f"send one of {', '.join(UPLOAD_SUFFIXES)} (a DICOM series as a .zip)")
    return suffix


def _mask_suffix(suffix: str) -> str:
    if suffix == ".zip":
        return ".nii.gz"
    return ".png" if suffix in LOSSY_SUFFIXES else suffix


def _error_text(error: MedsegError) -> str:
    """The error without the server-side temporary path."""
    return error.what + (f" ({error.fix})" if error.fix else "")


def _uncertainty_summary(uncertainty: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    foreground = labels > 0
    return {"mean": round(float(uncertainty.mean()), 5),
            "mean_in_foreground": round(float(uncertainty[foreground].mean()), 5) if foreground.any() else 0.0,
            "fraction_above_0_5": round(float((uncertainty > 0.5).mean()), 6)}


def run_case(served: Served, upload: Path, suffix: str, uncertainty: bool, view: bool = False) -> CaseResult:
    """Read, check, segment and encode one uploaded scan (runs in a worker thread); with ``view``, also the
    viewer's display copy of scan, labels and uncertainty."""
    try:
        image = read_image(upload)
    except MedsegError as error:
        raise ClientError(400, f"cannot read the upload: {_error_text(error)}") from None
    predictor = served.predictor
    try:
        predictor.check_input(image)
    except MedsegError as error:
        raise ClientError(422, _error_text(error)) from None
    if uncertainty and not predictor.options.uncertainty:
        predictor = _with_options(predictor, uncertainty=True)
    result = predictor.predict(image)
    labels = result.labels.array[0]
    drift = served.drift.check(image, labels)
    body: dict[str, Any] = {"model": served.name, "volumes": result.volumes,
                            "volume_unit": "ml" if labels.ndim == 3 else "mm2",
                            "shape": list(labels.shape), "spacing": list(result.labels.spacing),
                            "seconds": round(result.seconds, 3), "drift": drift}
    if result.uncertainty is not None:
        body["uncertainty"] = _uncertainty_summary(result.uncertainty.array[0], labels)
    mask_suffix = _mask_suffix(suffix)
    out = write_image(result.labels, upload.parent / f"mask{mask_suffix}")
    shown = None
    if view:
        plan = served.bundle.plan
        modality = "ct" if any(n.scheme == "ct" for n in plan.normalization) else "other"
        shown = view_payload(image, labels, None if result.uncertainty is None else result.uncertainty.array[0],
                             plan.labels, modality)
    return CaseResult(body, out.read_bytes(), mask_suffix, shown)


def _with_options(predictor: Predictor, **changes: Any) -> Predictor:
    """A shallow copy sharing the loaded models, with other options (per request)."""
    import copy

    other = copy.copy(predictor)
    other.options = dataclasses.replace(predictor.options, **changes)
    return other


def create_app(bundles: Sequence[str | Path], config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``bundles``; models are loaded here, once."""
    config = config or ServeConfig()
    metrics = Metrics()
    models: dict[str, Served] = {}
    for folder in bundles:
        start = time.perf_counter()
        bundle = load_bundle(folder)
        predictor = Predictor(bundle, PredictOptions(backend=config.backend, tta=config.tta))
        seconds = time.perf_counter() - start
        name = _model_name(bundle, set(models))
        models[name] = Served(name, bundle, predictor, DriftReference.from_bundle(bundle), seconds)
        metrics.load.labels(name).set(seconds)
    admission = Admission(config.max_concurrency, config.max_queue)
    executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="medseg-case")
    jobs: dict[str, Job] = {}
    examples = examples_folder(config.examples)
    views = ViewCache(config.view_ttl_s, config.view_cache_size)
    root = Path(tempfile.mkdtemp(prefix="medseg-serve-"))  # 0700: only this user reads uploads

    async def sweep_views() -> None:  # expired masks go even when no one asks for anything
        while True:
            await asyncio.sleep(min(30.0, max(config.view_ttl_s, 0.1)))
            views.prune()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_views())
        yield
        sweeper.cancel()
        views.clear()
        executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="medseg", version=__version__, lifespan=lifespan,
                  description="Medical image segmentation service: upload a scan, get its mask.")
    app.state.models, app.state.jobs, app.state.config, app.state.metrics = models, jobs, config, metrics
    app.state.admission, app.state.root, app.state.views = admission, root, views
    bearer = HTTPBearer(auto_error=False)

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def get_model(name: str) -> Served:
        if name not in models:
            raise HTTPException(404, f"no model '{name}' (models: {', '.join(models)})")
        return models[name]

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > config.max_upload_bytes + CHUNK:
            response: Response = JSONResponse({"detail": _too_large()}, status_code=413)
        else:
            response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        seconds = time.perf_counter() - start
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        response.headers["X-Request-ID"] = request_id
        log.info("request %s %s %s -> %d in %.3f s", request_id, request.method, route, response.status_code,
                 seconds)
        return response

    def _too_large() -> str:
        return f"upload larger than the limit of {config.max_upload_bytes} bytes"

    async def save_upload(file: UploadFile) -> tuple[Path, str]:
        suffix = _upload_suffix(file.filename)
        work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
        path = work / f"upload{suffix}"
        size = 0
        try:
            with open(path, "wb") as handle:
                while chunk := await file.read(CHUNK):
                    size += len(chunk)
                    if size > config.max_upload_bytes:
                        raise ClientError(413, _too_large())
                    handle.write(chunk)
            if size == 0:
                raise ClientError(400, "the upload is empty")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return path, suffix

    async def take_input(file: UploadFile | None, example: str | None) -> tuple[Path, str]:
        """The scan to segment, in its own private folder: the upload, or a copy of the named example."""
        if (file is None) == (example is None):
            raise ClientError(400, "send either a scan (multipart 'file') or '?example=NAME' (see /v1/examples)")
        if file is not None:
            return await save_upload(file)
        found = list_examples(examples, UPLOAD_SUFFIXES).get(str(example))
        if found is None:
            raise ClientError(404, "no such example: choose a name listed by /v1/examples")
        suffix = image_suffix(found.name)
        work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
        try:
            await asyncio.to_thread(shutil.copyfile, found, work / f"upload{suffix}")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return work / f"upload{suffix}", suffix

    def admit(served: Served, path: Path, suffix: str, uncertainty: bool,
              on_start: Callable[[], None] | None = None, view: bool = False) -> Future:
        if not admission.try_acquire():
            shutil.rmtree(path.parent, ignore_errors=True)
            raise HTTPException(503, "busy: too many scans queued, retry later",
                                headers={"Retry-After": str(config.retry_after_s)})
        metrics.running.set(admission.pending)
        metrics.queue.set(admission.waiting)

        def work() -> CaseResult:
            metrics.queue.set(admission.waiting)
            if on_start is not None:
                on_start()
            try:
                result = run_case(served, path, suffix, uncertainty, **({"view": True} if view else {}))
            except ClientError:
                metrics.cases.labels(served.name, "rejected").inc()
                raise
            except Exception:
                metrics.cases.labels(served.name, "error").inc()
                raise
            metrics.cases.labels(served.name, "ok").inc()
            if result.body["drift"]["flag"]:
                metrics.drift.labels(served.name).inc()
            return result

        future = executor.submit(work)

        def done(_: Future) -> None:
            admission.release()
            metrics.running.set(admission.pending)
            metrics.queue.set(admission.waiting)
            shutil.rmtree(path.parent, ignore_errors=True)

        future.add_done_callback(done)
        return future

    def answer(result: CaseResult, want_json: bool) -> Response:
        headers = {"X-Medseg-Drift": str(result.body["drift"]["flag"]).lower(),
                   "X-Medseg-Volumes": json.dumps(result.body["volumes"])}
        if want_json:
            return JSONResponse(result.body, headers=headers)
        return Response(result.mask, media_type=MEDIA_TYPES.get(result.suffix, "application/octet-stream"),
                        headers=headers | {"Content-Disposition": f'attachment; filename="mask{result.suffix}"'})

    def client_error(error: ClientError) -> HTTPException:
        return HTTPException(error.status, error.detail)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness and readiness: the models loaded and the work admitted."""
        return {"status": "ok", "version": __version__, "models": list(models), "in_flight": admission.pending,
                "capacity": admission.capacity}

    @app.get("/v1/models", tags=["models"], dependencies=[Depends(authorize)])
    def list_models() -> list[dict[str, Any]]:
        """Each model: name, version, labels, channels, dimension and its training figures."""
        return [served.describe() for served in models.values()]

    @app.post("/v1/models/{name}/segment", tags=["segment"], dependencies=[Depends(authorize)],
              responses={200: {"content": {"application/gzip": {}, "image/png": {}, "application/json": {}},
                               "description": "the mask (the input's format; NIfTI for DICOM) or JSON"}})
    async def segment(name: str, file: UploadFile | None = File(None, description="NIfTI, PNG/JPEG/TIFF, or a "
                                                                                  ".zip of one DICOM series"),
                      format: str = Query("file", pattern="^(file|json)$", description="file: the mask; json: "
                                          "volumes per label and the drift check"),
                      uncertainty: bool = Query(False, description="add an uncertainty summary (JSON)"),
                      example: str | None = Query(None, description="segment this file of /v1/examples instead "
                                                                    "of an upload")) -> Response:
        """Segment one scan and answer with its mask, or with JSON volumes (``?format=json``)."""
        return answer(await segment_now(name, file, example, uncertainty), format == "json")

    async def segment_now(name: str, file: UploadFile | None, example: str | None, uncertainty: bool,
                          view: bool = False) -> CaseResult:
        served = get_model(name)
        try:
            path, suffix = await take_input(file, example)
        except ClientError as error:
            raise client_error(error) from None
        future = admit(served, path, suffix, uncertainty, view=view)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"segmentation took longer than {config.request_timeout_s:g} s") from None
        except ClientError as error:
            raise client_error(error) from None

    @app.post("/v1/models/{name}/view", tags=["viewer"], dependencies=[Depends(authorize)])
    async def view(name: str, file: UploadFile | None = File(None, description="as for segment"),
                   uncertainty: bool = Query(False, description="add the uncertainty map"),
                   example: str | None = Query(None, description="a file of /v1/examples instead of an upload")
                   ) -> JSONResponse:
        """Segment one scan for the web viewer: the JSON answer of segment (volumes from the full-resolution
        labels), a display copy (``view``: scan channels as base64 little-endian int16 with slope/intercept,
        labels, uncertainty as uint8, legend) and ``mask_url``, where the mask in the input's format can be
        fetched until ``expires_s`` seconds have passed."""
        result = await segment_now(name, file, example, uncertainty, view=True)
        key = views.put(result.mask, result.suffix)
        return JSONResponse({"result": result.body, "view": result.view, "mask_url": f"/v1/views/{key}/mask",
                             "mask_filename": f"mask{result.suffix}", "expires_s": config.view_ttl_s},
                            headers=PRIVATE)

    @app.get("/v1/views/{key}/mask", tags=["viewer"], dependencies=[Depends(authorize)])
    def view_mask(key: str) -> Response:
        """The mask of a viewer's result, in the input's format (NIfTI for DICOM), while it has not expired."""
        stored = views.get(key)
        if stored is None:
            raise HTTPException(404, f"this result has expired (results are kept {config.view_ttl_s:g} s): "
                                     "segment the scan again")
        return Response(stored.mask, media_type=MEDIA_TYPES.get(stored.suffix, "application/octet-stream"),
                        headers=PRIVATE | {"Content-Disposition": f'attachment; filename="mask{stored.suffix}"'})

    @app.get("/v1/examples", tags=["viewer"], dependencies=[Depends(authorize)])
    def examples_list() -> dict[str, Any]:
        """The scans in the admin's example folder (``--examples``), by name; empty when none is configured."""
        listing = list_examples(examples, UPLOAD_SUFFIXES)
        return {"examples": [{"name": n, "bytes": p.stat().st_size} for n, p in listing.items()]}

    @app.post("/v1/models/{name}/jobs", tags=["jobs"], status_code=202, dependencies=[Depends(authorize)])
    async def submit_job(name: str, file: UploadFile | None = File(None),
                         format: str = Query("file", pattern="^(file|json)$"), uncertainty: bool = Query(False),
                         example: str | None = Query(None, description="a file of /v1/examples instead of an upload")
                         ) -> dict[str, Any]:
        """Queue one scan; poll ``GET /v1/jobs/{id}``, then fetch ``/v1/jobs/{id}/result``."""
        served = get_model(name)
        _prune_jobs()
        try:
            path, suffix = await take_input(file, example)
        except ClientError as error:
            raise client_error(error) from None
        job = Job(uuid.uuid4().hex, served.name, format == "json")

        def started() -> None:
            job.status = "running"

        future = admit(served, path, suffix, uncertainty, started)
        jobs[job.id] = job

        def finished(f: Future) -> None:
            job.finished = time.time()
            try:
                job.result = f.result()
                job.status = "done"
            except ClientError as error:
                job.status, job.error = "failed", {"status": error.status, "detail": error.detail}
            except Exception as error:  # noqa: BLE001 - reported to the client, logged without patient data
                log.exception("job %s failed", job.id)
                job.status, job.error = "failed", {"status": 500, "detail": type(error).__name__}

        future.add_done_callback(finished)
        return job.describe()

    def _prune_jobs() -> None:
        now = time.time()
        for job_id in [j.id for j in jobs.values() if j.finished and now - j.finished > config.job_ttl_s]:
            jobs.pop(job_id, None)

    def get_job(job_id: str) -> Job:
        if job_id not in jobs:
            raise HTTPException(404, f"no job {job_id} (finished jobs are kept {config.job_ttl_s:g} s)")
        return jobs[job_id]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=[Depends(authorize)])
    def job_status(job_id: str) -> dict[str, Any]:
        """A job's status (queued, running, done, failed) and, when done, its JSON result."""
        return get_job(job_id).describe()

    @app.get("/v1/jobs/{job_id}/result", tags=["jobs"], dependencies=[Depends(authorize)])
    def job_result(job_id: str, format: str | None = Query(None, pattern="^(file|json)$")) -> Response:
        """The finished job's mask (or JSON); 409 while it runs, the job's error when it failed."""
        job = get_job(job_id)
        if job.status == "failed" and job.error:
            raise HTTPException(job.error["status"], job.error["detail"])
        if job.result is None:
            raise HTTPException(409, f"job {job_id} is {job.status}; poll /v1/jobs/{job_id}",
                                headers={"Retry-After": str(config.retry_after_s)})
        return answer(job.result, job.want_json if format is None else format == "json")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The web viewer (no patient data in it: everything comes through the authorised API)."""
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", tags=["service"], include_in_schema=False)
    def prometheus() -> Response:
        metrics.queue.set(admission.waiting)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
