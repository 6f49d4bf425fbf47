"""What the routes take through ``Depends``: the token check and the service's parts, read from ``app.state``
(set once by :func:`medseg.serve.app.create_app`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medseg.serve.admission import Admission, Metrics
from medseg.serve.cases import CaseRunner, Served
from medseg.serve.config import ServeConfig
from medseg.serve.corrections import CorrectionStore
from medseg.serve.guard import CHALLENGE, UNAUTHORIZED, token_matches
from medseg.serve.jobs import JobStore
from medseg.serve.viewer import ViewCache
from medseg.serve.worklist import Worklist

bearer = HTTPBearer(auto_error=False)


def get_config(request: Request) -> ServeConfig:
    return request.app.state.config


def get_models(request: Request) -> dict[str, Served]:
    return request.app.state.models


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_runner(request: Request) -> CaseRunner:
    return request.app.state.runner


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_views(request: Request) -> ViewCache:
    return request.app.state.views


def get_corrections(request: Request) -> CorrectionStore | None:
    return request.app.state.corrections


def get_worklist(request: Request) -> Worklist:
    return request.app.state.worklist


def get_home(request: Request) -> Path:
    return request.app.state.home


def authorize(config: ServeConfig = Depends(get_config),
              credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """401 unless the bearer token matches (constant-time compare); open when the service has no token. A request
    with a body has been checked the same way before it was read (:class:`medseg.serve.guard.Guard`)."""
    if not token_matches(config.token, credentials.credentials if credentials is not None else None):
        raise HTTPException(401, UNAUTHORIZED, headers=CHALLENGE)


def find_model(models: dict[str, Served], name: str) -> Served:
    """The model named in the path; 404 naming the models there are. Called in the endpoint (not a dependency)
    so that a malformed query is still answered 422 before an unknown model 404, as it always was."""
    if name not in models:
        raise HTTPException(404, f"no model '{name}' (models: {', '.join(models)})")
    return models[name]
