"""Segmentation metrics per case and class, and the evaluation report (``medseg evaluate``)."""

from medseg.evaluate.metrics import (
    CSV_COLUMNS,
    METRICS,
    EvaluationResult,
    evaluate_case,
    evaluate_folders,
    resolve_labels,
    surface_distances,
    write_evaluation,
)
from medseg.evaluate.overlap import dice_per_class

__all__ = [
    "CSV_COLUMNS",
    "METRICS",
    "EvaluationResult",
    "dice_per_class",
    "evaluate_case",
    "evaluate_folders",
    "resolve_labels",
    "surface_distances",
    "write_evaluation",
]
