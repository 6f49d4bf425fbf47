"""Data augmentation for segmentation training (nnU-Net-like), batched on torch tensors for speed on CPU.

>>> aug = BatchAugmenter(AugmentConfig(), spatial_dims=3, seed=0)
>>> image, label = aug(image, label)  # (B, C, Z, Y, X) float, (B, 1, Z, Y, X) integer

``python -m medseg.augment`` prints a quick timing of one 3D batch.
"""

from __future__ import annotations

from typing import Any

from medseg.plan.augment_config import AugmentConfig  # defined with the plan that carries it

__all__ = ["AugmentConfig", "BatchAugmenter"]


def __getattr__(name: str) -> Any:
    """``BatchAugmenter`` on first use: it needs torch, while the plan (and so `medseg report`) needs only the
    config, and importing torch costs seconds to minutes on a small machine."""
    if name == "BatchAugmenter":
        from medseg.augment.batch import BatchAugmenter

        return BatchAugmenter
    raise AttributeError(f"module 'medseg.augment' has no attribute {name!r}")
