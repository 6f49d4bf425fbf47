"""Shared argument checks of the segmentation networks: widths, strides, input shapes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from medseg.errors import MedsegError

Strides = list[tuple[int, ...]]


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    """Channel widths per stage as a tuple; at least three stages, all positive."""
    try:
        widths = tuple(int(f) for f in features)
    except (TypeError, ValueError):
        raise MedsegError(
            f"features must be a sequence of channel counts, got {features!r}", fix="e.g. (32, 64, 128, 256)"
        ) from None
    if len(widths) < 3 or any(f < 1 for f in widths):
        raise MedsegError(
            f"features must give at least 3 positive channel counts (one per resolution stage), got {widths}",
            fix="e.g. (32, 64, 128, 256)",
        )
    return widths


def normalise_strides(
    spatial_dims: int, depth: int, strides: Sequence[Sequence[int] | int] | None
) -> Strides:
    """Per-axis downsampling strides of stages 1..depth-1 (``depth - 1`` tuples of ``spatial_dims`` ints).

    ``strides`` may hold ``depth - 1`` entries (one per downsampling) or ``depth`` entries whose first is all
    ones (the nnU-Net / DynUNet convention); an int entry means the same stride on every axis.
    """
    if strides is None:
        return [(2,) * spatial_dims] * (depth - 1)
    out: Strides = []
    for s in strides:
        t = (int(s),) * spatial_dims if isinstance(s, numbers.Integral) else tuple(int(v) for v in s)
        if len(t) != spatial_dims or any(v < 1 for v in t):
            raise MedsegError(
                f"each stride must be a positive int or {spatial_dims} positive ints, got {s!r}",
                fix="e.g. (1, 2, 2) to keep the first axis",
            )
        out.append(t)
    if len(out) == depth and all(v == 1 for v in out[0]):
        out = out[1:]
    if len(out) != depth - 1:
        raise MedsegError(
            f"got {len(strides)} strides for {depth} stages",
            fix=f"give {depth - 1} strides (one per downsampling stage)",
        )
    return out


def size_divisor(strides: Strides, spatial_dims: int) -> tuple[int, ...]:
    """What each spatial axis of the input must be divisible by: the product of the strides."""
    return tuple(math.prod(s[a] for s in strides) for a in range(spatial_dims))


def check_input(x: torch.Tensor, in_channels: int, divisor: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, in_channels, *spatial), spatial divisible by ``divisor``."""
    if x.ndim != len(divisor) + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected input (B, {in_channels}, {len(divisor)} spatial axes), got shape {tuple(x.shape)}"
        )
    if any(n % d for n, d in zip(x.shape[2:], divisor)):
        raise ValueError(
            f"spatial size {tuple(x.shape[2:])} is not divisible by {divisor} (the product of the strides); "
            "pad the input first"
        )
