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


def output_head_names(model: nn.Module) -> set[str]:
    """State-dict names of the output convolutions (the main head and every deep-supervision head): the
    parameters with one row per output class."""
    from medseg.models.blocks import OutBlock

    return {f"{prefix}.{name}" for prefix, module in model.named_modules() if isinstance(module, OutBlock)
            for name, _ in module.named_parameters()}


def load_mapped_weights(model: nn.Module, path: str | Path, class_map: dict[int, int]) -> list[int]:
    """Load ``path`` (safetensors) into ``model`` whose output classes differ: ``class_map`` maps each of the
    model's output channels to the stored one it starts from; every output head (deep supervision included) copies
    those rows and keeps its fresh initialisation for the others. Every other tensor must fit as it is.

    Returns the model's output channels that start fresh (in no ``class_map`` key)."""
    path = Path(path)
    try:
        stored = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise MedsegError(f"is not a readable safetensors weights file ({exc})", path,
                          "use a bundle written by medseg") from None
    current = model.state_dict()
    heads = output_head_names(model)
    missing, unexpected = sorted(set(current) - set(stored)), sorted(set(stored) - set(current))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MedsegError(f"weights do not fit this network ({detail})", path, "fine-tune with the bundle's plan")
    merged = {}
    for name, tensor in current.items():
        source = stored[name]
        if name in heads:
            if source.shape[1:] != tensor.shape[1:] or max(class_map.values(), default=-1) >= source.shape[0]:
                raise MedsegError(f"output head {name} {tuple(source.shape)} does not fit {tuple(tensor.shape)}",
                                  path, "check --label-map against the bundle's labels")
            fresh = tensor.detach().clone()
            for new, old in class_map.items():
                fresh[new] = source[old]
            merged[name] = fresh
        elif source.shape != tensor.shape:
            raise MedsegError(f"weights do not fit this network ({name}: {tuple(source.shape)} for "
                              f"{tuple(tensor.shape)})", path, "fine-tune with the bundle's plan")
        else:
            merged[name] = source
    model.load_state_dict(merged, strict=True)
    outputs = max((int(current[name].shape[0]) for name in heads), default=0)
    return [c for c in range(outputs) if c not in class_map]
