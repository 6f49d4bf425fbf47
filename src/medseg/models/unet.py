"""Plain and residual U-Nets (nnU-Net's architecture), with deep-supervision heads at their own resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models._common import Strides, check_input, size_divisor
from medseg.models.blocks import BasicBlock, OutBlock, ResBlock, UpBlock, init_weights


class UNet(nn.Module):
    """nnU-Net's U-Net: per stage two conv-norm-LeakyReLU (or a residual block), strided-conv downsampling,
    transposed-conv upsampling, skip concatenation.

    The same layers, names and parameter order as MONAI's ``DynUNet`` (so its bundles load), with two
    differences that save time and memory:

    * deep supervision returns ``[full, 1/2, 1/4, ...]`` (``len(features) - 1`` tensors), each at its own
      resolution; stock DynUNet upsamples every head to full resolution and stacks them, and the loss then
      compares full-size maps for nothing;
    * the heads run only in ``train()`` mode; ``eval()`` or no deep supervision returns logits
      ``(B, C, *spatial)``.
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
        super().__init__()
        block = ResBlock if res_block else BasicBlock
        dims, depth = spatial_dims, len(features)
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        self.size_divisor = size_divisor(strides, spatial_dims)
        # registration order = DynUNet's, so parameters() (and optimiser state) line up with its bundles
        self.input_block = block(dims, in_channels, features[0], 1, norm)
        self.downsamples = nn.ModuleList(
            block(dims, features[i], features[i + 1], strides[i], norm) for i in range(depth - 2)
        )
        self.bottleneck = block(dims, features[-2], features[-1], strides[-1], norm)
        # deepest first: upsamples[i] brings level depth-1-i up to level depth-2-i
        self.upsamples = nn.ModuleList(
            UpBlock(dims, features[level + 1], features[level], strides[level], norm)
            for level in range(depth - 2, -1, -1)
        )
        self.output_block = OutBlock(dims, features[0], num_classes)
        if deep_supervision:  # one head per decoder level 1 .. depth-2 (level 0 is output_block)
            self.deep_supervision_heads = nn.ModuleList(
                OutBlock(dims, features[level], num_classes) for level in range(1, depth - 1)
            )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, self.in_channels, self.size_divisor)
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips[-1])
        want_heads = self.training and self.deep_supervision
        heads: list[torch.Tensor] = []
        for up in self.upsamples:
            x = up(x, skips.pop())  # pop: lets each skip go as soon as it is used
            level = len(skips)
            if want_heads and level > 0:
                heads.append(self.deep_supervision_heads[level - 1](x))
        out = self.output_block(x)
        return [out, *heads[::-1]] if want_heads else out

