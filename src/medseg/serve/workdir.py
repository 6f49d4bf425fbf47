"""The service's own folder for uploads, and the clean-up of those a killed service left behind.

:func:`make_home` creates a private (0700) ``medseg-serve-XXXX`` folder under the temp dir holding ``pid`` (the
owner: process id and host name) and ``cases/``, where each case gets its own folder. A service that ends
normally deletes it; one that was killed cannot, so at start-up :func:`remove_leftovers` deletes the
``medseg-serve-*`` folders under the same temp dir that belong to this user, carry the ``pid`` marker of this
host, and name a process that no longer runs. A folder of a live process, of another user, of another host or
without the marker is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("medseg.serve")

PREFIX = "medseg-serve-"
OWNER_FILE = "pid"
CASES = "cases"


def make_home(parent: str | Path | None = None) -> Path:
    """A new private service folder (under ``parent``, default the temp dir) with its owner marker and
    ``cases/``."""
    home = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (home / CASES).mkdir(mode=0o700)
    (home / OWNER_FILE).write_text(f"{os.getpid()}\n{socket.gethostname()}\n")
    return home


def owner(folder: Path) -> int | None:
    """The process id in ``folder``'s marker, when ``folder`` is a real folder of this user holding a marker
    (a plain file of this user) written on this host; else None."""
    marker = folder / OWNER_FILE
    try:
        info, marker_info = folder.lstat(), marker.lstat()
        if not stat.S_ISREG(marker_info.st_mode):
            return None
        with open(marker, "rb") as handle:
            words = handle.read(512).decode("utf-8", "replace").split()
    except OSError:
        return None
    uid = os.getuid()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or marker_info.st_uid != uid:
        return None
    if len(words) != 2 or not words[0].isdigit() or words[1] != socket.gethostname():
        return None
    pid = int(words[0])
    return pid if pid > 0 else None


def is_running(pid: int) -> bool:
    """Whether a process with this id exists (a process of another user counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process; anything else: do not guess it is gone
        return True
    return True


def remove_leftovers(parent: str | Path | None = None) -> list[Path]:
    """Delete the service folders under ``parent`` (default the temp dir) whose owner no longer runs; the
    folders deleted."""
    if not hasattr(os, "getuid"):  # the ownership checks need POSIX
        return []
    removed = []
    for folder in sorted(Path(parent or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        pid = owner(folder)
        if pid is None or pid == os.getpid() or is_running(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d upload folder(s) left by stopped services", len(removed))
    return removed
