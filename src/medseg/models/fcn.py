"""A fully convolutional network (FCN-8s style skip fusion), 2D or 3D.

Own module: MONAI's ``FCN`` is 2D only and needs a torchvision ResNet-50 backbone. This one reuses the
U-Net's encoder blocks and replaces the U-Net decoder by 1x1 class-score convolutions fused by (bi/tri)linear
upsampling, so the decoder is almost free: the cheapest network in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models._common import Strides, check_input, size_divisor
from medseg.models.blocks import BasicBlock, OutBlock, init_weights


class FCN(nn.Module):
    """Encoder of conv-norm-LeakyReLU stages (strided conv downsampling), no skip concatenation.

    Every stage gets a 1x1 conv scoring the classes; starting at the deepest stage the scores are upsampled
    (linear interpolation) and added to the next finer stage's scores, up to full resolution.

    Deep supervision is supported: the fused scores at each level *are* native-resolution predictions, so in
    ``train()`` mode with ``deep_supervision=True`` it returns ``[full, 1/2, ...]`` (``len(features) - 1``
    tensors, like the U-Nets).
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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        self.size_divisor = size_divisor(strides, spatial_dims)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        all_strides = [(1,) * spatial_dims, *strides]
        widths_in = [in_channels, *features[:-1]]
        self.encoder = nn.ModuleList(
            BasicBlock(spatial_dims, c_in, c_out, s, norm)
            for c_in, c_out, s in zip(widths_in, features, all_strides)
        )
        self.scores = nn.ModuleList(OutBlock(spatial_dims, c, num_classes) for c in features)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, self.in_channels, self.size_divisor)
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        want_ds = self.training and self.deep_supervision
        score = self.scores[-1](feats.pop())
        outs = []
        for level in range(len(feats) - 1, -1, -1):
            feat = feats.pop()  # pop: lets eval-mode activations go as soon as they are used
            up = F.interpolate(score, size=feat.shape[2:], mode=self.mode, align_corners=False)
            score = self.scores[level](feat) + up
            if want_ds:
                outs.append(score)
        return outs[::-1] if want_ds else score
