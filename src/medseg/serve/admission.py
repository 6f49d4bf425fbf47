"""What the service lets in: the upload size limit, the bounded slots for cases (running + waiting), and the
Prometheus metrics that count requests, cases and drift.

The size limit is enforced twice: :func:`observe` refuses a POST whose declared ``Content-Length`` is clearly over
it before the body is read, and :func:`medseg.serve.cases.save_upload` counts the bytes actually received (a
client may send no length or a false one).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

    def show(self, admission: Admission) -> None:
        """Set the gauges from the slots."""
        self.running.set(admission.pending)
        self.queue.set(admission.waiting)


async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """HTTP middleware: a request id, the early 413 on a declared oversize upload, and per-route counts,
    latency and a log line (no file names or image content)."""
    config, metrics = request.app.state.config, request.app.state.metrics
    start = time.perf_counter()
    request_id = uuid.uuid4().hex[:12]
    length = request.headers.get("content-length")
    if request.method == "POST" and length and length.isdigit() and int(length) > config.max_upload_bytes + CHUNK:
        response: Response = JSONResponse({"detail": too_large(config.max_upload_bytes)}, status_code=413)
    else:
        response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "unmatched")
    seconds = time.perf_counter() - start
    metrics.requests.labels(route, str(response.status_code)).inc()
    metrics.latency.labels(route).observe(seconds)
    response.headers["X-Request-ID"] = request_id
    log.info("request %s %s %s -> %d in %.3f s", request_id, request.method, route, response.status_code, seconds)
    return response
