"""After training: decide what inference should do, from the held-out fold.

Two choices are measured here rather than assumed: whether mirror TTA pays for its cost (it multiplies
inference time by 1 + number of mirrored axes), and which post-processing steps help (nnU-Net's rule: keep a
step only where validation Dice improves). Both run on the network's grid, on the cases the fold never saw. With
no fold held out, post-processing follows the training masks' anatomy instead (``choose_without_validation``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.evaluate import DICE_EMPTY, EvaluationResult, dice_per_class, evaluate_case, write_evaluation
from medseg.infer.outputs import labels_from_logits
from medseg.infer.sliding import predict_logits
from medseg.plan import Plan
from medseg.postprocess import (
    PostprocessConfig,
    choose_from_anatomy,
    choose_postprocessing,
    choose_region_postprocessing,
)
from medseg.preprocess import CachedCase

TTA_CASES = 10  # enough to see a real difference; the full fold would cost (1 + axes) x its validation time
TTA_MIN_GAIN = 0.002  # mean Dice TTA must add to be on by default


def _mean_dice(predictions: list[torch.Tensor], cases: list[CachedCase], plan: Plan) -> float:
    scores = []
    for prediction, case in zip(predictions, cases):
        per_class = dice_per_class(prediction, torch.from_numpy(np.asarray(case.seg, dtype=np.int64)),
                                   plan.class_members, empty=DICE_EMPTY)
        scores.append(np.nanmean(list(per_class.values())) if per_class else np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def measure_tta(model: nn.Module, plan: Plan, cases: list[CachedCase], precision: str) -> dict[str, Any]:
    """Dice and seconds a case with and without mirror TTA on up to ``TTA_CASES`` validation cases."""
    cases = cases[:TTA_CASES]
    result: dict[str, Any] = {"cases": len(cases), "dice_empty": DICE_EMPTY}
    if not plan.mirror_axes:  # nothing may be mirrored (labels told apart by side): no TTA to measure
        return result | {"tta": False}
    for name, axes in (("plain", ()), ("tta", plan.mirror_axes)):
        start = time.perf_counter()
        predictions = [predict_logits(model, torch.from_numpy(np.array(c.data)), plan.patch_size,
                                      overlap=plan.sliding_window_overlap, mirror_axes=axes,
                                      precision=precision) for c in cases]
        predictions = [labels_from_logits(logits, plan) for logits in predictions]
        result[f"dice_{name}"] = round(_mean_dice(predictions, cases, plan), 4)
        result[f"seconds_{name}"] = round((time.perf_counter() - start) / max(len(cases), 1), 3)
    result["tta"] = bool(result["dice_tta"] > result["dice_plain"] + TTA_MIN_GAIN)
    return result


def choose_for_folds(plan: Plan, predictions: list[tuple[str, np.ndarray]],
                     cases: dict[str, CachedCase]) -> PostprocessConfig:
    """Post-processing chosen on the pooled final-validation predictions of every fold trained (region plans:
    keep-largest over all foreground only, scored by region Dice; see ``choose_region_postprocessing``)."""
    pairs = [(pred, np.asarray(cases[cid].seg)) for cid, pred in predictions if cid in cases]
    if plan.regions:
        return choose_region_postprocessing(pairs, plan.class_members)
    return choose_postprocessing(pairs, plan.labels)


def choose_without_validation(plan: Plan, cases: list[CachedCase]) -> PostprocessConfig:
    """Post-processing for a bundle trained with no validation fold (``--fold none``), from the anatomy of its
    training masks on the network grid (see medseg.postprocess.anatomy)."""
    return choose_from_anatomy((np.asarray(c.seg) for c in cases), plan.labels, regions=bool(plan.regions))


def evaluate_fold(plan: Plan, predictions: list[tuple[str, np.ndarray]], cases: dict[str, CachedCase],
                  out_dir: Path) -> dict[str, Any]:
    """Full metrics (Dice, HD95, ASSD, surface Dice, volumes) of the final validation, on the network's grid.

    Writes ``metrics.csv`` and ``summary.json`` to ``out_dir`` and returns the summary. On the network grid the
    spacing is the plan's target spacing; ``medseg evaluate`` on predicted files scores the original grid.
    """
    classes = plan.scored_classes
    members = plan.class_members if plan.regions else None
    rows = []
    for case_id, prediction in predictions:
        source = f"fold validation, {case_id} (network grid)"
        prefix = {"case": case_id, "prediction": source, "reference": source}
        rows += [prefix | row for row in evaluate_case(prediction, np.asarray(cases[case_id].seg),
                                                          plan.target_spacing, classes, members=members)]
    result = EvaluationResult(rows, classes, plan.dim)
    write_evaluation(result, out_dir)
    return result.summary()
