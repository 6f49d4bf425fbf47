"""Overlap metrics on label maps.

Empty-mask convention: when a class is absent from both prediction and reference its Dice is NaN and it is
left out of means (reported separately by the evaluation report); when it is in only one of them, Dice is 0.
"""

from __future__ import annotations

import numpy as np
import torch


def dice_per_class(prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
                   labels: list[int]) -> dict[int, float]:
    """Dice of each foreground label between two integer label maps of the same shape."""
    pred = torch.as_tensor(prediction)
    ref = torch.as_tensor(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference {tuple(ref.shape)}")
    scores = {}
    for value in labels:
        p, r = pred == value, ref == value
        denominator = int(p.sum()) + int(r.sum())
        scores[value] = float("nan") if denominator == 0 else 2.0 * int((p & r).sum()) / denominator
    return scores
