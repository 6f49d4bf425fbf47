"""Background jobs: submit a scan, poll its status, fetch its result."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile
from fastapi.responses import Response

from medseg.serve.cases import CaseRunner, Served, answer
from medseg.serve.config import ServeConfig
from medseg.serve.dependencies import authorize, find_model, get_config, get_jobs, get_models, get_runner
from medseg.serve.jobs import Job, JobStore

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/models/{name}/jobs", tags=["jobs"], status_code=202)
async def submit_job(name: str, file: UploadFile | None = File(None),
                     format: str = Query("file", pattern="^(file|json)$"), uncertainty: bool = Query(False),
                     example: str | None = Query(None, description="a file of /v1/examples instead of an upload"),
                     models: dict[str, Served] = Depends(get_models), runner: CaseRunner = Depends(get_runner),
                     jobs: JobStore = Depends(get_jobs), config: ServeConfig = Depends(get_config)) -> dict[str, Any]:
    """Queue one scan; poll ``GET /v1/jobs/{id}``, then fetch ``/v1/jobs/{id}/result``. A job may run
    ``job_timeout_s`` seconds; 503 with ``Retry-After`` when the slots or the job store are full."""
    served = find_model(models, name)
    jobs.prune()
    job = jobs.new(served.name, format == "json")
    jobs.add(job)  # its place is taken before the upload is copied
    try:
        path, suffix = await runner.take_input(file, example)
        case = runner.submit(served, path, suffix, uncertainty, job.start, timeout_s=config.job_timeout_s)
    except BaseException:
        jobs.discard(job.id)
        raise
    case.future.add_done_callback(job.finish)
    return job.describe()


def find_job(jobs: JobStore, config: ServeConfig, job_id: str) -> Job:
    """The job, or 404 saying how long finished jobs are kept."""
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id} (finished jobs are kept {config.job_ttl_s:g} s)")
    return job


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
def job_status(job_id: str, jobs: JobStore = Depends(get_jobs),
               config: ServeConfig = Depends(get_config)) -> dict[str, Any]:
    """A job's status (queued, running, done, failed) and, when done, its JSON result."""
    return find_job(jobs, config, job_id).describe()


@router.get("/v1/jobs/{job_id}/result", tags=["jobs"])
def job_result(job_id: str, format: str | None = Query(None, pattern="^(file|json)$"),
               jobs: JobStore = Depends(get_jobs), config: ServeConfig = Depends(get_config)) -> Response:
    """The finished job's mask (or JSON); 409 while it runs, the job's error when it failed."""
    job = find_job(jobs, config, job_id)
    if job.status == "failed" and job.error:
        raise HTTPException(job.error["status"], job.error["detail"])
    if job.result is None:
        raise HTTPException(409, f"job {job_id} is {job.status}; poll /v1/jobs/{job_id}",
                            headers={"Retry-After": str(config.retry_after_s)})
    return answer(job.result, job.want_json if format is None else format == "json")
