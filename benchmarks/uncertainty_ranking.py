"""Which case to correct first: how well the per-case uncertainty score ranks the worst cases of a test list.

Usage: python benchmarks/uncertainty_ranking.py --bundle BUNDLE [--dataset msd_hippocampus] [--cases N]
       [--no-record]
Predicts the data set's split.json test list with the bundle (its default TTA and post-processing, uncertainty
on) twice, with and without the bundle's calibration (the masks are the same; only the probabilities differ),
scores each mask with `medseg evaluate`'s Dice, and reports:

* ``spearman``: Spearman's rank correlation between each case's ``uncertainty_score`` (predictions.json) and its
  mean Dice over the classes, calibrated and uncalibrated, with the p-value. Negative is what the score is for
  (more uncertain, lower Dice); -1 would rank the cases exactly worst first.
* ``worst_fifth_found``: of the fifth of the cases with the lowest Dice, the share that are among the fifth with
  the highest score (what a clinician correcting the top of the worklist would catch; chance is about 0.2).
* ``ece``: expected calibration error (15 bins, medseg.evaluate.calibration) before and after calibration: on the
  validation voxels as the bundle's metrics.json records it (the voxels the temperatures were fitted on), and
  measured here on the test voxels (the honest figure; at most --ece-voxels random voxels a case).

--cases N takes only the first N test cases (a smoke test); --no-record prints the line without appending it to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import data_set, emit, machine
from scipy.stats import spearmanr

from medseg.bundle import Bundle, load_bundle
from medseg.data import discover_dataset
from medseg.data.label_values import to_class_values
from medseg.evaluate import evaluate_folders
from medseg.evaluate.calibration import ECE_BINS, expected_calibration_error, top_label
from medseg.infer.calibration import read_calibration
from medseg.infer.cohort import PredictInput, predict_paths
from medseg.infer.predict import PredictOptions
from medseg.io import read_image
from medseg.train.calibrate import region_targets


def case_dice(result: Any) -> dict[str, float]:
    """Case id -> mean Dice over the scored classes."""
    by_case: dict[str, list[float]] = {}
    for row in result.rows:
        by_case.setdefault(row["case"], []).append(row["dice"])
    return {case: float(np.nanmean(values)) for case, values in by_case.items()}


def correlation(scores: list[float], dice: list[float]) -> dict[str, float | None]:
    statistic, p_value = spearmanr(scores, dice)
    finite = [None if not math.isfinite(v) else round(float(v), 4) for v in (statistic, p_value)]
    return {"rho": finite[0], "p": finite[1]}


def worst_found(scores: list[float], dice: list[float]) -> float:
    """Share of the lowest-Dice fifth of the cases found among the highest-score fifth (at least one case)."""
    k = max(1, round(len(dice) / 5))
    worst = set(np.argsort(dice, kind="stable")[:k].tolist())
    flagged = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
    return round(len(worst & flagged) / k, 3)


def decisions(probabilities: np.ndarray, reference: np.ndarray, bundle: Bundle, limit: int,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct) of at most ``limit`` random voxels of one case (reference: label values on disk)."""
    plan = bundle.plan
    classes = torch.from_numpy(to_class_values(reference, plan.label_values).astype(np.int64).reshape(-1))
    flat = torch.from_numpy(np.asarray(probabilities, np.float32).reshape(probabilities.shape[0], -1))
    if classes.numel() > limit:
        keep = torch.from_numpy(rng.choice(classes.numel(), limit, replace=False))
        flat, classes = flat[:, keep], classes[keep]
    if plan.regions:
        return top_label(flat, region_targets(classes, plan), regions=True)
    return top_label(flat, classes)


def test_ece(manifest: dict[str, Any], references: dict[str, Path], bundle: Bundle, limit: int) -> float:
    rng = np.random.default_rng(0)
    pairs = [decisions(read_image(c["probabilities"]).array, read_image(references[c["case"]]).array[0], bundle,
                       limit, rng) for c in manifest["cases"]]
    confidence, correct = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    return round(expected_calibration_error(confidence, correct, ECE_BINS), 6)


