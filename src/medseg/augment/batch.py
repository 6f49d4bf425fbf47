"""`BatchAugmenter`: nnU-Net-like augmentation of whole batches of torch tensors at once.

Spatial transforms of all selected samples go through one ``affine_grid`` and one pair of ``grid_sample``
calls (image linear, label nearest, same grid); intensity transforms run batched on the selected samples;
mirroring is ``torch.flip``. All random numbers come from one ``torch.Generator`` (CPU), so a seed fixes the
output and :meth:`BatchAugmenter.state_dict` resumes the exact stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from medseg.augment import intensity
from medseg.augment.spatial import elastic_displacement, resample, sampling_grid, sampling_matrix
from medseg.plan.augment_config import AugmentConfig


class BatchAugmenter:
    """Random augmentation of (image, label) batches, parameters drawn independently per sample.

    Order (as nnU-Net): rotation/scaling/elastic (fused, one resampling), Gaussian noise, Gaussian blur,
    brightness, contrast, low resolution, inverted gamma, gamma, mirroring. Intensity transforms touch the
    image only. Samples without any spatial transform are not resampled (bit-exact), and when no sample of
    the batch gets one, ``grid_sample`` is skipped altogether.

    The random stream consumed per call depends only on the batch/channel counts and the samples drawn, not on
    the data, so the same seed and input shapes give identical outputs.
    """

    def __init__(self, config: AugmentConfig, spatial_dims: int, seed: int | None = None) -> None:
        """
        Args:
            config: probabilities and ranges.
            spatial_dims: 2 for (B, C, Y, X) batches, 3 for (B, C, Z, Y, X).
            seed: seed of the generator; ``None`` seeds it non-deterministically.
        """
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        axes = tuple(range(spatial_dims)) if config.mirror_axes is None else tuple(config.mirror_axes)
        bad = [a for a in axes if not 0 <= a < spatial_dims]
        if bad:
            raise ValueError(f"mirror_axes {axes} out of range for {spatial_dims} spatial dims")
        self.config = config
        self.spatial_dims = spatial_dims
        self.mirror_axes = tuple(sorted(set(axes)))
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    # -- random numbers -------------------------------------------------------------------------------------
    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _uniform(self, bounds: tuple[float, float], *shape: int) -> Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * self._rand(*shape)

    def _two_sided(self, bounds: tuple[float, float], *shape: int) -> Tensor:
        """nnU-Net's draw for factors around 1: half the time from [low, 1], otherwise from [max(low, 1), high]."""
        lo, hi = bounds
        below = self._rand(*shape) < 0.5
        low_part = self._uniform((lo, min(1.0, hi)), *shape)
        high_part = self._uniform((max(lo, 1.0), hi), *shape)
        use_low = (below | (hi <= 1.0)) & (lo < 1.0)
        return torch.where(use_low, low_part, high_part)

    def _flags(self, p: float, n: int) -> Tensor:
        return self._rand(n) < p

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator state (plus the settings, for reference) to resume the exact random stream."""
        return {"generator": self.generator.get_state(), "spatial_dims": self.spatial_dims,
                "config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])

    # -- the transform --------------------------------------------------------------------------------------
    def _check(self, image: Tensor, label: Tensor) -> None:
        nd = self.spatial_dims + 2
        if image.ndim != nd or label.ndim != nd:
            raise ValueError(f"expected image and label with {nd} dims (B, C, *spatial), got {tuple(image.shape)} "
                             f"and {tuple(label.shape)}")
        if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or size")
        if not image.is_floating_point():
            raise TypeError(f"image must be floating point, got {image.dtype}")
        if label.is_floating_point() or label.is_complex():
            raise TypeError(f"label must be an integer tensor, got {label.dtype}")

    @torch.no_grad()
    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """Augment a batch.

        Args:
            image: float (B, C, *S).
            label: integer (B, 1, *S) (int64, uint8, int8, ...; any channel count works).

        Returns:
            New tensors with the same shapes, dtypes and device; the inputs are not modified.
        """
        self._check(image, label)
        cfg, d = self.config, self.spatial_dims
        b, c = image.shape[:2]
        spatial = tuple(image.shape[2:])
        cp = c if cfg.intensity_per_channel else 1

        # Every parameter for every sample, in a fixed order (the stream depends only on B and C).
        rot = self._flags(cfg.p_rotate, b)
        angles = self._uniform(cfg.rotate_range, b, 1 if d == 2 else 3) * (math.pi / 180.0)
        if d == 3 and cfg.rotate_deg_inplane_only:
            angles[:, 1:] = 0.0
        scl = self._flags(cfg.p_scale, b)
        scales = self._two_sided(cfg.scale_range, b)
        ela = self._flags(cfg.p_elastic, b)
        alphas = self._uniform(cfg.elastic_alpha, b)
        mirror = self._rand(b, d) < cfg.p_mirror
        noise, noise_var = self._flags(cfg.p_noise, b), self._uniform(cfg.noise_variance, b, cp)
        blur, blur_sigma = self._flags(cfg.p_blur, b), self._uniform(cfg.blur_sigma, b, cp)
        bright, bright_f = self._flags(cfg.p_brightness, b), self._uniform(cfg.brightness_range, b, cp)
        contr, contr_f = self._flags(cfg.p_contrast, b), self._two_sided(cfg.contrast_range, b, cp)
        lowres, lowres_z = self._flags(cfg.p_lowres, b), self._uniform(cfg.lowres_zoom, b)
        ginv, ginv_g = self._flags(cfg.p_gamma_invert, b), self._two_sided(cfg.gamma_range, b, cp)
        gam, gam_g = self._flags(cfg.p_gamma, b), self._two_sided(cfg.gamma_range, b, cp)

        image, label = image.clone(), label.clone()

        # Spatial: one grid for all selected samples.
        spatial_sel = (rot | scl | ela).nonzero().flatten()
        if spatial_sel.numel():
            i = spatial_sel
            zoom = torch.where(scl[i], scales[i], 1.0)[:, None].repeat(1, d)
            if d == 3 and cfg.scale_inplane_only:
                zoom[:, 0] = 1.0
            matrix = sampling_matrix(torch.where(rot[i, None], angles[i], 0.0), zoom, d)
            disp = None
            if bool(ela[i].any()):
                disp = elastic_displacement(torch.where(ela[i], alphas[i], 0.0), cfg.elastic_sigma, spatial,
                                            self.generator)
            grid = sampling_grid(matrix, spatial, disp, dtype=torch.float32)
            new_image, new_label = resample(image[i.to(image.device)], label[i.to(label.device)], grid,
                                            cfg.image_padding, cfg.label_padding, cfg.label_pad_value)
            _put(image, i, new_image)
            _put(label, i, new_label)

        gen = self.generator
        image = _apply(image, noise, lambda x, i: intensity.gaussian_noise(x, noise_var[i], gen))
        image = _apply(image, blur, lambda x, i: intensity.gaussian_blur(x, blur_sigma[i]))
        image = _apply(image, bright, lambda x, i: intensity.brightness(x, bright_f[i]))
        image = _apply(image, contr, lambda x, i: intensity.contrast(x, contr_f[i]))
        image = _apply(image, lowres, lambda x, i: intensity.simulate_lowres(x, lowres_z[i]))
        image = _apply(image, ginv, lambda x, i: intensity.gamma(x, ginv_g[i], True, cfg.gamma_retain_stats))
        image = _apply(image, gam, lambda x, i: intensity.gamma(x, gam_g[i], False, cfg.gamma_retain_stats))

        for axis in self.mirror_axes:
            sel = mirror[:, axis].nonzero().flatten()
            if sel.numel() == b:
                image, label = image.flip(axis + 2), label.flip(axis + 2)
            elif sel.numel():
                _put(image, sel, image[sel.to(image.device)].flip(axis + 2))
                _put(label, sel, label[sel.to(label.device)].flip(axis + 2))
        return image, label


def _put(target: Tensor, index: Tensor, values: Tensor) -> None:
    """target[index] = values (index on the CPU, target anywhere)."""
    if index.numel() == target.shape[0]:
        target.copy_(values)
    else:
        target[index.to(target.device)] = values


def _apply(image: Tensor, flags: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Run ``fn(subset, index)`` on the flagged samples only; returns the (possibly new) batch tensor."""
    index = flags.nonzero().flatten()
    if index.numel() == 0:
        return image
    if index.numel() == image.shape[0]:
        return fn(image, index).to(image.dtype)
    _put(image, index, fn(image[index.to(image.device)], index).to(image.dtype))
    return image
