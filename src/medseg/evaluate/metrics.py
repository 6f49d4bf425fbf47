"""Segmentation metrics per case and class, in physical units, and their summary.

Metrics (one row per case and foreground class; background, value 0, is never scored):

* ``dice``, ``iou``, ``precision``, ``recall``, ``f1`` from voxel counts (``f1`` equals ``dice`` for binary masks;
  both are reported because readers look for either name); Dice is medseg's one Dice
  (:func:`medseg.evaluate.overlap.dice_from_counts`).
* ``hd95_mm``: 95th-percentile symmetric Hausdorff distance in mm, MONAI's definition: the larger of the two
  directed 95th percentiles of the distances from each surface voxel of one mask to the nearest surface voxel
  of the other (surface voxel = a voxel of the mask with a face neighbour outside it).
* ``assd_mm``: average symmetric surface distance in mm (mean over the surface voxels of both masks).
* ``nsd``: normalised surface Dice at a tolerance of ``tolerance_mm`` (default 2 mm, a common choice for
  organ-scale structures at ~1 mm resolution; pass a smaller one for fine structures): the fraction of the
  surface voxels of both masks lying within the tolerance of the other surface.
* ``volume_pred``, ``volume_ref`` in ml for 3D, area in mm^2 for 2D; ``volume_error = volume_pred - volume_ref``
  (signed, same unit).
* lesion-wise detection, as BraTS 2023 (:mod:`medseg.evaluate.lesions`): ``lesions_ref``, ``lesions_pred``
  (fully connected components of each map), ``lesions_matched`` and ``lesions_missed`` (reference lesions some
  predicted component overlaps, or none), ``lesions_spurious`` (predicted components overlapping no reference
  lesion), ``lesion_dice`` (sum of each reference lesion's Dice with the predicted components overlapping it,
  over reference lesions + spurious ones) and ``lesion_f1`` (2 matched / (2 matched + missed + spurious)).

Distances use the image spacing in array-axis order, so anisotropic voxels are honoured; they are computed as
MONAI computes them (:mod:`medseg.evaluate.surface`).

Empty-mask conventions (also written into ``summary.json``, with ``"dice_empty": "one"``):

* class absent from both prediction and reference: dice, iou, precision, recall, f1 = 1; hd95, assd and nsd
  are NaN (not defined) and left out of means; volumes 0.
* class present in only one of them: dice, iou, precision, recall, f1 = 0; nsd = 0; hd95 and assd are NaN
  (missing, left out of means) and the number of such cases is reported per class in ``summary.json``.
* lesion_dice and lesion_f1 follow the same rule: 1 when the class is in neither map, 0 when in only one.
* ``region``: voxels outside the region mask are set to background in both maps before anything is scored.
* a reference without a prediction is not scored; its case id is listed in ``missing_predictions``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.evaluate.lesions import LESION_METRICS, lesion_scores
from medseg.evaluate.overlap import DICE_EMPTY, OVERLAP_METRICS, class_mask, overlap_scores
from medseg.evaluate.surface import DEFAULT_TOLERANCE_MM, DISTANCE_METRICS, surface_distances

SIZE_METRICS = ("volume_pred", "volume_ref", "volume_error")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS + SIZE_METRICS + LESION_METRICS
CSV_COLUMNS = ("case", "prediction", "reference", "label", "label_value") + METRICS
SIZE_UNITS = {2: "mm2", 3: "ml"}

CONVENTIONS = (
    "Background (label 0) is not scored. Class absent from both prediction and reference: dice, iou, precision, "
    "recall, f1 = 1; hd95_mm, assd_mm and nsd are NaN and excluded from the statistics. Class present in only "
    "one: dice, iou, precision, recall, f1 = 0, nsd = 0; hd95_mm and assd_mm are NaN (missing, excluded; counted "
    "under 'empty'). hd95_mm is the larger of the two directed 95th percentiles of surface-voxel distances (MONAI); "
    "assd_mm is the mean symmetric surface distance; nsd is the normalised surface Dice at tolerance_mm. "
    "Distances use the voxel spacing in mm. volume_* are in size_unit (ml for 3D, mm2 for 2D); "
    "volume_error = volume_pred - volume_ref. Lesions are fully connected components (no dilation, no minimum "
    "size, unlike BraTS 2023); a reference lesion is matched when a predicted component overlaps it, a predicted "
    "component overlapping none is spurious; lesion_dice = sum of each reference lesion's Dice with the union of "
    "the predicted components overlapping it / (reference lesions + spurious); lesion_f1 = 2 matched / "
    "(2 matched + missed + spurious); both are 1 when the class is in neither map and 0 when in only one. "
    "With a region mask, voxels outside it are background in both "
    "maps. References without a prediction are not scored (missing_predictions). Statistics: mean, median, "
    "population std and n over the finite values."
)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx: tuple[float, ...] | list[float],
    labels: dict[int, str],
    region: np.ndarray | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    members: Mapping[int, Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Score one case: a row per foreground label (``label``, ``label_value`` and :data:`METRICS`).

    ``pred`` and ``ref`` are integer label maps of the same spatial shape (``(Y, X)`` or ``(Z, Y, X)``, no
    channel axis); ``spacing_zyx`` is the spacing in that axis order, in mm; ``region`` an optional mask
    (non-zero = scored) of the same shape. ``members`` makes the classes regions: class key -> the label values
    it is made of (``labels`` then maps those keys to region names; ``label_value`` is the key).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    if pred.ndim not in (2, 3) or len(spacing_zyx) != pred.ndim:
        raise ValueError(f"expected 2D or 3D maps with one spacing per axis, got shape {pred.shape} and "
                         f"spacing {tuple(spacing_zyx)}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if region is not None:
        region = np.asarray(region)
        if region.shape != pred.shape:
            raise ValueError(f"region shape {region.shape} differs from the label maps' {pred.shape}")
        outside = region == 0
        pred = np.where(outside, 0, pred)
        ref = np.where(outside, 0, ref)
    voxel_size = math.prod(spacing) / (1000.0 if pred.ndim == 3 else 1.0)
    rows = []
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        values = members[value] if members is not None else (value,)
        scores = _score_class(class_mask(pred, values), class_mask(ref, values), spacing, voxel_size, tolerance_mm)
        rows.append({"label": name, "label_value": int(value)} | {metric: scores[metric] for metric in METRICS})
    return rows


def _score_class(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], voxel_size: float,
                 tolerance_mm: float) -> dict[str, float]:
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    row = {"volume_pred": n_pred * voxel_size, "volume_ref": n_ref * voxel_size}
    row["volume_error"] = row["volume_pred"] - row["volume_ref"]
    tp = int(np.count_nonzero(p & r)) if n_pred and n_ref else 0
    row |= overlap_scores(n_pred, n_ref, tp, empty=DICE_EMPTY)
    row |= lesion_scores(p, r, empty=DICE_EMPTY)
    nan = float("nan")
    if n_pred == 0 and n_ref == 0:
        return row | dict.fromkeys(DISTANCE_METRICS, nan)
    if n_pred == 0 or n_ref == 0:
        return row | {"hd95_mm": nan, "assd_mm": nan, "nsd": 0.0}
    return row | surface_distances(p, r, spacing, tolerance_mm)


def summary_statistics(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, median, population std and count of the finite values (``None`` for each when there are none)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "std": float(finite.std()),
            "n": int(finite.size)}


@dataclass
class EvaluationResult:
    """Rows of :func:`evaluate_case` for every matched case, plus what could not be matched."""

    rows: list[dict[str, Any]]
    labels: dict[int, str]
    dim: int
    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    missing_predictions: list[str] = field(default_factory=list)
    extra_predictions: list[str] = field(default_factory=list)

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(row["case"] for row in self.rows))

    @property
    def size_unit(self) -> str:
        return SIZE_UNITS[self.dim]

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` content: statistics per class, empty-mask counts, unmatched cases."""
        per_class: dict[str, dict[str, dict[str, float | int | None]]] = {}
        empty: dict[str, dict[str, int]] = {}
        for value, name in sorted(self.labels.items()):
            rows = [row for row in self.rows if row["label_value"] == value]
            per_class[name] = {metric: summary_statistics([row[metric] for row in rows]) for metric in METRICS}
            pred_empty = [row["volume_pred"] == 0 for row in rows]
            ref_empty = [row["volume_ref"] == 0 for row in rows]
            empty[name] = {
                "both_empty": sum(a and b for a, b in zip(pred_empty, ref_empty)),
                "pred_empty_only": sum(a and not b for a, b in zip(pred_empty, ref_empty)),
                "ref_empty_only": sum(b and not a for a, b in zip(pred_empty, ref_empty)),
            }
        means = [stats["dice"]["mean"] for stats in per_class.values() if stats["dice"]["mean"] is not None]
        return {
            "cases": len(self.cases),
            "size_unit": self.size_unit,
            "tolerance_mm": self.tolerance_mm,
            "dice_empty": DICE_EMPTY,
            "conventions": CONVENTIONS,
            "per_class": per_class,
            "empty": empty,
            "mean_dice": float(np.mean(means)) if means else None,
            "missing_predictions": list(self.missing_predictions),
            "extra_predictions": list(self.extra_predictions),
        }
