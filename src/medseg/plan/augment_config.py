"""The augmentation settings: one plain, JSON-serialisable dataclass with nnU-Net-like defaults.

It lives in the plan package because a plan carries it (``Plan.augment``, ``plan.json``'s ``augment``); the
augmenter that applies it is :mod:`medseg.augment`, which re-exports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

PADDING_MODES = ("zeros", "border", "reflection")


@dataclass
class AugmentConfig:
    """Probabilities and ranges of every augmentation; the defaults follow nnU-Net's training pipeline.

    All probabilities are per sample (each sample of a batch is drawn independently). Ranges are
    ``(low, high)`` pairs sampled uniformly unless stated otherwise. ``dataclasses.asdict`` / :meth:`to_dict`
    give plain JSON-ready values (lists, as ``plan.json`` holds them, from :meth:`to_dict`); :meth:`from_dict`
    turns the JSON lists back into tuples.

    Spatial transforms (rotation, scaling, elastic deformation) are fused into a single resampling per batch.

    Attributes:
        p_rotate: probability of a rotation.
        rotate_deg: rotation angle in degrees: a float ``d`` means uniform in ``[-d, d]``, a pair is the exact
            range (``(90, 90)`` is a fixed 90 degree rotation). In 3D an angle is drawn about each of the three
            axes (composed as R0 @ R1 @ R2). A positive angle about spatial axis ``a`` turns the content the way
            ``torch.rot90(k=1)`` does in the plane of the two other spatial axes (2D: ``dims=(-2, -1)``; 3D about
            axis 0: the Y-X plane, axis 1: Z-X, axis 2: Z-Y).
        rotate_deg_inplane_only: 3D only: rotate about axis 0 (the through-plane Z axis) only, i.e. in the Y-X
            plane, for strongly anisotropic data (nnU-Net's "dummy 2D" augmentation).
        p_scale: probability of a scaling (same factor on every axis).
        scale_inplane_only: 3D only: zoom in the Y-X plane only, leave Z (axis 0) alone (nnU-Net's "dummy 2D").
        scale_range: zoom factor of the content: ``s > 1`` enlarges structures, ``s < 1`` shrinks them. Drawn
            like nnU-Net: with probability 0.5 from ``[low, 1]``, otherwise from ``[1, high]``.
        p_elastic: probability of an elastic deformation.
        elastic_alpha: range of the displacement magnitude in voxels (standard deviation of the random
            displacement at the control points).
        elastic_sigma: smoothness: spacing in voxels of the coarse control-point grid whose random
            displacements are interpolated (linearly) to a dense field.
        mirror_axes: spatial axes (0 = first spatial dim, i.e. Z in 3D and Y in 2D) that may be mirrored;
            ``None`` means all spatial axes, ``()`` none.
        p_mirror: probability of mirroring, per sample and per axis in ``mirror_axes``.
        p_gamma: probability of a gamma transform (image rescaled to [0, 1] per sample, ``x ** gamma``, back).
        p_gamma_invert: probability of a gamma transform on the inverted image (``-x``), applied before the
            plain gamma like nnU-Net (0.1 there).
        gamma_range: gamma range; drawn with probability 0.5 below 1, otherwise above 1 (like nnU-Net).
        gamma_retain_stats: restore the mean and standard deviation after a gamma transform (nnU-Net: yes).
        p_brightness: probability of a multiplicative brightness change.
        brightness_range: multiplier range.
        p_contrast: probability of a contrast change (scale around the mean, clip to the original min/max).
        contrast_range: contrast factor range; drawn with probability 0.5 below 1, otherwise above 1.
        p_noise: probability of additive Gaussian noise.
        noise_variance: range of the noise variance.
        p_blur: probability of a Gaussian blur.
        blur_sigma: range of the blur sigma in voxels (same on every axis).
        p_lowres: probability of a low-resolution simulation (nearest down-sampling, linear up-sampling).
        lowres_zoom: range of the down-sampling factor.
        intensity_per_channel: draw the intensity parameters per channel instead of once per sample.
        image_padding: ``grid_sample`` padding of the image outside the patch: "zeros" (default, as nnU-Net;
            after z-score normalisation 0 is the mean intensity, a flat region easily told apart from
            tissue and consistent with the background label padded in), "border" or "reflection".
        label_padding: padding of the label: "zeros" (fills ``label_pad_value``), "border" or "reflection".
        label_pad_value: label written where the sampling grid leaves the patch when ``label_padding="zeros"``.
    """

    p_rotate: float = 0.2
    rotate_deg: float | tuple[float, float] = 30.0
    rotate_deg_inplane_only: bool = False
    p_scale: float = 0.2
    scale_inplane_only: bool = False
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0
    elastic_alpha: tuple[float, float] = (1.0, 4.0)
    elastic_sigma: float = 8.0
    mirror_axes: tuple[int, ...] | None = None
    p_mirror: float = 0.5
    p_gamma: float = 0.3
    p_gamma_invert: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gamma_retain_stats: bool = True
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_lowres: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    intensity_per_channel: bool = False
    image_padding: str = "zeros"
    label_padding: str = "zeros"
    label_pad_value: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON
                setattr(self, f.name, tuple(value))
        for f in fields(self):
            if f.name.startswith("p_"):
                p = getattr(self, f.name)
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"{f.name} must be a probability in [0, 1], got {p}")
        for name in ("image_padding", "label_padding"):
            if getattr(self, name) not in PADDING_MODES:
                raise ValueError(f"{name} must be one of {PADDING_MODES}, got {getattr(self, name)!r}")
        for name in ("scale_range", "elastic_alpha", "gamma_range", "brightness_range", "contrast_range",
                     "noise_variance", "blur_sigma", "lowres_zoom"):
            rng = getattr(self, name)
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {rng}")
        rot = self.rotate_deg
        if isinstance(rot, tuple) and (len(rot) != 2 or rot[0] > rot[1]):
            raise ValueError(f"rotate_deg must be a float or a (low, high) pair, got {self.rotate_deg}")
        if self.scale_range[0] <= 0 or self.gamma_range[0] <= 0 or self.lowres_zoom[0] <= 0:
            raise ValueError("scale_range, gamma_range and lowres_zoom must be positive")
        if self.elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be positive, got {self.elastic_sigma}")

    @property
    def rotate_range(self) -> tuple[float, float]:
        """The rotation angle range in degrees as a (low, high) pair."""
        if isinstance(self.rotate_deg, tuple):
            return float(self.rotate_deg[0]), float(self.rotate_deg[1])
        d = abs(float(self.rotate_deg))
        return -d, d

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields in JSON types (tuples become lists), so it equals its JSON round trip."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; lists (from JSON) become tuples, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration that changes nothing (all probabilities 0, no mirror axes)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")}, mirror_axes=())
