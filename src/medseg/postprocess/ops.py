"""Post-processing operations on integer label maps of shape (Z, Y, X) or (Y, X).

Labels are non-negative integers, 0 is background. Components are face-connected (6-neighbourhood in 3D,
4 in 2D), as in nnU-Net. Every public function returns a new array and leaves its input alone.

Memory stays bounded on big volumes: each class is processed inside its bounding box
(``scipy.ndimage.find_objects``, one pass, no copy); component sizes and holes come from :mod:`medseg.morphology`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from medseg.morphology import component_sizes, largest_drop, reaching_edges, slabs
from medseg.postprocess.config import PostprocessConfig

Box = tuple[slice, ...]


# ---------------------------------------------------------------------------------------------------- public API


def keep_largest_component(labels: np.ndarray,
                           classes: Iterable[int] | Literal["foreground"] | None = None) -> np.ndarray:
    """Keep only the largest connected component of each class in ``classes`` (None: every foreground class).

    ``classes="foreground"`` treats all foreground labels as one mask (nnU-Net style): voxels outside its largest
    component become background, and the kept voxels keep their labels.
    """
    out = as_labels(labels).copy()
    boxes = class_boxes(out)
    if isinstance(classes, str):
        if classes != "foreground":
            raise ValueError(f"classes must be None, label values or 'foreground', got {classes!r}")
        keep_largest_foreground_inplace(out, boxes)
    else:
        for value in _selected(classes, boxes):
            keep_largest_inplace(out, value, boxes[value])
    return out


def remove_small_objects(labels: np.ndarray, min_size_mm: float, spacing: Sequence[float],
                         classes: Iterable[int] | None = None) -> np.ndarray:
    """Remove components smaller than ``min_size_mm`` (mm^3 in 3D, mm^2 in 2D; spacing in array axis order)."""
    out = as_labels(labels).copy()
    voxel_size = _voxel_size(spacing, out.ndim)
    boxes = class_boxes(out)
    for value in _selected(classes, boxes):
        remove_small_inplace(out, value, boxes[value], min_size_mm, voxel_size)
    return out


def fill_holes(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Fill enclosed holes of each class (None: every foreground class), in 2D or 3D.

    A hole (a face-connected region not reaching the image border through other voxels) is filled only when it
    is entirely background: a cavity holding another class, or touching one, is left as it is.
    """
    out = as_labels(labels).copy()
    boxes = class_boxes(out)
    for value in _selected(classes, boxes):
        fill_holes_inplace(out, value, boxes[value])
    return out


