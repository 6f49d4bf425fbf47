"""Overlap metrics on label maps, and medseg's one Dice.

Every Dice in medseg comes from :func:`dice_from_counts`: ``medseg evaluate`` and the fold's ``summary.json``,
training validation (``log.jsonl``, ``validation.csv``, the bundle's ``metrics.json``), the TTA check after training
and the post-processing choice (``postprocess.json``). Its ``empty`` argument says what a class absent from both
prediction and reference scores, as MONAI's ``ignore_empty`` does:

* ``"one"``: 1, a correct "nothing here". The convention of every Dice medseg reports (:data:`DICE_EMPTY`), so
  ``metrics.json`` and ``summary.json`` agree on the same predictions; each JSON that reports Dice records it as
  ``"dice_empty"``. It also lets the post-processing choice see a spurious blob removed from a case without that
  class as a gain.
* ``"nan"``: NaN, left out of NaN-aware means (MONAI's ``ignore_empty=True``, nnU-Net's summary).

A class present in only one of the two maps scores 0 either way.

Plain numpy (CPU tensors convert without a copy): ``medseg evaluate`` then never imports torch, whose import
alone took longer than scoring the 52 hippocampus test cases (``benchmarks/evaluate_speed.py``) on a loaded
2-core machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

DiceEmpty = Literal["one", "nan"]
DICE_EMPTY_CHOICES: tuple[str, ...] = get_args(DiceEmpty)
DICE_EMPTY: DiceEmpty = "one"  # the convention of every Dice medseg reports
OVERLAP_METRICS = ("dice", "iou", "precision", "recall", "f1")


def empty_score(empty: DiceEmpty) -> float:
    """What an overlap metric of a class absent from both maps is under the ``empty`` convention."""
    if empty == "one":
        return 1.0
    if empty == "nan":
        return float("nan")
    raise ValueError(f"empty must be one of {', '.join(DICE_EMPTY_CHOICES)}, got {empty!r}")


def dice_from_counts(predicted: int, reference: int, overlap: int, *, empty: DiceEmpty) -> float:
    """Dice from voxel counts: predicted, reference and shared voxels of one class."""
    total = predicted + reference
    return empty_score(empty) if total == 0 else 2.0 * overlap / total


def class_mask(labels: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """Voxels of a class made of ``members`` label values (one for a label, several for a region)."""
    return labels == members[0] if len(members) == 1 else np.isin(labels, members)


def dice_per_class(prediction: Any, reference: Any, labels: list[int] | Mapping[int, Sequence[int]], *,
                   empty: DiceEmpty) -> dict[int, float]:
    """Dice of each class between two integer label maps of the same shape (arrays or CPU tensors).

    ``labels``: the foreground label values, or a mapping of class keys to the label values each is made of
    (regions: ``Plan.class_members``).
    """
    pred, ref = np.asarray(prediction), np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference {tuple(ref.shape)}")
    members = labels if isinstance(labels, Mapping) else {value: (value,) for value in labels}
    scores = {}
    for value, values in members.items():
        p, r = class_mask(pred, values), class_mask(ref, values)
        scores[value] = dice_from_counts(int(np.count_nonzero(p)), int(np.count_nonzero(r)),
                                         int(np.count_nonzero(p & r)), empty=empty)
    return scores


def overlap_scores(predicted: int, reference: int, overlap: int, *, empty: DiceEmpty) -> dict[str, float]:
    """:data:`OVERLAP_METRICS` from voxel counts; all follow ``empty`` for a class absent from both maps."""
    if predicted == 0 or reference == 0:
        value = dice_from_counts(predicted, reference, overlap, empty=empty)  # empty_score, or 0 when in one only
        return dict.fromkeys(OVERLAP_METRICS, value)
    precision, recall = overlap / predicted, overlap / reference
    return {
        "dice": dice_from_counts(predicted, reference, overlap, empty=empty),
        "iou": overlap / (predicted + reference - overlap),
        "precision": precision,
        "recall": recall,
        "f1": 0.0 if overlap == 0 else 2 * precision * recall / (precision + recall),
    }
