"""ONNX export of a bundle's networks, the parity check against torch, and the onnxruntime backend.

    paths = export_onnx(load_bundle("run/bundle"))                 # bundle/fold_K.onnx, one file a fold
    report = parity_check(bundle, paths, sample)                   # max |logit difference|, argmax agreement
    models = load_onnx_models(bundle)                              # callables predict_logits can run

Each file holds one fold's network in eval mode: input ``image`` ``(B, C, *spatial)``, output ``logits``
``(B, K, *spatial)`` at full resolution only (deep-supervision heads are off in eval mode); batch and spatial
axes are dynamic (spatial sizes must stay divisible by the network's ``size_divisor``, as for torch).
The legacy TorchScript-tracing exporter is used: it needs no onnxscript and exports dynamic axes directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.bundle import Bundle
from medseg.errors import MedsegError
from medseg.infer.backend import OnnxModule, bundle_onnx_path
from medseg.infer.sliding import predict_logits
from medseg.io.atomic import atomic_path
from medseg.runtime import resolve_device

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17
SPATIAL_AXIS_NAMES = ("z", "y", "x")


def onnx_paths(bundle: Bundle, out: str | Path | None = None, folds: Sequence[str] | None = None) -> dict[str, Path]:
    """Output file per fold: inside the bundle without ``out``; ``out`` itself for one fold; else
    ``OUT_fold_K.onnx``."""
    folds = list(folds or bundle.folds)
    if out is None:
        return {fold: bundle_onnx_path(bundle, fold) for fold in folds}
    out = Path(out)
    if len(folds) == 1:
        return {folds[0]: out}
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return {fold: out.with_name(f"{stem}_fold_{fold}.onnx") for fold in folds}


def export_model(model: nn.Module, channels: int, spatial: Sequence[int], path: str | Path,
                 opset: int = OPSET) -> Path:
    """Trace ``model`` in eval mode on a zero input ``(1, channels, *spatial)`` on the model's device and write
    ONNX atomically (the file is the same graph whichever device traced it)."""
    model = model.eval()
    dim = len(spatial)
    axes = {0: "batch"} | {2 + i: name for i, name in enumerate(SPATIAL_AXIS_NAMES[-dim:])}
    example = torch.zeros(1, channels, *spatial, device=next(model.parameters()).device)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation note and tracer notes on shape checks
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: dict(axes)},
                          opset_version=opset, do_constant_folding=True)
    return Path(path)


def export_onnx(bundle: Bundle, out: str | Path | None = None, folds: Sequence[str] | None = None,
                opset: int = OPSET, device: str = "auto") -> dict[str, Path]:
    """Export every fold (or ``folds``) of ``bundle``, traced on ``device`` (``--device``); returns fold -> file."""
    target = resolve_device(device)
    wanted = list(folds or bundle.folds)
    missing = [f for f in wanted if f not in bundle.folds]
    if missing:
        raise MedsegError(f"has no fold {', '.join(missing)} (it has {', '.join(bundle.folds)})", bundle.folder,
                          "choose folds the bundle holds")
    paths = onnx_paths(bundle, out, wanted)
    for fold, model in zip(wanted, bundle.load_models(wanted)):
        export_model(model.to(target), bundle.plan.channels, bundle.plan.patch_size, paths[fold], opset)
    return paths


# ---- parity ----------------------------------------------------------------------------------------------------


@dataclass
class Parity:
    fold: str
    shape: list[int]  # spatial shape of the checked (preprocessed) case
    max_abs_logit_diff: float
    label_agreement: float  # fraction of voxels whose argmax label is the same

    def line(self) -> str:
        return (f"fold {self.fold}: max |logit difference| {self.max_abs_logit_diff:.2e}, identical labels "
                f"{self.label_agreement:.6f} on a {'x'.join(map(str, self.shape))} case")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_check(bundle: Bundle, paths: dict[str, Path], data: np.ndarray | torch.Tensor | None = None,
                 min_agreement: float = 0.999, device: str = "auto") -> list[Parity]:
    """Run torch (fp32 on ``device``) and onnxruntime (its CUDA provider where installed, else the CPU) on one
    preprocessed case ``(C, *spatial)`` (sliding window, no TTA) per fold.

    Without ``data`` a random normal case of 1.5 patches a side is used. Raises :class:`MedsegError` when the
    argmax labels agree on fewer than ``min_agreement`` of the voxels.
    """
    plan = bundle.plan
    if data is None:
        generator = torch.Generator().manual_seed(0)
        shape = [int(p * 1.5) for p in plan.patch_size]
        data = torch.randn(plan.channels, *shape, generator=generator)
    tensor = torch.as_tensor(data, dtype=torch.float32)
    folds = list(paths)
    results = []
    target = resolve_device(device)
    for fold, model in zip(folds, bundle.load_models(folds)):
        reference = predict_logits(model.to(target), tensor, plan.patch_size, overlap=plan.sliding_window_overlap)
        session = OnnxModule(paths[fold])
        got = predict_logits(session, tensor, plan.patch_size, overlap=plan.sliding_window_overlap)
        agreement = float((reference.argmax(0) == got.argmax(0)).float().mean())
        diff = float((reference - got).abs().max())
        results.append(Parity(fold, list(tensor.shape[1:]), diff, agreement))
        if agreement < min_agreement:
            raise MedsegError(f"ONNX export of fold {fold} disagrees with torch: {results[-1].line()}",
                              paths[fold], "report this as a bug; use the torch backend meanwhile")
    return results
