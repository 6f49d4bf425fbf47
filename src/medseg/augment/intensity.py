"""Batched intensity transforms on images (N, C, *S); parameters are (N, 1) per sample or (N, C) per channel.

Every function returns a new tensor and works on any number of spatial dims (2D and 3D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-7


def _bcast(param: Tensor, x: Tensor) -> Tensor:
    """(N, 1) or (N, C) parameters -> broadcastable against x (N, C, *S)."""
    return param.to(device=x.device, dtype=x.dtype).reshape(*param.shape, *([1] * (x.ndim - 2)))


def _spatial(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Multiplicative brightness: x * factor."""
    return x * _bcast(factor, x)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Scale around the mean per sample/channel, then clip to the original min/max (nnU-Net, preserve_range)."""
    dims = _spatial(x)
    mean = x.mean(dims, keepdim=True)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return torch.clamp((x - mean) * _bcast(factor, x) + mean, lo, hi)


def gamma(x: Tensor, gamma_: Tensor, invert: bool = False, retain_stats: bool = True) -> Tensor:
    """nnU-Net's gamma: rescale to [0, 1] per sample/channel, ``** gamma``, rescale back.

    ``invert`` applies it to ``-x`` (and negates back); ``retain_stats`` restores the mean and standard deviation.
    """
    dims = _spatial(x)
    if invert:
        x = -x
    if retain_stats:
        mean0, std0 = x.mean(dims, keepdim=True), x.std(dims, keepdim=True, correction=0)
    lo = x.amin(dims, keepdim=True)
    rng = x.amax(dims, keepdim=True) - lo + _EPS
    out = ((x - lo) / rng).clamp_(min=0.0).pow_(_bcast(gamma_, x)).mul_(rng).add_(lo)
    if retain_stats:
        mean1, std1 = out.mean(dims, keepdim=True), out.std(dims, keepdim=True, correction=0)
        out = (out - mean1) / (std1 + 1e-8) * std0 + mean0
    return -out if invert else out


def gaussian_noise(x: Tensor, variance: Tensor, generator: torch.Generator) -> Tensor:
    """Additive zero-mean Gaussian noise with the given variance (drawn on the CPU generator, then moved)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + noise * _bcast(variance, x).sqrt()


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a sigma per sample/channel (same on every axis), edges replicated.

    All samples and channels go through one grouped convolution per axis: the kernels have the length of the
    widest one (radius ``ceil(3 * max sigma)``), narrower Gaussians are simply ~0 in their tails.
    """
    n, c, *spatial = x.shape
    d = len(spatial)
    sig = sigma.to(torch.float64).expand(n, c).reshape(-1, 1).clamp(min=1e-3)
    radius = max(1, math.ceil(3.0 * float(sig.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64).reshape(1, -1)
    kernels = torch.exp(-0.5 * (t / sig) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(device=x.device, dtype=x.dtype)  # (n*c, K)
    conv = F.conv2d if d == 2 else F.conv3d
    out = x.reshape(1, n * c, *spatial)
    for axis in range(d):
        if spatial[axis] == 1:
            continue
        pad = [0] * (2 * d)
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius
        shape = [1] * d
        shape[axis] = 2 * radius + 1
        out = conv(F.pad(out, pad, mode="replicate"), kernels.reshape(n * c, 1, *shape), groups=n * c)
    return out.reshape(x.shape)


def simulate_lowres(x: Tensor, zoom: Tensor) -> Tensor:
    """Down-sample each sample by its ``zoom`` (N,) (nearest), then up-sample back (linear), like nnU-Net."""
    spatial = x.shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        small = [max(1, round(s * float(zoom[i]))) for s in spatial]
        down = F.interpolate(x[i : i + 1], size=small, mode="nearest")
        out[i : i + 1] = F.interpolate(down, size=tuple(spatial), mode=mode, align_corners=False)
    return out
