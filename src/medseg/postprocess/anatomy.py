"""Choose post-processing without a validation fold, from the anatomy of the training masks.

nnU-Net keeps a post-processing step only where it raises validation Dice (:mod:`medseg.postprocess.select`).
A model trained on every case (``--fold none``, the usual choice with one to four labelled scans) has no held-out
case to measure that on, and nnU-Net then applies nothing. medseg uses what the training masks do show: an organ
that is one connected piece in every training mask (a liver, a spleen, a kidney, a whole glioma) should be one
piece in a prediction too, so keeping its largest component removes only false positives. A label that comes in
several pieces in any case (liver tumours, metastases, vessels) is left alone.

"One piece" allows a speck: the largest component must hold at least ``SINGLE_PIECE_SHARE`` of the label's voxels
in every training case where the label appears. Keeping only the largest component of a perfect prediction then
leaves a Dice of at least 2 s / (1 + s) > 0.995. Manual masks often carry a few detached voxels (the liver of
3D-IRCADb case 1 has 151 specks holding 0.02 % of it), which an exact one-component rule would wrongly reject.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medseg.evaluate import DICE_EMPTY
from medseg.morphology import largest_share
from medseg.postprocess.config import ClassPostprocess, PostprocessConfig
from medseg.postprocess.ops import as_labels, class_boxes, union_box

SINGLE_PIECE_SHARE = 0.99
BASIS = "training masks"


def choose_from_anatomy(references: Iterable[np.ndarray], labels: dict[int, str], regions: bool = False,
                        min_share: float = SINGLE_PIECE_SHARE) -> PostprocessConfig:
    """Post-processing for a model with no validation fold, from its training label maps ``references``.

    Label plans: keeps the largest component of each label that is one piece in every case where it appears.
    Region plans (regions overlap, so per-label steps do not apply): keeps the largest component of all
    foreground together (the whole tumour) when it is one piece in every case. Each choice is recorded in
    ``decisions`` with the smallest largest-component share seen.

    The foreground step is not tried for label plans: organs that touch in the training masks (liver, right
    kidney and spleen are one piece of foreground in 3D-IRCADb case 1) need not touch in a prediction, and
    keeping the largest piece of foreground then deletes whole organs (both kidneys scored 0 when it was tried).
    """
    classes = sorted({int(k) for k in labels} - {0})
    keys: list[int | str] = ["foreground"] if regions else list(classes)
    shares: dict[int | str, list[float]] = {key: [] for key in keys}
    for reference in references:
        ref = as_labels(reference)
        boxes = class_boxes(ref)
        if regions:
            box = union_box(boxes.values())
            if box is not None:
                shares["foreground"].append(largest_share(ref[box] > 0))
            continue
        for c in classes:
            if c in boxes:
                shares[c].append(largest_share(ref[boxes[c]] == c))
    config = PostprocessConfig(classes={str(c): ClassPostprocess() for c in classes if not regions},
                               dice_empty=DICE_EMPTY)
    for key, seen in shares.items():
        kept = bool(seen) and min(seen) >= min_share
        if key == "foreground":
            config.keep_largest_foreground = kept
        else:
            config.set_class(key, keep_largest=kept)
        config.decisions.append(_decision(key, seen, kept))
    return config


def _decision(key: int | str, seen: list[float], kept: bool) -> dict:
    return {"step": "keep_largest_foreground" if key == "foreground" else "keep_largest", "class": key,
            "kept": kept, "basis": BASIS, "largest_share_min": round(min(seen), 6) if seen else None,
            "cases": len(seen)}
