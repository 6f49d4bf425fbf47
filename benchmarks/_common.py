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
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # other work on the machine skews every figure: the 1-minute load average at the end says how much
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def data_set(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        print(json.dumps({"error": f"{path} not found"}))
        sys.exit(2)
    return path


RESULTS_LOG = Path(__file__).resolve().parent / "results.jsonl"


def emit(name: str, figures: dict) -> None:
    """Print the result as one JSON line and append it to results.jsonl (the history behind results.md)."""
    line = json.dumps({"benchmark": name, **figures, "machine": machine()})
    print(line)
    with RESULTS_LOG.open("a") as log:
        log.write(line + "\n")
