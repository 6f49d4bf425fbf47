"""Background jobs: a case queued now, polled for, its result fetched later. A job may run ``job_timeout_s``
seconds (then it is stopped and fails with 504). Finished jobs (and their masks, held in memory) are kept
``ttl_s`` seconds, pruned on a timer (the service's lifespan) and when a job is submitted; at most ``max_jobs``
are kept: a new job pushes out the oldest finished one, and when none has finished it is refused with 503."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

from medseg.infer.sliding import Cancelled
from medseg.serve.cases import CaseResult, ClientError

log = logging.getLogger("medseg.serve")


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

    def start(self) -> None:
        self.status = "running"

    def finish(self, future: Future) -> None:
        """Record the case's outcome (a future's done callback): its result, or the error to answer with."""
        self.finished = time.time()
        try:
            self.result = future.result()
            self.status = "done"
        except ClientError as error:  # the upload's fault, or 504: over the job's time limit
            self.status, self.error = "failed", {"status": error.status, "detail": error.detail}
        except (Cancelled, CancelledError):
            self.status, self.error = "failed", {"status": 503, "detail": "stopped: the service is shutting down"}
        except Exception as error:  # noqa: BLE001 - reported to the client, logged without patient data
            log.exception("job %s failed", self.id)
            self.status, self.error = "failed", {"status": 500, "detail": type(error).__name__}


class JobStore:
    """Jobs by id, at most ``max_jobs``; a finished job is dropped by :meth:`prune` once it is older than
    ``ttl_s`` seconds, or by :meth:`add` to make room."""

    def __init__(self, ttl_s: float, max_jobs: int = 100, retry_after_s: int = 5) -> None:
        self.ttl_s, self.max_jobs, self.retry_after_s = ttl_s, max(1, max_jobs), retry_after_s
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def new(self, model: str, want_json: bool) -> Job:
        """A queued job with a fresh unguessable id (not stored until :meth:`add`)."""
        return Job(uuid.uuid4().hex, model, want_json)

    def add(self, job: Job) -> None:
        """Keep ``job``, dropping the oldest finished jobs when full; 503 when full of unfinished ones."""
        with self.lock:
            finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished)
            while len(self.jobs) >= self.max_jobs and finished:
                del self.jobs[finished.pop(0).id]
            if len(self.jobs) >= self.max_jobs:
                raise ClientError(503, f"busy: {self.max_jobs} jobs are kept and none has finished; retry later",
                                  headers={"Retry-After": str(self.retry_after_s)})
            self.jobs[job.id] = job

    def discard(self, job_id: str) -> None:
        with self.lock:
            self.jobs.pop(job_id, None)

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            for job_id in [j.id for j in self.jobs.values() if j.finished and now - j.finished > self.ttl_s]:
                del self.jobs[job_id]

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs
