"""Background jobs: a case queued now, polled for, its result fetched later. Finished jobs (and their masks, held
in memory) are kept ``ttl_s`` seconds and pruned when the next job is submitted."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

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
        except ClientError as error:
            self.status, self.error = "failed", {"status": error.status, "detail": error.detail}
        except Exception as error:  # noqa: BLE001 - reported to the client, logged without patient data
            log.exception("job %s failed", self.id)
            self.status, self.error = "failed", {"status": 500, "detail": type(error).__name__}


class JobStore:
    """Jobs by id; a finished job is dropped by :meth:`prune` once it is older than ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def new(self, model: str, want_json: bool) -> Job:
        """A queued job with a fresh unguessable id (not stored until :meth:`add`)."""
        return Job(uuid.uuid4().hex, model, want_json)

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job

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
