"""Checkpoints that resume exactly and can never execute code.

Weights go to ``<name>.safetensors``; the optimiser, the step and the random states to ``<name>_state.pt``
(tensors and plain values only, read back with ``torch.load(weights_only=True)``). Both are written to a
temporary name and renamed, so a ``kill -9`` leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Weights as safetensors; ``save_model`` de-duplicates tensors that modules share (MONAI's DynUNet)."""
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise MedsegError("does not exist", path, "check the bundle or run folder")
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (OSError, SafetensorError) as exc:
        raise MedsegError(f"is not a readable safetensors weights file ({exc})", path,
                          "use a checkpoint written by medseg") from None
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MedsegError(f"weights do not fit this network ({first})", path,
                          "the checkpoint was trained with another plan") from None


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
