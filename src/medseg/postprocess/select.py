"""Choose post-processing on validation cases (nnU-Net's rule).

Steps are tried in order, each on top of those already kept: keep-largest over all foreground, then keep-largest
per class, then hole filling per class. A step is kept only where it raises the mean validation Dice (over all
foreground classes for the global step, of that class for a per-class step) by more than ``tolerance``.

Dice is medseg's one Dice (:func:`medseg.evaluate.dice_from_counts`) with the convention of every Dice medseg
reports (:data:`medseg.evaluate.DICE_EMPTY`, ``"one"``, recorded as ``"dice_empty"`` in ``postprocess.json``): a
class absent from both prediction and reference scores 1 in that case, as in ``medseg evaluate``, training
validation and the TTA check. That is also what the rule needs: removing a spurious blob from a case without that
class must count as a gain (0 before, 1 after), where a NaN would drop the case from the mean and hide it.

No full-size copies are made to score a step: each step's effect is computed inside the class's bounding box and
the Dice after it follows from the voxels it would change. A prediction is copied only when a step is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from medseg.evaluate import DICE_EMPTY, dice_from_counts
from medseg.evaluate.overlap import dice_per_class
from medseg.morphology import largest_drop
from medseg.postprocess.config import ClassPostprocess, PostprocessConfig
from medseg.postprocess.ops import (
    Box,
    as_labels,
    class_boxes,
    fill_holes_inplace,
    holes_to_fill,
    keep_largest_foreground_inplace,
    keep_largest_inplace,
    union_box,
)

Counts = dict[int, tuple[int, int]]  # class -> (predicted voxels, true positives)


@dataclass
class _Case:
    pred: np.ndarray
    ref: np.ndarray
    boxes: dict[int, Box]  # of pred; stay valid (as supersets) through every step
    ref_counts: dict[int, int]
    counts: Counts
    owned: bool = False  # pred is our copy (not the caller's array) and may be changed in place
    pending: Counts = field(default_factory=dict)  # counts after the step being scored

    def own(self) -> None:
        if not self.owned:
            self.pred = self.pred.copy()
            self.owned = True


def choose_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]], labels: dict[int, str],
                          tolerance: float = 1e-4) -> PostprocessConfig:
    """Pick post-processing from ``(prediction, reference)`` label maps of validation cases.

    ``labels`` maps label values to names (0, background, is skipped). Returns a config with
    ``keep_largest_foreground``, per-class ``keep_largest`` / ``fill_holes`` and the ``decisions`` record. No
    step tried depends on the voxel spacing (small-object removal, which would, is never chosen here).
    """
    classes = sorted({int(k) for k in labels} - {0})
    states = [_prepare(pred, ref, classes) for pred, ref in cases]
    if not states:
        raise ValueError("choose_postprocessing needs at least one validation case")
    config = PostprocessConfig(classes={str(c): ClassPostprocess() for c in classes}, dice_empty=DICE_EMPTY)
    if not classes:
        return config

    # 1. keep the largest component of all foreground together
    before = _mean(_class_means(states, classes, pending=False))
    for state in states:
        _score_largest_foreground(state, classes)
    after = _mean(_class_means(states, classes, pending=True))
    kept = after > before + tolerance
    config.keep_largest_foreground = kept
    config.decisions.append(_decision("keep_largest_foreground", "foreground", before, after, kept))
    if kept:
        for state in states:
            if state.pending != state.counts:
                state.own()
                keep_largest_foreground_inplace(state.pred, state.boxes)
                state.counts = state.pending

    # 2. keep the largest component per class, 3. fill holes per class
    for step in ("keep_largest", "fill_holes"):
        means_before = _class_means(states, classes, pending=False)
        for state in states:
            _score_class_step(state, classes, step)
        means_after = _class_means(states, classes, pending=True)
        for value in classes:
            kept = means_after[value] > means_before[value] + tolerance
            config.set_class(value, **{step: kept})
            config.decisions.append(_decision(step, value, means_before[value], means_after[value], kept))
            if not kept:
                continue
            for state in states:
                if state.pending[value] != state.counts[value] and value in state.boxes:
                    state.own()
                    apply = keep_largest_inplace if step == "keep_largest" else fill_holes_inplace
                    apply(state.pred, value, state.boxes[value])
                    state.counts[value] = state.pending[value]
    return config


def _prepare(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> _Case:
    pred, ref = as_labels(pred), as_labels(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    boxes = class_boxes(pred)
    ref_boxes = class_boxes(ref)
    ref_counts = {c: int(np.count_nonzero(ref[ref_boxes[c]] == c)) if c in ref_boxes else 0 for c in classes}
    counts = {}
    for c in classes:
        if c not in boxes:
            counts[c] = (0, 0)
            continue
        mask = pred[boxes[c]] == c
        counts[c] = (int(np.count_nonzero(mask)), int(np.count_nonzero(mask & (ref[boxes[c]] == c))))
    return _Case(pred, ref, boxes, ref_counts, counts)


def _score_largest_foreground(state: _Case, classes: list[int]) -> None:
    state.pending = dict(state.counts)
    box = union_box(state.boxes.values())
    if box is None:
        return
    crop = state.pred[box]
    drop = largest_drop(crop > 0)
    if drop is None:
        return
    ref_crop = state.ref[box]
    for c in classes:
        removed = drop & (crop == c)
        predicted, hits = state.counts[c]
        state.pending[c] = (predicted - int(np.count_nonzero(removed)),
                            hits - int(np.count_nonzero(removed & (ref_crop == c))))


def _score_class_step(state: _Case, classes: list[int], step: str) -> None:
    """Counts of each class after ``step`` on that class alone (steps on different classes touch disjoint voxels)."""
    state.pending = dict(state.counts)
    for c in classes:
        if c not in state.boxes:
            continue
        crop = state.pred[state.boxes[c]]
        change = largest_drop(crop == c) if step == "keep_largest" else holes_to_fill(crop, c)
        if change is None:
            continue
        sign = -1 if step == "keep_largest" else 1
        predicted, hits = state.counts[c]
        hits_changed = int(np.count_nonzero(change & (state.ref[state.boxes[c]] == c)))
        state.pending[c] = (predicted + sign * int(np.count_nonzero(change)), hits + sign * hits_changed)


def _dice(counts: tuple[int, int], reference: int) -> float:
    predicted, hits = counts
    return dice_from_counts(predicted, reference, hits, empty=DICE_EMPTY)


def _class_means(states: list[_Case], classes: list[int], pending: bool) -> dict[int, float]:
    return {
        c: float(np.mean([_dice((s.pending if pending else s.counts)[c], s.ref_counts[c]) for s in states]))
        for c in classes
    }


def _mean(values: dict[int, float]) -> float:
    return float(np.mean(list(values.values())))


def _decision(step: str, label: int | str, before: float, after: float, kept: bool) -> dict:
    return {"step": step, "class": label, "dice_before": before, "dice_after": after, "kept": bool(kept)}


def choose_region_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]],
                                 members: dict[int, tuple[int, ...]], tolerance: float = 1e-4) -> PostprocessConfig:
    """Post-processing for region plans, from ``(prediction, reference)`` label maps of validation cases.

    Regions overlap, so the per-label steps do not apply; the one step tried is keeping the largest component of
    all foreground together (the whole tumour in BraTS), kept where it raises the mean Dice over the regions
    (``members``: region key -> its label values) by more than ``tolerance``. Stray blobs far from the tumour are
    what it removes; they cost little Dice but most of the HD95.
    """
    pairs = list(cases)
    if not pairs:
        raise ValueError("choose_region_postprocessing needs at least one validation case")
    config = PostprocessConfig(dice_empty=DICE_EMPTY)
    before = _region_dice(pairs, members)
    trimmed = []
    for pred, ref in pairs:
        copy = as_labels(pred).copy()
        keep_largest_foreground_inplace(copy, class_boxes(copy))
        trimmed.append((copy, ref))
    after = _region_dice(trimmed, members)
    kept = after > before + tolerance
    config.keep_largest_foreground = kept
    config.decisions.append(_decision("keep_largest_foreground", "foreground", before, after, kept))
    return config


def _region_dice(pairs: list[tuple[np.ndarray, np.ndarray]], members: dict[int, tuple[int, ...]]) -> float:
    """Mean over regions of the mean over cases of each region's Dice."""
    scores = [dice_per_class(pred, ref, members, empty=DICE_EMPTY) for pred, ref in pairs]
    return float(np.mean([np.mean([case[key] for case in scores]) for key in members])) if members else 0.0
