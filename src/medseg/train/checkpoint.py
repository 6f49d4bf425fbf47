"""Checkpoints that resume exactly and can never execute code.

Weights go to ``<name>.safetensors``; the optimiser, the step and the random states to ``<name>_state.pt``
(tensors and plain values only, read back with ``torch.load(weights_only=True)``). Both are written to a
temporary name and renamed, so a ``kill -9`` leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.models.weights import load_weights, save_weights

__all__ = ["load_state", "load_weights", "save_state", "save_weights"]


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, foreign pickle refused by weights_only, ...
        raise MedsegError(f"is not a medseg training state ({type(exc).__name__}: {str(exc)[:200]})", path,
                          "resume from a run directory written by `medseg train`, or start without --resume") from None
