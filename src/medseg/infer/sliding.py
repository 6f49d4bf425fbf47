"""Sliding-window inference on a preprocessed array (MONAI's Gaussian-weighted sliding window)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    data: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    precision: str = "fp32",
    sw_batch_size: int = 2,
) -> torch.Tensor:
    """Logits ``(K, *S)`` for one preprocessed case ``(C, *S)``; mirror TTA averages over flipped copies."""
    model.eval()
    device = next(model.parameters()).device
    batch = data[None].to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, precision):
            return sliding_window_inference(
                x, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, predictor=model, overlap=overlap,
                mode="gaussian", padding_mode="constant",
            ).float()

    logits = run(batch)
    flips = [(axis + 2,) for axis in mirror_axes]
    for dims in flips:
        logits += torch.flip(run(torch.flip(batch, dims)), dims)
    return (logits / (1 + len(flips)))[0].cpu()


def predict_probabilities(model: nn.Module, data: torch.Tensor, patch_size: Sequence[int], **kwargs: object) -> \
        torch.Tensor:
    return torch.softmax(predict_logits(model, data, patch_size, **kwargs), dim=0)  # type: ignore[arg-type]
