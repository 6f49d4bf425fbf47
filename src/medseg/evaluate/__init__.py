"""Segmentation metrics per case and class."""

from medseg.evaluate.overlap import dice_per_class

__all__ = ["dice_per_class"]
