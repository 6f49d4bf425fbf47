"""Network weights as safetensors: no pickles, so a weights file can never execute code."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Map each state-dict name to the first name of the tensor it shares storage with.

    A module may register the same tensor under two names (MONAI's DynUNet registers its blocks twice, in
    ``skip_layers`` and in the lists); safetensors stores each tensor once.
    """
    first_by_pointer: dict[int, str] = {}
    names = {}
    for name, tensor in model.state_dict().items():
        names[name] = first_by_pointer.setdefault(tensor.data_ptr(), name) if tensor.numel() else name
    return names


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    canonical = _canonical_names(model)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
             if canonical[name] == name}
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
    canonical = _canonical_names(model)
    missing = sorted({c for c in canonical.values() if c not in stored})
    unexpected = sorted(set(stored) - set(canonical.values()))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MedsegError(f"weights do not fit this network ({detail})", path,
                          "the checkpoint was trained with another plan")
    try:
        model.load_state_dict({name: stored[c] for name, c in canonical.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MedsegError(f"weights do not fit this network ({first})", path,
                          "the checkpoint was trained with another plan") from None
