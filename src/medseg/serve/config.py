"""The service's settings, its API token and the rule on where it may listen without one."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.limits import ReadLimits


@dataclass
class ServeConfig:
    token: str | None = None  # bearer token for /v1; None: no auth (loopback only, see check_bind)
    max_upload_bytes: int = 256 * 2**20
    request_timeout_s: float = 300.0
    max_concurrency: int = 1  # cases segmented at once
    max_queue: int = 4  # cases waiting; more get 503
    retry_after_s: int = 5
    job_ttl_s: float = 3600.0  # finished jobs (and their result files) are kept this long
    job_timeout_s: float = 3600.0  # a job running longer is stopped and fails with 504
    max_jobs: int = 100  # jobs kept at most (finished ones are dropped oldest first to make room; else 503)
    backend: str = "torch"
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    tta: bool | None = None
    examples: str | Path | None = None  # a folder of scans the viewer offers by name (``--examples``)
    view_ttl_s: float = 900.0  # a viewer's mask stays downloadable this long
    view_cache_size: int = 16  # masks kept for download at most (oldest dropped first)
    read_limits: ReadLimits | None = None  # how large an upload may decode (None: medseg.io.limits' defaults)
    corrections: str | Path | None = None  # where the viewer's corrections are saved (needs a token; None: off)


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
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1); a host name other than localhost is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_corrections(config: ServeConfig) -> None:
    """Saved corrections are scans and masks written to the server's disk: only for callers with the token."""
    if config.corrections is not None and config.token is None:
        raise MedsegError("saves corrections only for authenticated users, and this service has no API token",
                          "--corrections", "set MEDSEG_API_TOKEN or --token-file, or leave --corrections out")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve without a token on anything but a loopback address."""
    if token is None and not is_loopback(host):
        raise MedsegError(f"will not listen on {host} without an API token: anyone who can reach it could upload "
                          "scans", "--host", "set MEDSEG_API_TOKEN or --token-file, or use --host 127.0.0.1")
