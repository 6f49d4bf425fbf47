"""What the service lets in and how it is watched: the bounded slots for cases (running + waiting), the
Prometheus metrics that count requests, cases and drift, and :class:`Observe`, the middleware that counts and logs
every request.

The upload size limit is enforced twice: :class:`medseg.serve.guard.Guard` refuses a body whose declared or
received size passes it (plus the multipart framing) before it is spooled, and
:func:`medseg.serve.cases.save_upload` holds the file itself to it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("medseg.serve")

CHUNK = 1 << 20  # uploads are read and written this many bytes at a time


def too_large(limit: int) -> str:
    """The 413 answer's detail."""
    return f"upload larger than the limit of {limit} bytes"


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
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

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
        self.model = Info("medseg_model", "Each served model's bundle version (content hash of weights and plan) "
                          "and lineage", ["model"], registry=r)

    def show_model(self, name: str, lineage: dict) -> None:
        """``medseg_model_info{model, version, parent, data_fingerprint}``: which bundle answers as ``name``."""
        self.model.labels(name).info({key: str(lineage.get(key) or "")
                                      for key in ("version", "parent", "data_fingerprint")})

    def show(self, admission: Admission) -> None:
        """Set the gauges from the slots."""
        self.running.set(admission.pending)
        self.queue.set(admission.waiting)


def route_label(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The route's path template (bounded label values, never a raw path); for a request refused before routing,
    the template of the first of ``routes`` its path and method match."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    return getattr(route, "path", "unmatched")


class Observe:
    """Pure ASGI middleware, outermost: a request id, per-route counts, latency and a log line (no file names or
    image content), for every request, those the guard refuses included (labelled by the template among
    ``routes`` that they match)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app, self.metrics, self.routes = app, metrics, list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        status = 500  # what the client gets when the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route, seconds = route_label(scope, self.routes), time.perf_counter() - start
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            log.info("request %s %s %s -> %d in %.3f s", request_id, scope["method"], route, status, seconds)
