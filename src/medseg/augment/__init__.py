"""Data augmentation for segmentation training (nnU-Net-like), batched on torch tensors for speed on CPU.

>>> aug = BatchAugmenter(AugmentConfig(), spatial_dims=3, seed=0)
>>> image, label = aug(image, label)  # (B, C, Z, Y, X) float, (B, 1, Z, Y, X) integer

``python -m medseg.augment`` prints a quick timing of one 3D batch.
"""

from medseg.augment.batch import BatchAugmenter
from medseg.augment.config import AugmentConfig

__all__ = ["AugmentConfig", "BatchAugmenter"]
