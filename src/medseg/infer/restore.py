"""Back from the network's grid to the scan's own grid, in slabs so memory stays bounded.

nnU-Net resamples all K class probabilities of a case to full size at once (K float maps of the original
volume, plus scipy's temporaries): that is where users run out of RAM on big CT. medseg does the same
(separable) linear interpolation by hand, one slab of output slices at a time: in-plane for the few network
slices the slab needs, then linearly between them along the slice axis. Peak memory is one slab of K float
maps plus the uint8 label map, whatever the volume size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

SLAB_VOXELS = 4_000_000  # output voxels per slab (per class); 16 MB of float32 a class


def _source_positions(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two input indices to blend and the weight of the second (align_corners=False)."""
    scale = in_size / out_size
    pos = np.clip((np.arange(out_size) + 0.5) * scale - 0.5, 0, in_size - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (pos - low).astype(np.float32)


def _resize_plane(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear in-plane resize of ``(K, Z, Y, X)`` (each slice on its own) or ``(K, Y, X)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*maps.shape[:-2], *size)


def restored_slabs(maps: torch.Tensor, out_shape: list[int] | tuple[int, ...]) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(output slice range, (K, slab, ...) maps)`` covering ``out_shape`` (the crop on the original grid).

    2D maps ``(K, Y, X)`` come back in one piece; 3D maps ``(K, Z, Y, X)`` in slabs along Z.
    """
    if maps.ndim == 3:
        yield slice(0, out_shape[0]), _resize_plane(maps, tuple(out_shape))
        return
    out_z, plane = int(out_shape[0]), tuple(int(s) for s in out_shape[1:])
    slab = max(1, SLAB_VOXELS // max(1, int(np.prod(plane))))
    if tuple(maps.shape[1:]) == (out_z, *plane):  # same grid (no resampling planned): nothing to interpolate
        for start in range(0, out_z, slab):
            yield slice(start, min(out_z, start + slab)), maps[:, start:start + slab].float()
        return
    low, high, weight = _source_positions(out_z, maps.shape[1])
    for start in range(0, out_z, slab):
        stop = min(out_z, start + slab)
        first, last = int(low[start]), int(high[stop - 1])
        planes = _resize_plane(maps[:, first:last + 1], plane)  # only the network slices this slab needs
        lo = torch.from_numpy(low[start:stop] - first)
        hi = torch.from_numpy(high[start:stop] - first)
        w = torch.from_numpy(weight[start:stop]).view(1, -1, *([1] * len(plane)))
        blended = planes[:, lo].mul_(1 - w)  # in place: two slab copies, not five
        yield slice(start, stop), blended.add_(planes[:, hi].mul_(w))


def restore_labels(
    probabilities: torch.Tensor,
    crop_bbox: list[list[int]],
    original_shape: list[int],
    to_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Label map (uint8, or uint16 past 255 classes) on the original grid from network-grid probabilities.

    ``to_labels`` turns a ``(K, ...)`` probability slab into labels (default: argmax); voxels outside the crop
    are background.
    """
    dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
    out = np.zeros(original_shape, dtype=dtype)
    crop = [b - a for a, b in crop_bbox]
    region = tuple(slice(a, b) for a, b in crop_bbox)
    target = out[region]
    decide = to_labels or (lambda p: p.argmax(0))
    for rows, slab in restored_slabs(probabilities, crop):
        target[rows] = decide(slab).numpy().astype(dtype)
    return out


def restore_maps(maps: torch.Tensor, crop_bbox: list[list[int]], original_shape: list[int], fill: list[float],
                 dtype: type = np.float32) -> np.ndarray:
    """Float maps ``(K, *original)`` (probabilities or uncertainty); outside the crop each channel is ``fill[k]``."""
    out = np.empty((maps.shape[0], *original_shape), dtype=dtype)
    for k, value in enumerate(fill):
        out[k] = value
    crop = [b - a for a, b in crop_bbox]
    region = (slice(None),) + tuple(slice(a, b) for a, b in crop_bbox)
    target = out[region]
    for rows, slab in restored_slabs(maps, crop):
        target[:, rows] = slab.numpy().astype(dtype)
    return out
