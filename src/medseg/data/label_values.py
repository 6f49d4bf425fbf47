"""Declared label values that are not 0..K (a 0/255 mask), trained as consecutive classes.

A network has one output a class value, so masks declared as 0/255 would give 256 outputs, 254 never used (and
0/40000 would not fit in memory). :func:`consecutive_labels` renumbers the declared values in order, background 0
kept; the plan records each class's value on disk (``Plan.label_values``), masks are read as class values
(:func:`to_class_values`) and predicted masks are written back with the declared values. Undeclared values that are
not 0..K are a problem ``medseg check`` reports (:mod:`medseg.data.check`).
"""

from __future__ import annotations

import numpy as np


def consecutive_labels(labels: dict[int, str]) -> tuple[dict[int, str], dict[int, int]]:
    """Declared labels as classes 0..K, and each class's value on disk where they differ:
    ``{0: bg, 255: lesion}`` -> ``({0: bg, 1: lesion}, {1: 255})``; values already 0..K are left as they are."""
    values = sorted(set(labels) | {0})
    if values == list(range(len(values))):
        return dict(labels), {}
    renumbered = {k: labels.get(v, "background") for k, v in enumerate(values)}
    return renumbered, {k: v for k, v in enumerate(values) if k != v}


def to_class_values(array: np.ndarray, label_values: dict[int, int]) -> np.ndarray:
    """A mask's disk values as class values (see :func:`consecutive_labels`); undeclared values become 0, which
    ``medseg check`` reports before any training."""
    if not label_values:
        return array
    # classes below the first renumbered one keep their value (values sorted: once one moves, all later move)
    disk_to_class = {label_values.get(k, k): k for k in range(max(label_values) + 1)}
    out = np.zeros(array.shape, np.uint8 if max(label_values) < 256 else np.int16)
    for value, target in disk_to_class.items():
        if target:
            out[array == value] = target
    return out


def to_disk_values(labels: np.ndarray, label_values: dict[int, int]) -> np.ndarray:
    """Predicted class values as the values declared on disk (the inverse of :func:`to_class_values`)."""
    if not label_values:
        return labels
    top = max(label_values)
    lookup = np.asarray([label_values.get(k, k) for k in range(top + 1)])
    dtype = np.uint8 if lookup.max() < 256 else np.uint16
    return lookup.astype(dtype)[np.clip(labels, 0, top)]
