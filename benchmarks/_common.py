"""Shared by the benchmarks: where the real data lies, and the machine line every result carries."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine() -> dict:
    import torch

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {"cores": os.cpu_count(), "ram_gib": round(memory / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def data_set(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        print(json.dumps({"error": f"{path} not found"}))
        sys.exit(2)
    return path


def emit(name: str, figures: dict) -> None:
    print(json.dumps({"benchmark": name, **figures, "machine": machine()}))
