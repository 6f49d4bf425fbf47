"""Segmentation networks by name: :func:`build_model`, :data:`MODEL_NAMES`, :func:`count_parameters`.

Every model takes ``(B, in_channels, *spatial)`` with each spatial axis divisible by the product of the
strides (``model.size_divisor``) and in ``eval()`` mode returns logits ``(B, num_classes, *spatial)``.
Built with ``deep_supervision=True``, in ``train()`` mode it returns a list of logits ``[full, 1/2, ...]``
at their own resolutions, ``len(features) - 1`` of them (every decoder level; the bottleneck gets no head).

=============  ==============================================================================================
``unet``       nnU-Net's plain U-Net (MONAI DynUNet's layout in own code; blocks.py says why): 2x
               conv-norm-LeakyReLU per stage, strided-conv downsampling, transposed-conv upsampling.
``resunet``    the same with residual blocks (DynUNet ``res_block=True``) in encoder and bottleneck.
``fcn``        fully convolutional network: U-Net encoder, no skip concatenation, per-stage 1x1 class scores
               fused by linear upsampling (FCN-8s style, down to full resolution). Cheapest decoder.
``resnet_unet`` ResNet encoder (3x3 stem, BasicBlocks, 1/2/2/... per stage, random init) + U-Net decoder.
=============  ==============================================================================================

All four support deep supervision (``fcn``'s heads are its fused per-level scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import nn

from medseg.errors import MedsegError
from medseg.models._common import check_features, normalise_strides
from medseg.models.blocks import NORM_NAMES, norm_layer
from medseg.models.fcn import FCN
from medseg.models.resnet_unet import ResNetUNet
from medseg.models.unet import UNet

if TYPE_CHECKING:
    from medseg.plan import Plan

__all__ = [
    "build_network",
    "FCN",
    "MODEL_NAMES",
    "NORM_NAMES",
    "ResNetUNet",
    "UNet",
    "build_model",
    "count_parameters",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": lambda **kw: UNet(res_block=False, **kw),
    "resunet": lambda **kw: UNet(res_block=True, **kw),
    "fcn": FCN,
    "resnet_unet": ResNetUNet,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    features: Sequence[int],
    deep_supervision: bool = False,
    norm: str = "instance",
    strides: Sequence[Sequence[int] | int] | None = None,
) -> nn.Module:
    """Build the network ``name`` (one of :data:`MODEL_NAMES`), randomly initialised.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (modalities).
        num_classes: output channels, background included.
        features: channel width per resolution stage, at least 3 stages, e.g. ``(32, 64, 128, 256)``.
        deep_supervision: in ``train()`` mode return ``[full, 1/2, ...]`` logits (see module docstring).
        norm: ``"instance"`` (affine, nnU-Net default) or ``"batch"``.
        strides: per-stage downsampling, ``len(features) - 1`` entries (or ``len(features)`` with an all-ones
            first entry); each an int or one int per axis, e.g. ``[(1, 2, 2), (2, 2, 2)]``. Default: all 2.

    The returned module has ``size_divisor``: per axis, what the input's spatial size must be divisible by.
    Raises :class:`~medseg.errors.MedsegError` for an unknown name/norm or inconsistent sizes.
    """
    if name not in _BUILDERS:
        raise MedsegError(f"unknown model {name!r}", fix=f"use one of: {', '.join(MODEL_NAMES)}")
    if spatial_dims not in (2, 3):
        raise MedsegError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise MedsegError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    widths = check_features(features)
    norm_layer(norm, spatial_dims, 1)  # validates the name before building
    return _BUILDERS[name](
        spatial_dims=spatial_dims,
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        features=widths,
        strides=normalise_strides(spatial_dims, len(widths), strides),
        deep_supervision=bool(deep_supervision),
        norm=norm,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter scalars in ``model``; only those with ``requires_grad`` if ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_network(plan: Plan) -> nn.Module:
    """The network a plan describes (randomly initialised)."""
    return build_model(plan.model, spatial_dims=plan.dim, in_channels=plan.channels, num_classes=plan.num_outputs,
                       features=plan.features, strides=plan.strides, deep_supervision=plan.deep_supervision)
