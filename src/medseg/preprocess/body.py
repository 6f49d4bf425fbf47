"""The body of a CT: what a model may segment, so that air around the patient is never labelled.

nnU-Net crops to non-zero voxels, which in a CT is the whole image (air is -1000 HU, not 0). A network trained on
a scan whose body fills the field of view has never seen a wide band of air, and a scan with a larger field of
view then gets organs painted into the air: trained on `ircadb_01` (292 mm field of view) and run on `ircadb_07`
(400 mm), 8.8 of the 9.5 million false "liver" voxels lay in air below -900 HU (issue 18). The body mask bounds
both the crop (training and inference) and the prediction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.morphology import largest_drop, reaching_edges

BODY_HU = -500.0  # tissue against air: fat is about -100 HU, lung about -850, air -1000
STRIDE = 2  # the mask is built on every 2nd voxel: a body's outline needs no finer grid, and it is 8x cheaper


def body_mask(ct: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """The patient's body in a CT array (HU, 2D or 3D): the largest connected region above ``threshold``, with the
    air inside it (lungs, bowel gas) filled slice by slice along every axis, grown by one coarse voxel.

    The whole image when nothing is above the threshold (not a CT in HU: nothing is masked)."""
    coarse = np.asarray(ct[(slice(None, None, STRIDE),) * ct.ndim]) > threshold
    if not coarse.any():
        return np.ones(ct.shape, dtype=bool)
    drop = largest_drop(coarse)
    if drop is not None:
        coarse &= ~drop
    del drop
    filled = coarse.copy()
    for axis in range(ct.ndim):
        filled |= _holes_across(coarse, axis)
    filled = ndimage.binary_dilation(filled)
    return filled[np.ix_(*(np.arange(size) // STRIDE for size in ct.shape))]  # back to the full grid, one gather


def _holes_across(mask: np.ndarray, axis: int) -> np.ndarray:
    """The holes of ``mask`` in each slice across ``axis``: background regions of a slice that do not reach the
    slice's edge, labelled with a planar structure in one call (see medseg.morphology for why not scipy's
    ``binary_fill_holes``)."""
    structure = np.zeros((3,) * mask.ndim, dtype=bool)
    plane = [slice(None)] * mask.ndim
    plane[axis] = slice(1, 2)
    structure[tuple(plane)] = np.expand_dims(ndimage.generate_binary_structure(mask.ndim - 1, 1), axis)
    labels, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return np.zeros_like(mask)
    return ~reaching_edges(labels, count, [other for other in range(mask.ndim) if other != axis])[labels]
