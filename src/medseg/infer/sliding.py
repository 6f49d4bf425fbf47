"""Sliding-window inference on a preprocessed array, with nnU-Net's Gaussian weighting and mirror TTA.

Own code rather than ``monai.inferers.sliding_window_inference``: importing MONAI costs more start-up time than
torch itself (see :mod:`medseg.models.blocks`), and this is the one function prediction needed from it. It also
places windows as nnU-Net does (evenly spread between the two borders, not packed from the start with the last
one pushed back), and skips the weighting altogether when one window covers the image, the common case for
medseg's CPU plans. ``tests/test_sliding.py`` checks it against MONAI's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.runtime import autocast_context, to_device

SIGMA_SCALE = 0.125  # Gaussian sigma as a fraction of the patch size (nnU-Net and MONAI both use 1/8)


class Cancelled(Exception):
    """Prediction stopped because its caller asked (``should_stop``); not a user error."""


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``patch`` along an axis of ``size >= patch``, evenly spread (nnU-Net).

    Neighbouring windows overlap by at least ``overlap`` of the patch; the first starts at 0 and the last ends
    at ``size``.
    """
    if size <= patch:
        return [0]
    step = max(patch * (1 - overlap), 1)
    n = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (n - 1)) for i in range(n)]


def gaussian_weights(patch: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Separable Gaussian importance map over a patch, peak 1, sigma 1/8 of the patch per axis."""
    weights = torch.ones((), device=device)
    for n in patch:
        x = (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) / (SIGMA_SCALE * n)
        weights = weights[..., None] * torch.exp(-0.5 * x * x)
    return weights / weights.max()


def sliding_window(
    batch: torch.Tensor,
    patch_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    batch_size: int = 2,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Float32 logits ``(1, K, *S)`` of ``predictor`` over ``batch`` ``(1, C, *S)`` by Gaussian-weighted windows.

    Axes shorter than the patch are zero-padded (centred) and cropped back. ``predictor`` maps
    ``(n, C, *patch)`` to ``(n, K, *patch)``. ``should_stop`` is asked before each batch of windows; when it
    answers True the work ends with :class:`Cancelled` (how the service stops a case whose request timed out).
    """
    if batch.shape[0] != 1:
        raise ValueError(f"sliding_window takes one case (1, C, *spatial), got shape {tuple(batch.shape)}")
    patch = [int(p) for p in patch_size]
    spatial = list(batch.shape[2:])
    pads = [max(p - s, 0) for p, s in zip(patch, spatial)]
    if any(pads):
        # F.pad lists the last axis first
        batch = F.pad(batch, [v for pad in reversed(pads) for v in (pad // 2, pad - pad // 2)])
    padded = batch.shape[2:]
    crop = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, spatial))
    starts = list(itertools.product(*(window_starts(n, p, overlap) for n, p in zip(padded, patch))))
    if should_stop is not None and should_stop():
        raise Cancelled("stopped before the first window")
    if len(starts) == 1:  # one window covers the image: no weighting to do
        return predictor(batch).float()[(..., *crop)]
    weights = gaussian_weights(patch, batch.device)
    out: torch.Tensor | None = None
    norm = torch.zeros(padded, device=batch.device)
    for first in range(0, len(starts), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {first} of {len(starts)} windows")
        windows = [tuple(slice(a, a + p) for a, p in zip(start, patch)) for start in starts[first:first + batch_size]]
        logits = predictor(torch.cat([batch[(0, ..., *w)][None] for w in windows])).float()
        if out is None:
            out = torch.zeros((logits.shape[1], *padded), device=batch.device)
        for window, window_logits in zip(windows, logits):
            out[(..., *window)] += window_logits * weights
            norm[window] += weights
    assert out is not None
    return out.div_(norm)[(..., *crop)][None]  # in place: the K logit maps of a big CT are the largest array here


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    data: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    precision: str = "fp32",
    sw_batch_size: int = 2,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Logits ``(K, *S)`` for one preprocessed case ``(C, *S)``; mirror TTA averages over flipped copies."""
    model.eval()
    device = next(model.parameters()).device
    batch = to_device(data[None], device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, precision):
            return sliding_window(x, patch_size, model, overlap=overlap, batch_size=sw_batch_size,
                                  should_stop=should_stop)

    logits = run(batch)
    flips = [(axis + 2,) for axis in mirror_axes]
    for dims in flips:
        logits += torch.flip(run(torch.flip(batch, dims)), dims)
    if flips:
        logits.div_(1 + len(flips))
    return logits[0].cpu()
