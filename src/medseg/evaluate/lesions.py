"""Lesion-wise detection figures, in the manner of the BraTS 2023 lesion-wise metrics.

For one class of one case (``pred`` and ``ref`` binary masks):

* reference lesions are the connected components of the reference, predicted components those of the
  prediction, both with full connectivity (26-neighbourhood in 3D, 8 in 2D: voxels touching at a corner are one
  lesion, as cc3d's default in the BraTS code; :func:`connected_components`, which ``medseg predict`` also uses);
* a reference lesion is **matched** (detected) when some predicted component overlaps it, else **missed**;
  a predicted component overlapping no reference lesion is **spurious** (a false positive);
* ``lesion_dice`` = sum over reference lesions of Dice(lesion, union of the predicted components overlapping
  it), divided by (reference lesions + spurious components): a missed lesion and a spurious blob each count as a
  Dice of 0, so small lesions weigh as much as big ones;
* ``lesion_f1`` = 2 matched / (2 matched + missed + spurious), the detection F1.

A prediction split into several blobs over one lesion is one match (no spurious blob); one blob bridging two
lesions matches both (and counts in both Dice unions, as in BraTS).

Empty conventions: class absent from both maps: lesion_dice and lesion_f1 follow ``empty`` (medseg's
:data:`~medseg.evaluate.overlap.DICE_EMPTY`, ``"one"``: 1, like Dice), all counts 0; present in only one:
both 0 (every lesion missed, or every blob spurious).

Differences from BraTS 2023 (``rachitsaluja/BraTS-2023-Metrics``): by default medseg neither dilates the
reference lesions before matching nor leaves out small ones. BraTS dilates them (1 to 3 iterations of the
18-neighbourhood, per sub-challenge), merges lesions whose dilations touch into one, matches predicted blobs
against the dilated lesion (the Dice still uses the undilated one), and leaves reference lesions of at most
50 mm^3 (2 for metastases) out of the counts and the denominator. ``dilation`` (iterations, 18-neighbourhood in
3D, 8 in 2D) and ``min_lesion_size`` (mm^3 in 3D, mm^2 in 2D) of :func:`lesion_scores` do the same. BraTS also
reports a lesion-wise HD95; medseg does not.

Plain numpy and scipy: ``medseg evaluate`` imports neither torch nor MONAI.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.evaluate.overlap import DICE_EMPTY, DiceEmpty, empty_score
from medseg.morphology import component_sizes

LESION_METRICS = ("lesions_ref", "lesions_pred", "lesions_matched", "lesions_missed", "lesions_spurious",
                  "lesion_dice", "lesion_f1")


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully connected components of a binary mask: (int32 component map, 0 = background; component count)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, count = ndimage.label(mask, structure=structure)
    return components, int(count)


def lesion_scores(pred: np.ndarray, ref: np.ndarray, *, empty: DiceEmpty = DICE_EMPTY, dilation: int = 0,
                  min_lesion_size: float = 0.0, voxel_size: float = 1.0) -> dict[str, float]:
    """:data:`LESION_METRICS` of one class: ``pred`` and ``ref`` are masks (non-zero = the class) of one shape.

    ``dilation`` and ``min_lesion_size`` (with ``voxel_size``, the voxel's mm^3 or mm^2) reproduce BraTS 2023's
    matching (see the module docstring); both off by default.
    """
    p, r = np.asarray(pred) != 0, np.asarray(ref) != 0
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference {r.shape}")
    box = _box(p | r, dilation)
    if box is None:
        return _counts(0, 0, 0, 0, 0) | {"lesion_dice": empty_score(empty), "lesion_f1": empty_score(empty)}
    p, r = p[box], r[box]
    pred_cc, n_pred = connected_components(p)
    ref_cc, n_ref = connected_components(r)
    match_cc = ref_cc  # where a predicted blob must touch to match each lesion
    if dilation > 0:  # BraTS: lesions whose dilations touch are one; blobs match the dilated lesion
        grown = ndimage.binary_dilation(r, structure=ndimage.generate_binary_structure(r.ndim, 2),
                                        iterations=int(dilation))
        match_cc, n_ref = connected_components(grown)
        ref_cc = np.where(r, match_cc, 0)
    pred_sizes, ref_sizes = component_sizes(pred_cc, n_pred), component_sizes(ref_cc, n_ref)
    touching = (pred_cc > 0) & (match_cc > 0)  # (lesion, blob) pairs that touch, each once
    pairs = np.unique(match_cc[touching].astype(np.int64) * (n_pred + 1) + pred_cc[touching])
    pair_ref, pair_pred = pairs // (n_pred + 1), pairs % (n_pred + 1)
    matched = np.bincount(pair_ref, minlength=n_ref + 1)[1:] > 0
    # every predicted voxel inside a lesion belongs to a blob that touches it: the overlap is a plain count
    overlap = np.bincount(ref_cc[p], minlength=n_ref + 1)[1:]
    union = np.bincount(pair_ref, weights=pred_sizes[pair_pred], minlength=n_ref + 1)[1:]
    dice = 2.0 * overlap / (ref_sizes[1:] + union)
    kept = ref_sizes[1:] * voxel_size > min_lesion_size  # BraTS leaves out lesions of at most the threshold
    touched = np.zeros(n_pred + 1, dtype=bool)
    touched[pair_pred] = True  # a blob over a left-out lesion is not spurious either
    spurious = n_pred - int(np.count_nonzero(touched[1:]))
    n_kept, n_matched = int(np.count_nonzero(kept)), int(np.count_nonzero(matched & kept))
    missed = n_kept - n_matched
    scores = _counts(n_kept, n_pred, n_matched, missed, spurious)
    if n_kept + spurious == 0:  # nothing (left) to find and nothing spurious
        return scores | {"lesion_dice": empty_score(empty), "lesion_f1": empty_score(empty)}
    return scores | {"lesion_dice": float(dice[kept].sum()) / (n_kept + spurious),
                     "lesion_f1": 2.0 * n_matched / (2 * n_matched + missed + spurious)}


def _counts(ref: int, pred: int, matched: int, missed: int, spurious: int) -> dict[str, float]:
    return {"lesions_ref": ref, "lesions_pred": pred, "lesions_matched": matched, "lesions_missed": missed,
            "lesions_spurious": spurious}


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels (within the array); None when it is empty."""
    found = ndimage.find_objects(mask.view(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(found[0], mask.shape))
