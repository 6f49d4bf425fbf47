"""Plain and residual U-Nets: MONAI's DynUNet with deep-supervision heads at their own resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer

from medseg.models._common import ACT, Strides, check_input, norm_spec, size_divisor

_NO_HEAD = torch.empty(0)


class NativeDSDynUNet(DynUNet):
    """DynUNet (nnU-Net's U-Net) that returns deep-supervision logits as a list at native resolution.

    Stock DynUNet upsamples every supervision head to full resolution and stacks them, which costs memory and
    time for nothing (the loss would have to compare full-size maps or downsample them again). This thin
    subclass keeps DynUNet's layers and weights (same ``state_dict`` keys) and changes only the output:

    * ``eval()`` or no deep supervision: logits ``(B, C, *spatial)``;
    * ``train()`` with deep supervision: ``[full, 1/2, 1/4, ...]`` (``len(features) - 1`` tensors), each at
      its own resolution.

    The heads are also switched off in ``eval()`` (stock DynUNet computes them and throws them away).
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int],
        strides: Strides,
        deep_supervision: bool,
        norm: str,
        res_block: bool,
    ) -> None:
        depth = len(features)
        all_strides = [(1,) * spatial_dims, *strides]
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=[3] * depth,
            strides=all_strides,
            upsample_kernel_size=list(strides),
            filters=list(features),
            norm_name=norm_spec(norm),
            act_name=ACT,
            deep_supervision=deep_supervision,
            # every decoder level but the full-resolution one (which is output_block) gets a head
            deep_supr_num=depth - 2,
            res_block=res_block,
        )
        self.size_divisor = size_divisor(strides, spatial_dims)
        self._head_layers = [
            m for m in self.modules() if isinstance(m, DynUNetSkipLayer) and m.super_head is not None
        ]
        self.train(self.training)

    def train(self, mode: bool = True) -> NativeDSDynUNet:
        """Set train/eval mode; supervision heads run only in train mode."""
        super().train(mode)
        for layer in getattr(self, "_head_layers", ()):
            layer.heads = self.heads if mode else None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        check_input(x, self.in_channels, self.size_divisor)
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            heads = list(self.heads)
            # drop the shared list's references so activations are not kept alive until the next call
            for i in range(len(self.heads)):
                self.heads[i] = _NO_HEAD
            return [out, *heads]
        return out
