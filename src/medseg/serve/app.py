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

This module only wires the parts together: settings (:mod:`~medseg.serve.config`), admission and metrics
(:mod:`~medseg.serve.admission`), cases (:mod:`~medseg.serve.cases`), jobs (:mod:`~medseg.serve.jobs`) and one
router per resource (:mod:`medseg.serve.routes`), which reach the parts through ``app.state``
(:mod:`~medseg.serve.dependencies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from medseg import __version__
from medseg.serve.admission import Admission, Metrics, observe
from medseg.serve.cases import CaseRunner, ClientError, load_models
from medseg.serve.config import ServeConfig, check_bind, is_loopback, load_token
from medseg.serve.jobs import JobStore
from medseg.serve.routes import health, jobs, models, views
from medseg.serve.routes.health import STATIC
from medseg.serve.viewer import ViewCache, examples_folder

__all__ = ["STATIC", "ServeConfig", "check_bind", "create_app", "is_loopback", "load_token"]


async def sweep_views(cache: ViewCache, ttl_s: float) -> None:
    """Expired masks go even when no one asks for anything."""
    while True:
        await asyncio.sleep(min(30.0, max(ttl_s, 0.1)))
        cache.prune()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Sweep the viewer's masks while serving; on shutdown drop them, stop the workers, delete the uploads."""
    state = app.state
    sweeper = asyncio.create_task(sweep_views(state.views, state.config.view_ttl_s))
    yield
    sweeper.cancel()
    state.views.clear()
    state.runner.shutdown()
    shutil.rmtree(state.root, ignore_errors=True)


async def client_error(request: Request, error: Exception) -> Response:
    """A :class:`ClientError` answered as FastAPI answers an ``HTTPException``: ``{"detail": ...}``."""
    assert isinstance(error, ClientError)
    return await http_exception_handler(request, HTTPException(error.status, error.detail, headers=error.headers))


def create_app(bundles: Sequence[str | Path], config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``bundles``; models are loaded here, once."""
    config = config or ServeConfig()
    metrics = Metrics()
    served = load_models(bundles, config)
    for name, model in served.items():
        metrics.load.labels(name).set(model.load_seconds)
    admission = Admission(config.max_concurrency, config.max_queue)
    examples = examples_folder(config.examples)
    root = Path(tempfile.mkdtemp(prefix="medseg-serve-"))  # 0700: only this user reads uploads

    app = FastAPI(title="medseg", version=__version__, lifespan=lifespan,
                  description="Medical image segmentation service: upload a scan, get its mask.")
    state = app.state
    state.config, state.metrics, state.models, state.admission, state.root = config, metrics, served, admission, root
    state.jobs = JobStore(config.job_ttl_s)
    state.views = ViewCache(config.view_ttl_s, config.view_cache_size)
    state.runner = CaseRunner(config, admission, metrics, root, examples)
    app.middleware("http")(observe)
    app.add_exception_handler(ClientError, client_error)
    for router in (health.router, models.router, views.router, jobs.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