def apply_thresholds(probabilities: np.ndarray, thresholds: dict[int, float]) -> np.ndarray:
    """Argmax over the class axis of ``probabilities`` (K, ...); then a voxel whose argmax class has a threshold
    and whose probability for it is below that threshold becomes background (0).

    Runs slab by slab, so the int64 argmax temporary never spans the whole volume. Returns the smallest
    unsigned integer type that holds K - 1.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim < 2:
        raise ValueError(f"probabilities must be (K, ...) with K classes, got shape {probabilities.shape}")
    num_classes = probabilities.shape[0]
    checked = {}
    for key, value in thresholds.items():
        label = int(key)
        if not 0 <= label < num_classes:
            raise ValueError(f"threshold for class {label}, but probabilities have {num_classes} classes")
        if label != 0 and value is not None:
            checked[label] = float(value)
    out = np.empty(probabilities.shape[1:], dtype=np.min_scalar_type(max(num_classes - 1, 0)))
    for rows in slabs(out.shape):
        chunk = probabilities[:, rows]
        arg = chunk.argmax(axis=0)
        for label, threshold in checked.items():
            arg[(arg == label) & (chunk[label] < threshold)] = 0
        out[rows] = arg
    return out


def apply_postprocessing(labels: np.ndarray | None, config: PostprocessConfig, spacing: Sequence[float] | None,
                         probabilities: np.ndarray | None = None) -> np.ndarray:
    """Apply ``config`` to a label map; returns a new array of the same dtype.

    Order: probability thresholds (only when the config has some; they need ``probabilities`` and replace the
    argmax labels), keep-largest over all foreground, keep-largest per class, small-object removal per class,
    hole filling per class. ``spacing`` (array axis order) is needed only for ``min_size_mm``.
    """
    out = _starting_labels(labels, config, probabilities)
    if config.is_noop():
        return out
    # Boxes only need to contain each class: every step below removes voxels, or adds them inside the class's
    # own box, so boxes found once stay valid.
    boxes = class_boxes(out)
    if config.keep_largest_foreground:
        keep_largest_foreground_inplace(out, boxes)
    for value in config.labels_with("keep_largest"):
        if value in boxes:
            keep_largest_inplace(out, value, boxes[value])
    _remove_small_per_class(out, config, spacing, boxes)
    for value in config.labels_with("fill_holes"):
        if value in boxes:
            fill_holes_inplace(out, value, boxes[value])
    return out


def _starting_labels(labels: np.ndarray | None, config: PostprocessConfig,
                     probabilities: np.ndarray | None) -> np.ndarray:
    """A fresh label map for the steps to change: thresholded ``probabilities`` (cast to the dtype of ``labels``
    when given) if ``config`` has thresholds, else a copy of ``labels``."""
    thresholds = config.thresholds
    if not thresholds:
        if labels is None:
            raise ValueError("no labels given (and no thresholds to make them from probabilities)")
        return as_labels(labels).copy()
    if probabilities is None:
        raise ValueError(f"the post-processing has probability thresholds for classes {sorted(thresholds)}: "
                         "pass the probabilities")
    out = apply_thresholds(probabilities, thresholds)
    if labels is not None:
        labels = as_labels(labels)
        if labels.shape != out.shape:
            raise ValueError(f"labels shape {labels.shape} differs from probabilities {out.shape}")
        out = out.astype(labels.dtype, copy=False)
    return out


def _remove_small_per_class(out: np.ndarray, config: PostprocessConfig, spacing: Sequence[float] | None,
                            boxes: dict[int, Box]) -> None:
    """The ``min_size_mm`` step, in place, for every class that sets it; ``spacing`` is needed only then."""
    small = config.labels_with("min_size_mm")
    if not small:
        return
    if spacing is None:
        raise ValueError("min_size_mm is set: pass the voxel spacing")
    voxel_size = _voxel_size(spacing, out.ndim)
    for value in small:
        if value in boxes:
            remove_small_inplace(out, value, boxes[value], config.for_class(value).min_size_mm, voxel_size)


# ---------------------------------------------------------------------------------------------------- in-place steps
# Shared with :mod:`medseg.postprocess.select`, which applies a step only once it has scored it. Each changes
# ``labels`` inside ``box`` (a box of the class's voxels, or a superset of it) and returns nothing.


def class_boxes(labels: np.ndarray) -> dict[int, Box]:
    """Bounding box of every positive label value present (one pass over ``labels``)."""
    return {index + 1: box for index, box in enumerate(ndimage.find_objects(labels)) if box is not None}


def union_box(boxes: Iterable[Box]) -> Box | None:
    """The smallest box holding all ``boxes``; None when there are none."""
    boxes = list(boxes)
    if not boxes:
        return None
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
                 for axis in range(len(boxes[0])))


def small_drop(mask: np.ndarray, min_size_mm: float, voxel_size: float) -> np.ndarray | None:
    """Voxels of ``mask`` in components smaller than ``min_size_mm``; None when there are none."""
    if min_size_mm <= 0:
        return None
    components, count = ndimage.label(mask)
    if count == 0:
        return None
    small = component_sizes(components, count) * voxel_size < min_size_mm
    small[0] = False
    if not small.any():
        return None
    return small[components]


def holes_to_fill(crop: np.ndarray, value: int) -> np.ndarray | None:
    """Background voxels of ``crop`` in holes of class ``value`` made only of background; None when none.

    Same holes as ``binary_fill_holes`` (face-connected regions of other voxels not reaching the crop border),
    found by labelling those regions once instead of dilating from the border: several times faster on big
    boxes, and the labels also tell which holes hold another class.
    """
    components, count = ndimage.label(crop != value)
    if count == 0:
        return None
    fillable = ~reaching_edges(components, count)
    if not fillable.any():
        return None
    for rows in slabs(crop.shape):  # holes holding another class are left alone
        fillable[components[rows][crop[rows] != 0]] = False
    if not fillable.any():
        return None
    return fillable[components]


def keep_largest_foreground_inplace(labels: np.ndarray, boxes: dict[int, Box]) -> None:
    """Set to background the foreground outside the largest component of all foreground classes together."""
    box = union_box(boxes.values())
    if box is None:
        return
    crop = labels[box]
    drop = largest_drop(crop > 0)
    if drop is not None:
        crop[drop] = 0


def keep_largest_inplace(labels: np.ndarray, value: int, box: Box) -> None:
    """Set to background the voxels of class ``value`` outside its largest component."""
    crop = labels[box]
    drop = largest_drop(crop == value)
    if drop is not None:
        crop[drop] = 0


def remove_small_inplace(labels: np.ndarray, value: int, box: Box, min_size_mm: float, voxel_size: float) -> None:
    """Set to background the components of class ``value`` smaller than ``min_size_mm`` (``voxel_size`` in mm)."""
    crop = labels[box]
    drop = small_drop(crop == value, min_size_mm, voxel_size)
    if drop is not None:
        crop[drop] = 0


def fill_holes_inplace(labels: np.ndarray, value: int, box: Box) -> None:
    """Fill with ``value`` the holes of that class made only of background (see :func:`holes_to_fill`)."""
    crop = labels[box]
    holes = holes_to_fill(crop, value)
    if holes is not None:
        crop[holes] = value


# ---------------------------------------------------------------------------------------------------- helpers


def as_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an integer (Z, Y, X) or (Y, X) array (no copy); ValueError for anything else."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label maps must be integer arrays, got {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"label maps must be (Z, Y, X) or (Y, X), got shape {labels.shape}")
    return labels


def _selected(classes: Iterable[int] | None, boxes: dict[int, Box]) -> list[int]:
    if classes is None:
        return sorted(boxes)
    chosen = sorted({int(c) for c in classes})
    if 0 in chosen:
        raise ValueError("class 0 is background: post-processing applies to foreground classes")
    return [c for c in chosen if c in boxes]


def _voxel_size(spacing: Sequence[float], ndim: int) -> float:
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers in array axis order, got {spacing}")
    return math.prod(spacing)
