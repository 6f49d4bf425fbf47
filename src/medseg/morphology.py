"""Connected-component building blocks shared by the body mask (preprocess), post-processing and lesion metrics.

Written by hand for memory and speed on 512x512xN volumes: component sizes are counted slab by slab (``bincount``
on a whole component map first copies it to int64, about 40 MB a 10-million-voxel map), and holes are found by
labelling the background once and dropping the regions that reach the border, instead of scipy's
``binary_fill_holes``, which propagates voxel by voxel (about 25 s against 0.1 s on a CT's half-resolution mask).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

CHUNK_VOXELS = 1 << 20  # voxels per slab when counting component sizes (8 MiB of int64 temporaries)


def slabs(shape: tuple[int, ...], chunk_voxels: int | None = None) -> Iterable[slice]:
    """Slices of the first axis holding about ``chunk_voxels`` voxels each (default :data:`CHUNK_VOXELS`)."""
    chunk = CHUNK_VOXELS if chunk_voxels is None else chunk_voxels
    rows = max(1, chunk // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], rows):
        yield slice(start, start + rows)


def component_sizes(components: np.ndarray, count: int, chunk_voxels: int | None = None) -> np.ndarray:
    """Voxel count of each component label 0..count (index 0: background), counted slab by slab."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    for rows in slabs(components.shape, chunk_voxels):
        sizes += np.bincount(components[rows].ravel(), minlength=count + 1)
    return sizes


def largest_drop(mask: np.ndarray, structure: np.ndarray | None = None,
                 chunk_voxels: int | None = None) -> np.ndarray | None:
    """Voxels of ``mask`` outside its largest component (first one on ties); None when there is nothing to drop.

    Components are face-connected unless ``structure`` (``scipy.ndimage.label``'s) says otherwise."""
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return None
    sizes = component_sizes(components, count, chunk_voxels)
    largest = int(np.argmax(sizes[1:])) + 1
    return (components != 0) & (components != largest)


def largest_share(mask: np.ndarray) -> float:
    """Fraction of the voxels of ``mask`` in its largest face-connected component (0.0 when empty)."""
    components, count = ndimage.label(mask)
    if count == 0:
        return 0.0
    sizes = component_sizes(components, count)[1:]
    return float(sizes.max() / sizes.sum())


def reaching_edges(components: np.ndarray, count: int, axes: Sequence[int] | None = None) -> np.ndarray:
    """Which labels 0..count of ``components`` touch the array's first or last index along any of ``axes``
    (default all): a region that does, is open to the outside and is no hole. Index 0 (not a region) is True."""
    reaches = np.zeros(count + 1, dtype=bool)
    reaches[0] = True
    for axis in range(components.ndim) if axes is None else axes:
        for end in (0, -1):
            reaches[np.take(components, end, axis=axis)] = True
    return reaches
