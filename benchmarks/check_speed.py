"""Seconds `medseg check` takes on the 260 MSD Hippocampus cases (target: under 30 s)."""

from __future__ import annotations

import time

from _common import data_set, emit

from medseg.data import check_dataset, discover_dataset

if __name__ == "__main__":
    root = data_set("msd_hippocampus")
    start = time.perf_counter()
    report = check_dataset(discover_dataset(root))
    seconds = time.perf_counter() - start
    emit("check_speed", {"cases": report.summary()["cases"], "problems": len(report.problems),
                         "seconds": round(seconds, 2), "target_seconds": 30})
