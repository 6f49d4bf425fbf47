"""Shared by the benchmarks: where the real data lies, and the machine line every result carries."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_share(seconds: float = 2.0, stall: float = 0.005) -> float:
    """Fraction of ``seconds`` of wall time that a busy loop in this process really ran.

    On a shared VM the host can take the vCPU away for 50-300 ms at a time without the guest seeing it as idle
    or steal time (``top`` shows nothing), so CPU figures alone cannot tell a slow run from a starved one.
    Gaps longer than ``stall`` between two iterations of a tight loop are time we did not get. 1.0 on a quiet
    machine; 0.35-0.45 was measured here on 2026-11-26 while a 3D training step varied from 0.1 s to 7 s.
    """
    start = last = time.perf_counter()
    lost = 0.0
    while (now := time.perf_counter()) - start < seconds:
        if now - last > stall:
            lost += now - last
        last = now
    return round(1 - lost / (last - start), 3)


# measured when a benchmark starts (it imports this module first) and again when it reports
CPU_SHARE_AT_START = cpu_share()


def cpu_flags() -> dict:
    """The CPU model and the vector/matrix flags that decide fp32 vs bf16 speed (read from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor(), "flags": []}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = sorted(f for f in set(flags) if f.startswith(("avx", "amx", "fma")))
    return {"model": model, "flags": wanted}


def machine() -> dict:
    import torch

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {"cores": os.cpu_count(), "ram_gib": round(memory / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # other work on the machine skews every figure: the 1-minute load average at the end says how much
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpu_share": {"start": CPU_SHARE_AT_START, "end": cpu_share()}, "cpu": cpu_flags()}


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