def predict_twice(bundle: Bundle, inputs: list[PredictInput], work: Path) -> dict[str, dict[str, Any]]:
    """predictions.json of the test cases, calibrated and not (same masks)."""
    manifests = {}
    for name, calibrate in (("calibrated", True), ("uncalibrated", False)):
        options = PredictOptions(uncertainty=True, probabilities=True, calibrate=calibrate)
        manifests[name] = predict_paths(bundle, inputs, work / name, options)
        if manifests[name]["failed"]:
            raise SystemExit(f"cases failed: {json.dumps(manifests[name]['failed'])}")
    return manifests


def validation_ece(bundle: Bundle) -> dict[str, Any] | None:
    calibration = bundle.metrics.get("inference", {}).get("calibration")
    if not calibration:
        return None
    return {"before": calibration.get("ece_before"), "after": calibration.get("ece_after"),
            "folds": calibration.get("folds"),
            "per_fold": {fold: {k: m["calibration"].get(k) for k in ("ece_before", "ece_after")}
                         for fold, m in bundle.metrics.get("folds", {}).items() if "calibration" in m}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--dataset", default="msd_hippocampus")
    parser.add_argument("--cases", type=int, help="only the first N test cases (smoke test)")
    parser.add_argument("--ece-voxels", type=int, default=200_000, help="random voxels a case for the test ECE")
    parser.add_argument("--no-record", action="store_true", help="print the result, do not append results.jsonl")
    args = parser.parse_args()
    root = data_set(args.dataset)
    bundle = load_bundle(args.bundle)
    calibration = read_calibration(bundle)
    dataset = discover_dataset(root)
    by_id = {c.case_id: c for c in dataset.cases}
    test_cases = [by_id[c] for c in json.loads((root / "split.json").read_text())["test"]][: args.cases]
    work = Path(tempfile.mkdtemp(prefix="medseg_bench_"))
    start = time.perf_counter()
    manifests = predict_twice(bundle, [PredictInput(c.case_id, list(c.image_files)) for c in test_cases], work)
    predict_seconds = time.perf_counter() - start
    references = work / "references"
    references.mkdir()
    reference_files = {}
    for case in test_cases:
        reference_files[case.case_id] = references / case.label_file.name
        reference_files[case.case_id].symlink_to(case.label_file.resolve())
    # the side maps (NIfTI too) match no reference, so evaluate lists them as extras and scores only the masks
    result = evaluate_folders(work / "calibrated", references, labels=dict(bundle.plan.disk_labels))
    dice_by_case = case_dice(result)
    ids = [c["case"] for c in manifests["calibrated"]["cases"]]
    dice = [dice_by_case[i] for i in ids]
    scores = {name: [c["uncertainty_score"] for c in manifest["cases"]] for name, manifest in manifests.items()}
    figures = {
        "dataset": args.dataset, "bundle": str(args.bundle), "bundle_version": bundle.version,
        "test_cases": len(ids), "mean_dice": round(float(np.nanmean(dice)), 4),
        "calibration": None if calibration is None else {"method": calibration.method,
                                                         "temperatures": calibration.temperatures},
        "spearman": {name: correlation(s, dice) for name, s in scores.items()},
        "worst_fifth_found": {name: worst_found(s, dice) for name, s in scores.items()},
        "ece": {"validation": validation_ece(bundle),
                "test": {"before": test_ece(manifests["uncalibrated"], reference_files, bundle, args.ece_voxels),
                         "after": test_ece(manifests["calibrated"], reference_files, bundle, args.ece_voxels)}},
        "cases": {i: {"dice": round(d, 4), "score": s} for i, d, s in zip(ids, dice, scores["calibrated"])},
        "predict_seconds_per_case": round(predict_seconds / max(2 * len(ids), 1), 3),
    }
    if args.no_record:
        print(json.dumps({"benchmark": "uncertainty_ranking", **figures, "machine": machine()}))
    else:
        emit("uncertainty_ranking", figures)
    shutil.rmtree(work, ignore_errors=True)
