"""Prediction latency on the 52 MSD Hippocampus test cases, with and without mirror TTA, start-up included.

Usage: python benchmarks/predict_hippocampus.py --bundle DIR   (a bundle from train_budget.py --keep DIR)
Runs the real CLI (`medseg predict BUNDLE CASES -o OUT --tta/--no-tta`) as a subprocess, so interpreter start,
imports and model loading count, as they do in nnU-Net's 180 s (3.5 s a case) for the same 52 cases; then
scores the masks with `medseg.evaluate` in the original geometry.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import data_set, emit

from medseg.evaluate import evaluate_folders

NNUNET_SECONDS_PER_CASE_TTA = 180 / 52  # nnU-Net 2.8.1 predictor, defaults (mirroring), this machine (issue 4)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    args = parser.parse_args()
    root = data_set("msd_hippocampus")
    test = json.loads((root / "split.json").read_text())["test"]
    work = Path(tempfile.mkdtemp(prefix="medseg_predict_"))
    inputs = work / "inputs"
    references = work / "references"
    inputs.mkdir()
    references.mkdir()
    for case in test:
        (inputs / f"{case}.nii.gz").symlink_to(root / "imagesTr" / f"{case}.nii.gz")
        (references / f"{case}.nii.gz").symlink_to(root / "labelsTr" / f"{case}.nii.gz")
    medseg = [sys.executable, "-m", "medseg"]
    figures: dict = {"cases": len(test), "nnunet_seconds_per_case_tta": round(NNUNET_SECONDS_PER_CASE_TTA, 2)}
    for flag in ("--no-tta", "--tta"):
        out = work / flag.strip("-")
        start = time.perf_counter()
        subprocess.run([*medseg, "predict", str(args.bundle), str(inputs), "-o", str(out), flag, "--no-progress"],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - start
        summary = evaluate_folders(out, references).summary()
        key = flag.strip("-").replace("-", "_")
        figures[key] = {"seconds_total": round(seconds, 1), "seconds_per_case": round(seconds / len(test), 3),
                        "speedup_vs_nnunet": round(NNUNET_SECONDS_PER_CASE_TTA / (seconds / len(test)), 1),
                        "dice": {n: round(s["dice"]["mean"], 4) for n, s in summary["per_class"].items()},
                        "mean_dice": round(summary["mean_dice"], 4)}
    emit("predict_hippocampus", figures)
