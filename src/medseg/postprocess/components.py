"""Connected components of a label map, counted and measured: the lesions ``medseg predict`` lists.

For each foreground label, its fully connected components (26-neighbourhood in 3D, 8 in 2D; the same components
``medseg evaluate`` counts as lesions, :func:`medseg.evaluate.lesions.connected_components`), largest first, each
with:

* ``voxels`` and ``volume`` (ml in 3D, mm^2 in 2D);
* ``centroid_mm``: the centre of mass as a physical point (x, y[, z]) in mm, patient LPS, from the image's origin,
  spacing and direction (:meth:`medseg.io.Image.voxel_to_physical`), and ``centroid_voxel``, the same point as a
  fractional voxel index in array order;
* ``bbox_start`` and ``bbox_stop``: the bounding box in voxels, array order, stop exclusive (a Python slice), and
  ``extent_mm``: its size along each array axis in mm (voxels times spacing; for an oblique grid these are
  lengths along the grid's axes, not along x, y, z).

Only the ``max_components`` largest are listed; ``count`` is always the total, so a noisy mask with thousands of
specks stays a short list. Cost: one labelling pass per label inside the label's bounding box, then work per
listed component inside its own box; no loop over voxels. (Face-connected components, as nnU-Net uses them, are
those of :mod:`medseg.postprocess.ops`, which removes them; these only describe the mask.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.evaluate.lesions import connected_components
from medseg.morphology import component_sizes

DEFAULT_MAX_COMPONENTS = 100  # components listed per label in predictions.json


def measure_components(
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    names: dict[int, str],
    to_physical: Callable[[np.ndarray], np.ndarray] | None = None,
    max_components: int = DEFAULT_MAX_COMPONENTS,
) -> dict[str, dict[str, Any]]:
    """Components of each foreground label of ``names`` in an integer label map ``(Z, Y, X)`` or ``(Y, X)``.

    Returns label name -> ``{"count": total, "components": [the max_components largest, as described in the
    module docstring]}``. ``spacing_zyx`` is in array order; ``to_physical`` maps ``(n, dim)`` array-order voxel
    indices to physical points (an :class:`~medseg.io.Image`'s ``voxel_to_physical``); without it, index times
    spacing (origin 0, identity direction).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub" or labels.ndim not in (2, 3):
        raise ValueError(f"expected an integer (Z, Y, X) or (Y, X) label map, got {labels.dtype} {labels.shape}")
    spacing = np.asarray([float(s) for s in spacing_zyx], dtype=np.float64)
    if spacing.shape != (labels.ndim,):
        raise ValueError(f"expected {labels.ndim} spacings in array order, got {list(spacing_zyx)}")
    if to_physical is None:
        def to_physical(index: np.ndarray) -> np.ndarray:
            return np.asarray(index, dtype=np.float64)[..., ::-1] * spacing[::-1]
    voxel_size = float(np.prod(spacing)) / (1000.0 if labels.ndim == 3 else 1.0)
    boxes = ndimage.find_objects(labels.astype(np.uint8) if labels.dtype == bool else labels)
    out: dict[str, dict[str, Any]] = {}
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        box = boxes[value - 1] if value <= len(boxes) else None
        out[name] = {"count": 0, "components": []} if box is None else _label_components(
            labels[box] == value, box, spacing, voxel_size, to_physical, max_components)
    return out


def _label_components(mask: np.ndarray, box: tuple[slice, ...], spacing: np.ndarray, voxel_size: float,
                      to_physical: Callable[[np.ndarray], np.ndarray], max_components: int) -> dict[str, Any]:
    """The components of one label's mask, cropped to ``box`` of the full map."""
    components, count = connected_components(mask)
    sizes = component_sizes(components, count)[1:]
    listed = np.argsort(-sizes, kind="stable")[:max(0, max_components)]  # largest first, ties in scan order
    component_boxes = ndimage.find_objects(components)
    offset = np.asarray([s.start for s in box])
    starts, stops, centroids = [], [], []
    for index in listed:
        own = component_boxes[index]
        inside = components[own] == index + 1
        starts.append(offset + [s.start for s in own])
        stops.append(offset + [s.stop for s in own])
        centroids.append(np.asarray(ndimage.center_of_mass(inside)) + starts[-1])
    physical = np.atleast_2d(to_physical(np.asarray(centroids, dtype=np.float64))) if centroids else []
    records = [{
        "voxels": int(sizes[index]),
        "volume": round(float(sizes[index]) * voxel_size, 4),
        "centroid_mm": [round(float(c), 2) for c in point],
        "centroid_voxel": [round(float(c), 2) for c in centroid],
        "bbox_start": [int(s) for s in start],
        "bbox_stop": [int(s) for s in stop],
        "extent_mm": [round(float(e), 2) for e in (stop - start) * spacing],
    } for index, point, centroid, start, stop in zip(listed, physical, centroids, starts, stops)]
    return {"count": count, "components": records}

