"""Network weights as safetensors: no pickles, so a weights file can never execute code."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise MedsegError("does not exist", path, "check the bundle or run folder")
    try:
        stored = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise MedsegError(f"is not a readable safetensors weights file ({exc})", path,
                          "use a checkpoint written by medseg") from None
    expected = set(model.state_dict())
    missing = sorted(expected - set(stored))
    unexpected = sorted(set(stored) - expected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MedsegError(f"weights do not fit this network ({detail})", path,
                          "the checkpoint was trained with another plan")
    try:
        model.load_state_dict(stored, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MedsegError(f"weights do not fit this network ({first})", path,
                          "the checkpoint was trained with another plan") from None
