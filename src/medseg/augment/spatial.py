"""Batched spatial transforms: one affine (rotation, scaling) per sample, an optional elastic field, one grid.

Conventions: spatial axes are numbered in tensor order (3D: 0=Z, 1=Y, 2=X; 2D: 0=Y, 1=X). Matrices are built in
that order on physical voxel offsets from the patch centre, then converted to the normalised, reversed
(x, y, z) coordinates that ``torch.nn.functional.affine_grid`` / ``grid_sample`` use, with
``align_corners=False``: a voxel offset ``p`` along an axis of size ``n`` is the normalised coordinate
``p / (n / 2)``. Doing the rotation on voxel offsets and scaling by the size per axis keeps a rotation a
rotation on non-cubic patches (no shear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _plane_rotation(angle: Tensor, i: int, j: int, n: int) -> Tensor:
    """(B, n, n) matrices that turn content by ``angle`` (radians) in the plane of axes i, j (from j towards -i)."""
    c, s = torch.cos(angle), torch.sin(angle)
    m = torch.eye(n, dtype=angle.dtype).repeat(angle.shape[0], 1, 1)
    m[:, i, i] = c
    m[:, i, j] = -s
    m[:, j, i] = s
    m[:, j, j] = c
    return m


def content_rotation(angles: Tensor, spatial_dims: int) -> Tensor:
    """Rotation matrices (B, d, d) in tensor axis order from angles in radians.

    2D: ``angles`` is (B,) or (B, 1). 3D: (B, 3), the angles about axes 0 (Z: in the Y-X plane), 1 (Y: Z-X plane)
    and 2 (X: Z-Y plane), composed as R0 @ R1 @ R2.
    """
    angles = angles.reshape(angles.shape[0], -1).to(torch.float64)
    if spatial_dims == 2:
        return _plane_rotation(angles[:, 0], 0, 1, 2)
    if spatial_dims == 3:
        r0 = _plane_rotation(angles[:, 0], 1, 2, 3)
        r1 = _plane_rotation(angles[:, 1], 0, 2, 3)
        r2 = _plane_rotation(angles[:, 2], 0, 1, 3)
        return r0 @ r1 @ r2
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def sampling_matrix(angles: Tensor, scales: Tensor, spatial_dims: int) -> Tensor:
    """Matrices A (B, d, d) mapping an output voxel offset q to the input offset p = A q that it samples.

    The content is rotated by ``angles`` and then zoomed by ``scales`` ((B,) the same on every axis, or (B, d) per
    axis), so A = R^-1 S^-1 = R^T diag(1 / scales).
    """
    rot = content_rotation(angles, spatial_dims)
    inv_scale = 1.0 / scales.to(torch.float64).reshape(scales.shape[0], -1).expand(-1, spatial_dims)
    return rot.transpose(-1, -2) * inv_scale.unsqueeze(1)


def to_normalised(matrix: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """Voxel-offset matrix (B, d, d) in tensor axis order -> matrix on ``affine_grid``'s normalised (x, y, z)."""
    half = torch.tensor([n / 2.0 for n in spatial_shape], dtype=matrix.dtype)
    theta = matrix * half.reshape(1, 1, -1) / half.reshape(1, -1, 1)  # D^-1 A D
    return theta.flip(-1).flip(-2)  # tensor order (z, y, x) -> grid order (x, y, z)


def elastic_displacement(
    alpha: Tensor, sigma: float, spatial_shape: Sequence[int], generator: torch.Generator
) -> Tensor:
    """Smooth random displacement fields (B, d, *S) in voxels, tensor axis order.

    Gaussian noise with standard deviation ``alpha`` (B,) on a coarse grid of control points ``sigma`` voxels
    apart, interpolated linearly to the full size.
    """
    d = len(spatial_shape)
    coarse_shape = [max(2, math.ceil(n / sigma) + 1) for n in spatial_shape]
    coarse = torch.randn((alpha.shape[0], d, *coarse_shape), generator=generator, dtype=torch.float32)
    coarse = coarse * alpha.to(torch.float32).reshape(-1, *([1] * (d + 1)))
    mode = "bilinear" if d == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(spatial_shape), mode=mode, align_corners=True)


def sampling_grid(
    matrix: Tensor, spatial_shape: Sequence[int], displacement: Tensor | None = None, dtype=torch.float32
) -> Tensor:
    """The ``grid_sample`` grid (B, *S, d) for p = A (q + u(q)) with A = ``matrix`` and u = ``displacement``."""
    b, d = matrix.shape[0], len(spatial_shape)
    theta_lin = to_normalised(matrix, spatial_shape)
    theta = torch.cat([theta_lin, torch.zeros(b, d, 1, dtype=theta_lin.dtype)], dim=-1).to(dtype)
    grid = F.affine_grid(theta, [b, 1, *spatial_shape], align_corners=False)
    if displacement is not None:
        half = torch.tensor([n / 2.0 for n in spatial_shape], dtype=torch.float32)
        u = (displacement / half.reshape(1, d, *([1] * d))).flip(1)  # normalised, grid order
        u = u.movedim(1, -1).reshape(b, -1, d).to(dtype)
        grid = grid + (u @ theta_lin.to(dtype).transpose(-1, -2)).reshape(grid.shape)
    return grid


def resample(
    image: Tensor,
    label: Tensor,
    grid: Tensor,
    image_padding: str = "zeros",
    label_padding: str = "zeros",
    label_pad_value: int = 0,
) -> tuple[Tensor, Tensor]:
    """Resample image (linear) and label (nearest) on the same grid; label keeps its dtype and values."""
    grid = grid.to(image.device)
    out_image = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode=image_padding,
                              align_corners=False)
    shift = label_pad_value if label_padding == "zeros" else 0
    lab = label.to(torch.float32)
    if shift:
        lab = lab - shift
    out_label = F.grid_sample(lab, grid.to(torch.float32), mode="nearest", padding_mode=label_padding,
                              align_corners=False)
    if shift:
        out_label = out_label + shift
    return out_image, out_label.round_().to(label.dtype)
