"""Liveness and readiness, the Prometheus metrics, and the web viewer's page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from medseg import __version__
from medseg.serve.admission import Admission, Metrics
from medseg.serve.cases import Served
from medseg.serve.dependencies import get_admission, get_metrics, get_models

STATIC = Path(__file__).parent.parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

router = APIRouter()


@router.get("/health", tags=["service"])
def health(models: dict[str, Served] = Depends(get_models),
           admission: Admission = Depends(get_admission)) -> dict[str, Any]:
    """Liveness and readiness: the models loaded and the work admitted."""
    return {"status": "ok", "version": __version__, "models": list(models), "in_flight": admission.pending,
            "capacity": admission.capacity}


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The web viewer (no patient data in it: everything comes through the authorised API)."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/metrics", tags=["service"], include_in_schema=False)
def prometheus(metrics: Metrics = Depends(get_metrics), admission: Admission = Depends(get_admission)) -> Response:
    metrics.queue.set(admission.waiting)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
