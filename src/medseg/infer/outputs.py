"""From network outputs to probabilities and label maps, for softmax (labels) and sigmoid (region) plans alike.

A label plan has one softmax channel per label value and its label map is the argmax. A region plan
(:mod:`medseg.data.regions`) has one sigmoid channel per region; its label map paints each region whose probability
exceeds 0.5, in ``regions_class_order``, as nnU-Net v2 does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from medseg.data.regions import paint_regions
from medseg.plan import Plan

REGION_THRESHOLD = 0.5


def probabilities_from_logits(logits: Tensor, plan: Plan, inplace: bool = False) -> Tensor:
    """``(C, *spatial)`` logits -> probabilities: sigmoid per region, or softmax over the labels. ``inplace``
    overwrites ``logits`` (no second K-map copy of a big CT)."""
    if not inplace:
        return torch.sigmoid(logits) if plan.regions else torch.softmax(logits, dim=0)
    if plan.regions:
        return logits.sigmoid_()
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


def labels_from_probabilities(probabilities: Tensor, plan: Plan) -> Tensor:
    """``(C, *spatial)`` probabilities -> an integer label map ``(*spatial)``."""
    if not plan.regions:
        return probabilities.argmax(0)
    return _painted(probabilities > REGION_THRESHOLD, plan)


def labels_from_logits(logits: Tensor, plan: Plan) -> Tensor:
    """``(C, *spatial)`` logits -> label map; for regions, logit > 0 is probability > 0.5 (no sigmoid needed)."""
    if not plan.regions:
        return logits.argmax(0)
    return _painted(logits > 0, plan)


def _painted(masks: Tensor, plan: Plan) -> Tensor:
    return torch.from_numpy(paint_regions(masks.numpy(), plan.regions, np.int64))
