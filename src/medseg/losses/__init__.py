"""Segmentation losses by name: :func:`build_loss`, :data:`LOSS_NAMES`.

A loss is called as ``loss(prediction, target)``:

* ``prediction``: logits ``(B, C, *spatial)``, or a deep-supervision list ``[full, 1/2, 1/4, ...]`` of them;
* ``target``: integer label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` (any integer dtype) at full
  resolution. For each lower-resolution head it is downsampled by nearest neighbour (the same voxels
  ``F.interpolate(mode="nearest")`` picks; a strided view when the factor is whole, so no copy).

Deep-supervision heads are weighted 1, 1/2, 1/4, ... normalised to sum 1. Unlike nnU-Net, the
lowest-resolution head keeps its weight (nnU-Net zeroes it, but our models already give the bottleneck no
head, and with only two or three heads zeroing one throws away much of the signal). Pass
``deep_supervision_weights`` to choose other weights (normalised to sum 1; a 0 weight skips that head).

The loss is always computed in float32 with autocast switched off, so it is safe to call inside
``torch.autocast("cpu", dtype=torch.bfloat16)`` or CUDA fp16/bf16 autocast; it returns a float32 scalar.

=========  =================================================================================================
``dice_ce``  (default) cross-entropy + soft Dice, weight 1 each, as nnU-Net: Dice over the foreground
             classes with ``batch_dice`` (sums over batch and space), smooth 1e-5, loss ``1 - mean Dice``.
``ce``       cross-entropy.
``dice``     the soft Dice part of ``dice_ce`` alone.
``focal``    softmax focal loss, gamma 2, all classes (``monai.losses.FocalLoss``).
``tversky``  Tversky, alpha 0.3 (false positives) / beta 0.7 (false negatives), foreground classes, batch
             sums (``monai.losses.TverskyLoss``).
``dice_bce`` regions (``build_loss(..., regions=...)``): one sigmoid output per region, binary cross-entropy +
             soft Dice over every region, batch Dice, as nnU-Net v2 trains regions. The target stays a label map;
             its region masks are made per head after the nearest-neighbour downsampling (they commute).
=========  =================================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.errors import MedsegError

if TYPE_CHECKING:
    from medseg.plan import Plan

__all__ = ["LOSS_NAMES", "SegmentationLoss", "build_loss", "build_plan_loss", "deep_supervision_weights",
           "downsample_labels", "region_dice_bce", "region_targets"]

LOSS_NAMES: tuple[str, ...] = ("dice_ce", "ce", "dice", "focal", "tversky", "dice_bce")

# Own CE / Dice instead of monai.losses.DiceCELoss: nnU-Net's exact formulation (batch Dice, smooth 1e-5), a
# bool one-hot (1 byte per voxel and class, no float copy) and one label format for both terms.
_SMOOTH = 1e-5


def _onehot(target: Tensor, num_classes: int) -> Tensor:
    """Bool one-hot (B, C, *spatial) of a (B, 1, *spatial) int64 label map."""
    shape = (target.shape[0], num_classes, *target.shape[2:])
    return torch.zeros(shape, dtype=torch.bool, device=target.device).scatter_(1, target, True)


def _soft_dice(logits: Tensor, target: Tensor) -> Tensor:
    """``1 - mean`` soft Dice over the foreground classes, batch Dice (sums over batch and space)."""
    probs = torch.softmax(logits, 1)[:, 1:]
    with torch.no_grad():
        onehot = _onehot(target, logits.shape[1])[:, 1:]
    axes = (0, *range(2, logits.ndim))
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes, dtype=probs.dtype)
    dice = (2 * intersect + _SMOOTH) / (sum_pred + sum_gt + _SMOOTH).clamp_min(1e-8)
    return 1 - dice.mean()


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target[:, 0])


def _dice_ce(logits: Tensor, target: Tensor) -> Tensor:
    return _ce(logits, target) + _soft_dice(logits, target)


def region_targets(target: Tensor, regions: Sequence[Sequence[int]]) -> Tensor:
    """Float ``(B, R, *spatial)`` region masks of a ``(B, 1, *spatial)`` label map."""
    return torch.cat([torch.isin(target, torch.as_tensor(values, device=target.device)) for values in regions],
                     dim=1).float()


def region_dice_bce(regions: Sequence[Sequence[int]]) -> Callable[[Tensor, Tensor], Tensor]:
    """Binary cross-entropy + ``1 - mean`` soft Dice over the regions (batch Dice), on sigmoid outputs."""
    regions = [tuple(int(v) for v in values) for values in regions]

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        masks = region_targets(target, regions)
        probs = torch.sigmoid(logits)
        axes = (0, *range(2, logits.ndim))
        dice = (2 * (probs * masks).sum(axes) + _SMOOTH) / (probs.sum(axes) + masks.sum(axes) + _SMOOTH)
        return F.binary_cross_entropy_with_logits(logits, masks) + 1 - dice.mean()

    return loss


def _base_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "dice_ce":
        return _dice_ce
    if name == "ce":
        return _ce
    if name == "dice":
        return _soft_dice
    # MONAI imported here, not at the top: importing it costs more start-up time than torch (models/blocks.py)
    if name == "focal":
        from monai.losses import FocalLoss

        return FocalLoss(include_background=True, to_onehot_y=True, gamma=2.0, use_softmax=True)
    if name == "tversky":
        from monai.losses import TverskyLoss

        return TverskyLoss(
            include_background=False, to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7, batch=True
        )
    if name == "dice_bce":
        raise MedsegError("loss 'dice_bce' trains regions", fix="build it with regions=..., from a region plan")
    raise MedsegError(f"unknown loss {name!r}", fix=f"use one of: {', '.join(LOSS_NAMES)}")


def deep_supervision_weights(n: int) -> list[float]:
    """Default head weights 1, 1/2, 1/4, ... normalised to sum 1 (for ``n`` heads)."""
    raw = [0.5**i for i in range(n)]
    return [w / sum(raw) for w in raw]


def downsample_labels(target: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of a (B, 1, *spatial) label map to ``size`` (same voxels as F.interpolate)."""
    size = tuple(int(s) for s in size)
    have = tuple(target.shape[2:])
    if have == size:
        return target
    if all(h % s == 0 for h, s in zip(have, size)):
        # nearest with a whole factor f picks voxels 0, f, 2f, ...: a strided view, no interpolation
        return target[(slice(None), slice(None), *(slice(None, None, h // s) for h, s in zip(have, size)))]
    return F.interpolate(target.float(), size=size, mode="nearest").long()


class SegmentationLoss(nn.Module):
    """Applies a per-tensor loss to logits or a deep-supervision list of logits (see module docstring)."""

    def __init__(
        self,
        name: str,
        base: Callable[[Tensor, Tensor], Tensor],
        num_classes: int,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.base = base
        self.num_classes = num_classes
        self.weights = None if weights is None else [w / sum(weights) for w in weights]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, weights={self.weights}"

    def _weights(self, n: int) -> list[float]:
        if self.weights is None:
            return deep_supervision_weights(n)
        if len(self.weights) != n:
            raise MedsegError(
                f"{len(self.weights)} deep-supervision weights for a model with {n} outputs",
                fix=f"give {n} weights (full resolution first) or none for the default 1, 1/2, 1/4, ...",
            )
        return self.weights

    def _labels(self, target: Tensor, pred: Tensor) -> Tensor:
        if target.ndim == pred.ndim - 1:
            target = target.unsqueeze(1)
        if target.ndim != pred.ndim or target.shape[1] != 1 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not fit prediction {tuple(pred.shape)}: "
                "expected (B, 1, *spatial) or (B, *spatial) labels"
            )
        if pred.shape[1] != self.num_classes:
            raise ValueError(f"prediction has {pred.shape[1]} channels, loss built for {self.num_classes}")
        return target if target.dtype == torch.long else target.long()

    def forward(self, prediction: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        """Loss of ``prediction`` (logits or list of logits) against the full-resolution label map."""
        preds = [prediction] if isinstance(prediction, Tensor) else list(prediction)
        if not preds:
            raise ValueError("empty prediction list")
        target = self._labels(target, preds[0])
        if tuple(target.shape[2:]) != tuple(preds[0].shape[2:]):
            raise ValueError(
                f"target spatial size {tuple(target.shape[2:])} differs from the prediction's "
                f"{tuple(preds[0].shape[2:])}"
            )
        weights = [1.0] if len(preds) == 1 else self._weights(len(preds))
        with torch.autocast(device_type=preds[0].device.type, enabled=False):
            total: Tensor | None = None
            for w, pred in zip(weights, preds):
                if w == 0:
                    continue
                term = self.base(pred.float(), downsample_labels(target, pred.shape[2:]))
                term = term if w == 1 else w * term
                total = term if total is None else total + term
        assert total is not None  # weights are checked to have a positive sum
        return total


def build_plan_loss(plan: Plan) -> Callable[[Tensor | list[Tensor], Tensor], Tensor]:
    """The loss a plan trains with: its ``loss`` over its outputs (one a label value, or one a region)."""
    return build_loss(plan.loss, num_classes=plan.num_outputs, regions=[r.values for r in plan.regions] or None)


def build_loss(
    name: str = "dice_ce",
    *,
    num_classes: int,
    deep_supervision_weights: Sequence[float] | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> Callable[[Tensor | list[Tensor], Tensor], Tensor]:
    """Loss ``name`` (one of :data:`LOSS_NAMES`) for ``num_classes`` classes (background included, >= 2).

    ``regions`` (the label values of each region): the ``dice_bce`` region loss, with ``num_classes`` = the number
    of regions (the network's outputs).

    ``deep_supervision_weights``: one weight per deep-supervision output, full resolution first (normalised to
    sum 1); default 1, 1/2, 1/4, ... normalised. Returns an ``nn.Module``: ``loss(prediction, target)``.
    """
    if regions:
        if name != "dice_bce" or int(num_classes) != len(regions):
            raise MedsegError(f"{len(regions)} regions need the dice_bce loss with {len(regions)} outputs, got "
                              f"{name!r} with {num_classes}", fix="train regions from a region plan")
        base = region_dice_bce(regions)
    else:
        base = _base_loss(name)
    if int(num_classes) < 2 and not regions:
        raise MedsegError(f"num_classes must be >= 2 (background plus at least one class), got {num_classes}")
    weights = None
    if deep_supervision_weights is not None:
        weights = [float(w) for w in deep_supervision_weights]
        if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise MedsegError(
                "deep-supervision weights must be finite, >= 0 and not all 0, "
                f"got {list(deep_supervision_weights)}",
                fix="e.g. (1, 0.5, 0.25)",
            )
    return SegmentationLoss(name, base, int(num_classes), weights)
