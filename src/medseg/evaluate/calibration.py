"""Calibration of voxel probabilities: expected calibration error (ECE) of the top-label decision.

ECE as Guo et al. (ICML 2017) define it, with their 15 equal-width bins: each decision has a *confidence* (the
probability of the label it chose) and is *correct* or not; ECE is the mean over bins, weighted by how many
decisions fall in each, of |accuracy - mean confidence|. A softmax plan decides once a voxel (confidence = the
largest class probability, correct = its argmax is the reference label); a region (sigmoid) plan decides once a
voxel and region (confidence = max(p, 1 - p), correct = (p > 0.5) agrees with the reference).

The binning is MONAI's (``monai.metrics.calibration_binning``: ``torch.bucketize`` on the upper bin edges), written
here over torch because importing MONAI costs several seconds at the end of every training run;
``tests/test_calibration.py`` checks the figure against ``monai.metrics.CalibrationErrorMetric``.
"""

from __future__ import annotations

import torch
from torch import Tensor

ECE_BINS = 15


def top_label(probabilities: Tensor, target: Tensor, regions: bool = False) -> tuple[Tensor, Tensor]:
    """``(confidence, correct)`` of every decision, flat.

    ``probabilities``: ``(C, ...)``. ``target``: ``(...)`` class indices for a softmax plan, or ``(C, ...)``
    booleans (region membership) for a region plan.
    """
    if regions:
        confidence = torch.maximum(probabilities, 1 - probabilities)
        correct = (probabilities > 0.5) == target.bool()
        return confidence.reshape(-1), correct.reshape(-1)
    confidence, chosen = probabilities.max(0)
    return confidence.reshape(-1), (chosen == target).reshape(-1)


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> float:
    """ECE of decisions with ``confidence`` in [0, 1] and ``correct`` (bool); NaN when there are none."""
    confidence = confidence.reshape(-1).double()
    if confidence.numel() == 0:
        return float("nan")
    edges = torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence, edges[1:]).clamp_(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    gap = torch.bincount(index, weights=confidence, minlength=bins) - \
        torch.bincount(index, weights=correct.reshape(-1).double(), minlength=bins)
    return float(gap.abs().sum() / count.sum())
