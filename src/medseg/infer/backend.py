"""The onnxruntime backend: a bundle's ``fold_K.onnx`` files (written by ``medseg export``) run as callables
that :func:`medseg.infer.sliding.predict_logits` treats like the torch networks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.bundle import Bundle
from medseg.errors import MedsegError

BACKENDS = ("torch", "onnxruntime")


def bundle_onnx_path(bundle: Bundle, fold: str) -> Path:
    """Where the onnxruntime backend looks for a fold's network: ``bundle/fold_K.onnx``."""
    return bundle.folder / f"fold_{fold}.onnx"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MedsegError("onnxruntime is not installed", None, "pip install onnxruntime") from None
    return onnxruntime


class OnnxModule(nn.Module):
    """An onnxruntime session that sliding-window code can call like the torch network.

    It holds one empty parameter so ``next(model.parameters()).device`` says where inputs go (the CPU: the
    session takes numpy arrays and returns CPU tensors).
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ("CUDAExecutionProvider", "CPUExecutionProvider")) if p in available]
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=chosen or available)
        self.input_name = self.session.get_inputs()[0].name
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def load_onnx_models(bundle: Bundle, folds: Sequence[str] | None = None, threads: int | None = None) -> \
        list[OnnxModule]:
    """Sessions for ``bundle/fold_K.onnx``; a clear error when a file is missing or older than its weights."""
    models = []
    for fold in folds or bundle.folds:
        path = bundle_onnx_path(bundle, fold)
        if not path.exists():
            raise MedsegError(f"has no {path.name} for the onnxruntime backend", bundle.folder,
                              f"run `medseg export {bundle.folder}` first")
        if path.stat().st_mtime < bundle.fold_weights(fold).stat().st_mtime:
            raise MedsegError(f"{path.name} is older than fold_{fold}.safetensors (stale export)", bundle.folder,
                              f"run `medseg export {bundle.folder}` again")
        models.append(OnnxModule(path, threads=threads))
    return models
