"""Segmentation metrics per case and class, medseg's one Dice, and the evaluation report (``medseg evaluate``).

``overlap``: the one Dice (:func:`dice_from_counts`, with its explicit ``empty=`` convention) and the other overlap
metrics; ``surface``: HD95, ASSD and surface Dice; ``lesions``: lesion-wise detection (BraTS 2023 style);
``metrics``: one case scored, and the summary; ``folders``: files matched, scored and written as ``metrics.csv``
and ``summary.json``.
"""

from medseg.evaluate.folders import evaluate_folders, resolve_labels, write_evaluation
from medseg.evaluate.lesions import LESION_METRICS, lesion_scores
from medseg.evaluate.metrics import (
    CONVENTIONS,
    CSV_COLUMNS,
    METRICS,
    EvaluationResult,
    evaluate_case,
    summary_statistics,
)
from medseg.evaluate.overlap import (
    DICE_EMPTY,
    DICE_EMPTY_CHOICES,
    OVERLAP_METRICS,
    DiceEmpty,
    dice_from_counts,
    dice_per_class,
    overlap_scores,
)
from medseg.evaluate.surface import DEFAULT_TOLERANCE_MM, surface_distances

__all__ = [
    "CONVENTIONS",
    "CSV_COLUMNS",
    "DEFAULT_TOLERANCE_MM",
    "DICE_EMPTY",
    "DICE_EMPTY_CHOICES",
    "LESION_METRICS",
    "METRICS",
    "OVERLAP_METRICS",
    "DiceEmpty",
    "EvaluationResult",
    "dice_from_counts",
    "dice_per_class",
    "evaluate_case",
    "evaluate_folders",
    "lesion_scores",
    "overlap_scores",
    "resolve_labels",
    "summary_statistics",
    "surface_distances",
    "write_evaluation",
]
