"""Inference: sliding-window prediction with Gaussian weighting and optional mirror TTA."""

from medseg.infer.sliding import predict_logits

__all__ = ["predict_logits"]
