"""`medseg compare` on two versions of a model: its time and its verdict on a data set's split.json test list.

Usage (issue 22's target: hippocampus bundles of 5 and 15 minutes, 52 test cases, under 30 s, B better):
    python benchmarks/train_budget.py --budget 5m --keep /tmp/hippo_5m
    python benchmarks/train_budget.py --budget 15m --keep /tmp/hippo_15m
    python benchmarks/compare_bundles.py --a /tmp/hippo_5m --b /tmp/hippo_15m [--dataset msd_hippocampus]
The time is that of the whole comparison (both bundles predict every test case, evaluation, bootstrap, HTML
report), training excluded. ``expected_sign_ok``: B's mean Dice minus A's is positive for every class, as a
longer-trained model should give.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from _common import data_set, emit

from medseg.report import compare_bundles

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", type=Path, required=True, help="the current bundle (e.g. 5 minutes of training)")
    parser.add_argument("--b", type=Path, required=True, help="the candidate (e.g. 15 minutes)")
    parser.add_argument("--dataset", default="msd_hippocampus")
    args = parser.parse_args()
    root = data_set(args.dataset)
    with tempfile.TemporaryDirectory(prefix="medseg_bench_compare_") as work:
        start = time.perf_counter()
        result = compare_bundles(args.a, args.b, root, Path(work) / "compare.html")
        seconds = time.perf_counter() - start
    dice = [d for d in result.differences if d.metric == "dice"]
    emit(f"compare_{args.dataset}", {
        "seconds": round(seconds, 2), "cases": len(result.cases), "target_seconds": 30,
        "dice_difference_b_minus_a": {d.label: round(d.difference, 4) for d in dice if d.difference is not None},
        "ci95": {d.label: [round(d.ci_low, 4), round(d.ci_high, 4)] for d in dice if d.ci_low is not None},
        "mean_dice_a": {d.label: round(d.mean_a, 4) for d in dice if d.mean_a is not None},
        "mean_dice_b": {d.label: round(d.mean_b, 4) for d in dice if d.mean_b is not None},
        "b_significantly_worse": result.b_worse, "exit_code": 1 if result.b_worse else 0,
        "expected_sign_ok": all(d.difference is not None and d.difference > 0 for d in dice),
        "cases_b_worse": len(result.worse_cases), "version_a": result.version_a, "version_b": result.version_b,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    })
