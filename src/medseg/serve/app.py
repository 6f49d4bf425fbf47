"""The segmentation service: models loaded once, uploads in, masks or volumes out.

    app = create_app(["runs/hippo/bundle"], ServeConfig(token="..."))     # an ASGI app (uvicorn, TestClient)

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/models/{name}/segment`` (multipart ``file``; the
mask in the input's format, NIfTI for DICOM, or JSON with ``?format=json``), ``POST /v1/models/{name}/jobs`` +
``GET /v1/jobs/{id}`` + ``GET /v1/jobs/{id}/result``, ``GET /metrics`` (Prometheus), OpenAPI at ``/docs``.
The web viewer: ``GET /`` (files in ``static/``), fed by ``POST /v1/models/{name}/view`` (the segmentation plus a
display copy of scan, labels and uncertainty; see :mod:`medseg.serve.viewer`) and ``GET /v1/views/{id}/mask``.
``GET /v1/examples`` lists the scans in the admin's ``--examples`` folder; ``segment``, ``jobs`` and ``view`` take
``?example=NAME`` instead of an upload (a name from that listing, never a path).

Safety (each rule has a test in ``tests/test_serve_hostile.py`` or ``tests/test_serve.py``):

* ``/v1`` needs ``Authorization: Bearer <token>`` when a token is set (constant-time compare). A request with a
  body and a missing or wrong token gets 401 before a single body byte is read (:mod:`~medseg.serve.guard`).
* Uploads over ``max_upload_bytes`` get 413: at once when ``Content-Length`` says so, else as soon as the bytes
  received pass the limit (plus 64 KiB of multipart framing), so no more than that is spooled or stored. A form
  holds one file and at most a few small text fields (else 400).
* At most ``max_concurrency`` cases run and ``max_queue`` wait, beyond that 503 with ``Retry-After``. A case
  over ``request_timeout_s`` gets 504 and is stopped (between batches of sliding windows), as is one whose client
  went away: its slot and its folder are freed (:mod:`~medseg.serve.cancel`).
* Jobs: each is stopped after ``job_timeout_s`` (status ``failed``, error 504); at most ``max_jobs`` are kept
  (the oldest finished one gives way, else 503); finished ones go after ``job_ttl_s``, swept on a timer.
* An upload is decoded within ``read_limits`` (:mod:`medseg.io.limits`; else 400). A scan with NaN or infinite
  voxels gets 422 (as do wrong dimensions or channels); JSON answers never hold ``NaN`` (any non-finite float
  becomes ``null``). Answers never show server paths.
* Each upload lives in its own private (0700) folder under the service's ``medseg-serve-XXXX`` folder, deleted
  once answered; the service folder records its owner (``pid``), and at start-up the folders of this user's
  services that no longer run are deleted (:mod:`~medseg.serve.workdir`). Logs carry request ids, models,
  sizes, status and timings, never file names or image content.

This module only wires the parts together: settings (:mod:`~medseg.serve.config`), admission and metrics
(:mod:`~medseg.serve.admission`), the checks before the body (:mod:`~medseg.serve.guard`), cases
(:mod:`~medseg.serve.cases`, stopped through :mod:`~medseg.serve.cancel`), jobs (:mod:`~medseg.serve.jobs`),
the service's folder (:mod:`~medseg.serve.workdir`) and one router per resource (:mod:`medseg.serve.routes`),
which reach the parts through ``app.state`` (:mod:`~medseg.serve.dependencies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from medseg import __version__
from medseg.serve.admission import Admission, Metrics, Observe
from medseg.serve.cases import CaseRunner, ClientError, FiniteJSONResponse, load_models
from medseg.serve.config import ServeConfig, check_bind, check_corrections, is_loopback, load_token
from medseg.serve.corrections import CorrectionStore
from medseg.serve.guard import FORM_LIMITS, Guard
from medseg.serve.jobs import JobStore
from medseg.serve.routes import health, jobs, models, views
from medseg.serve.routes.health import STATIC
from medseg.serve.viewer import ViewCache, examples_folder
from medseg.serve.workdir import CASES, make_home, remove_leftovers
from medseg.serve.worklist import Worklist

__all__ = ["STATIC", "ServeConfig", "check_bind", "create_app", "is_loopback", "load_token"]


async def sweep(prune: Callable[[], None], ttl_s: float) -> None:
    """Expired entries go even when no one asks for anything: ``prune`` every ``ttl_s`` (0.1 to 30) seconds."""
    while True:
        await asyncio.sleep(min(30.0, max(ttl_s, 0.1)))
        prune()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Sweep the viewer's masks and the finished jobs while serving; on shutdown drop the masks, stop the cases,
    delete the service's folder."""
    state = app.state
    sweepers = [asyncio.create_task(sweep(state.views.prune, state.config.view_ttl_s)),
                asyncio.create_task(sweep(state.jobs.prune, state.config.job_ttl_s))]
    yield
    for sweeper in sweepers:
        sweeper.cancel()
    state.views.clear()
    state.runner.shutdown()
    shutil.rmtree(state.home, ignore_errors=True)


async def client_error(request: Request, error: Exception) -> Response:
    """A :class:`ClientError` answered as FastAPI answers an ``HTTPException``: ``{"detail": ...}``."""
    assert isinstance(error, ClientError)
    return await http_exception_handler(request, HTTPException(error.status, error.detail, headers=error.headers))


def create_app(bundles: Sequence[str | Path], config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``bundles``; models are loaded here, once."""
    config = config or ServeConfig()
    check_corrections(config)
    corrections = CorrectionStore(config.corrections) if config.corrections is not None else None
    metrics = Metrics()
    served = load_models(bundles, config, metrics)
    for name, model in served.items():
        metrics.load.labels(name).set(model.load_seconds)
    admission = Admission(config.max_concurrency, config.max_queue)
    examples = examples_folder(config.examples)
    remove_leftovers()
    home = make_home()  # 0700: only this user reads uploads
    root = home / CASES

    app = FastAPI(title="medseg", version=__version__, lifespan=lifespan, form_limits=FORM_LIMITS,
                  default_response_class=FiniteJSONResponse,
                  description="Medical image segmentation service: upload a scan, get its mask.")
    state = app.state
    state.config, state.metrics, state.models, state.admission = config, metrics, served, admission
    state.home, state.root = home, root  # the service's folder, and where the cases' folders go
    state.jobs = JobStore(config.job_ttl_s, config.max_jobs, config.retry_after_s)
    state.views = ViewCache(config.view_ttl_s, config.view_cache_size)
    state.corrections, state.worklist = corrections, Worklist()
    state.runner = CaseRunner(config, admission, metrics, root, examples)
    app.add_middleware(Guard, config=config)  # inside Observe: refused requests are counted and logged too
    routers = (health.router, models.router, views.router, jobs.router)
    app.add_middleware(Observe, metrics=metrics, routes=[route for router in routers for route in router.routes])
    app.add_exception_handler(ClientError, client_error)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
