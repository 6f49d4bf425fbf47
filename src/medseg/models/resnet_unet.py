"""U-Net with a ResNet-style encoder (BasicBlocks), 2D or 3D, randomly initialised.

Own module, assembled from the U-Net's blocks (:mod:`medseg.models.blocks`): MONAI's ``FlexibleUNet``/ResNet
encoders fix the channel widths (64..512) and use a 7x7 stride-2 stem plus max-pool, which ignores
``features``/``strides`` and loses full-resolution detail. ``ResBlock`` is exactly a ResNet BasicBlock
(conv-norm-act-conv-norm, 1x1 projection shortcut when the shape changes, act after the sum).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models._common import Strides, check_input, size_divisor
from medseg.models.blocks import OutBlock, ResBlock, UpBlock, activation, conv_layer, init_weights, norm_layer


class ResNetUNet(nn.Module):
    """ResNet encoder + U-Net decoder (transposed conv, skip concatenation, two conv-norm-LeakyReLU).

    Encoder: a 3x3 conv stem, then per stage ``blocks_per_stage[i]`` BasicBlocks, the first of stages 1..
    strided (default ``(1, 2, 2, ...)``: ResNet-18-like but with one block at full resolution, as nnU-Net's
    residual-encoder U-Nets do, since full-resolution convolutions are the expensive ones).
    With deep supervision, ``train()`` mode returns ``[full, 1/2, ...]`` (``len(features) - 1`` tensors).
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
        blocks_per_stage: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        depth = len(features)
        blocks = tuple(blocks_per_stage) if blocks_per_stage is not None else (1,) + (2,) * (depth - 1)
        if len(blocks) != depth or min(blocks) < 1:
            raise ValueError(f"blocks_per_stage needs {depth} positive ints, got {blocks}")
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        self.size_divisor = size_divisor(strides, spatial_dims)
        all_strides = [(1,) * spatial_dims, *strides]

        self.stem = nn.Sequential(
            conv_layer(spatial_dims, in_channels, features[0], 3, 1),
            norm_layer(norm, spatial_dims, features[0]),
            activation(),
        )
        stages = []
        for i, (width, stride, n) in enumerate(zip(features, all_strides, blocks)):
            c_in = features[max(i - 1, 0)]
            stage = [ResBlock(spatial_dims, c_in, width, stride, norm)]
            stage += [ResBlock(spatial_dims, width, width, 1, norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        # ups[i] takes level i+1 up to level i
        self.ups = nn.ModuleList(
            UpBlock(spatial_dims, features[i + 1], features[i], strides[i], norm)
            for i in range(depth - 1)
        )
        n_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(
            OutBlock(spatial_dims, features[i], num_classes) for i in range(n_heads)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, self.in_channels, self.size_divisor)
        skips = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        want_ds = self.training and self.deep_supervision
        x = skips.pop()
        outs = []
        for level in range(len(self.ups) - 1, -1, -1):
            x = self.ups[level](x, skips.pop())
            if want_ds:
                outs.append(self.heads[level](x))
        return outs[::-1] if want_ds else self.heads[0](x)
