"""From a bundle and scans to masks in each scan's own format and geometry.

    predictor = Predictor(load_bundle("run/bundle"))
    result = predictor.predict(read_image("case.nii.gz"))    # a Prediction: labels as an Image on the input grid

Files in, files out (a cohort, with ``predictions.json``): :mod:`medseg.infer.cohort`.

Folds and mirror copies are averaged as logits (as nnU-Net does), then soft-maxed; the labels are decided, then
the probabilities are calibrated with the bundle's temperatures where it has them (:mod:`medseg.infer.calibration`:
the labels stay as they were); the uncertainty map is the predictive entropy of those probabilities, normalised to
[0, 1] by log(K).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.bundle import POSTPROCESS_FILE, Bundle
from medseg.data.label_values import to_disk_values
from medseg.errors import MedsegError
from medseg.infer.calibration import Calibration, calibrate_probabilities_, read_calibration
from medseg.infer.outputs import labels_from_probabilities, probabilities_from_logits
from medseg.infer.restore import restore_labels, restore_maps
from medseg.infer.sliding import Cancelled, predict_logits
from medseg.io import Image
from medseg.postprocess import PostprocessConfig, apply_postprocessing, apply_thresholds, load_postprocessing
from medseg.postprocess.components import DEFAULT_MAX_COMPONENTS, measure_components
from medseg.preprocess import case_body, preprocess_image
from medseg.runtime import keep_freed_memory, release_freed_memory, resolve_device, runtime_precision


@dataclass
class PredictOptions:
    """How to predict. ``None`` means: what the bundle recommends."""

    tta: bool | None = None  # mirror test-time augmentation; default from the bundle's measured benefit
    overlap: float | None = None  # sliding-window overlap (nnU-Net's step 0.5 = overlap 0.5); default: plan
    # True: the bundle's postprocess.json (when it has one); False: none; a config: that one instead
    postprocess: bool | PostprocessConfig = True
    probabilities: bool = False  # also return per-class probabilities on the input grid
    uncertainty: bool = False  # also return the normalised predictive entropy on the input grid
    folds: list[str] | None = None  # a subset of the bundle's folds
    backend: str = "torch"  # "torch", or "onnxruntime" (runs the bundle's fold_K.onnx from `medseg export`)
    max_components: int = DEFAULT_MAX_COMPONENTS  # components listed per label (the largest; all are counted)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"; the onnxruntime backend runs on the CPU
    calibrate: bool = True  # apply the bundle's temperatures (when it has them) to probabilities and uncertainty


@dataclass
class Prediction:
    labels: Image  # (1, *spatial) uint8/uint16 label map on the input grid
    probabilities: Image | None = None  # (K, *spatial) float32
    uncertainty: Image | None = None  # (1, *spatial) float32 in [0, 1]
    seconds: float = 0.0
    volumes: dict[str, float] = field(default_factory=dict)  # label name -> ml (3D) or mm^2 (2D)
    # label name -> {"count", "components": [...]}, see medseg.postprocess.components
    components: dict[str, dict[str, Any]] = field(default_factory=dict)


def tta_default(bundle: Bundle) -> bool:
    """Mirror TTA on only where validation at the end of training showed it improves Dice."""
    inference = bundle.metrics.get("inference")
    return isinstance(inference, dict) and inference.get("tta") is True


class Predictor:
    """A bundle's models loaded once; ``predict`` segments one image. Used by the CLI, the service and notebooks."""

    def __init__(self, bundle: Bundle, options: PredictOptions | None = None) -> None:
        keep_freed_memory()
        self.bundle, self.plan = bundle, bundle.plan
        self.options = options or PredictOptions()
        folds = self.options.folds or bundle.folds
        missing = [f for f in folds if f not in bundle.folds]
        if missing:
            raise MedsegError(f"has no fold {', '.join(missing)} (it has {', '.join(bundle.folds)})", bundle.folder,
                              "choose folds the bundle holds")
        self.device = resolve_device(self.options.device if self.options.backend == "torch" else "cpu")
        if self.options.backend == "torch":
            self.models = [model.to(self.device) for model in bundle.load_models(folds)]
        elif self.options.backend == "onnxruntime":
            from medseg.infer.backend import load_onnx_models

            self.models = load_onnx_models(bundle, folds)
        else:
            raise MedsegError(f"unknown backend {self.options.backend!r}", "--backend", "use torch or onnxruntime")
        self.tta = tta_default(bundle) if self.options.tta is None else self.options.tta
        self.calibration: Calibration | None = read_calibration(bundle) if self.options.calibrate else None
        self.precision = runtime_precision(self.plan.precision, self.device.type)
        self.overlap = self.plan.sliding_window_overlap if self.options.overlap is None else self.options.overlap
        path = bundle.folder / POSTPROCESS_FILE
        chosen = self.options.postprocess
        self.postprocess: PostprocessConfig | None = None
        if isinstance(chosen, PostprocessConfig):
            self.postprocess = chosen
        elif chosen and path.exists():
            self.postprocess = load_postprocessing(path)

    def check_input(self, image: Image, source: str | Path | None = None) -> None:
        plan = self.plan
        if image.ndim != plan.data_dim:
            raise MedsegError(f"is {image.ndim}D but this model segments {plan.data_dim}D images", source,
                              f"give a {plan.data_dim}D image")
        if image.channels != plan.channels:
            names = ", ".join(plan.channel_names.values()) or f"{plan.channels} channel(s)"
            raise MedsegError(f"has {image.channels} channel(s) but this model expects {plan.channels} ({names})",
                              source, "give one file per channel named <case>_0000, <case>_0001, ... or a "
                              "multi-channel file")
        check_finite(image, source)

    def logits(self, data: torch.Tensor, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Mean logits over folds (and mirror copies) for one preprocessed case (``should_stop``: see
        :func:`medseg.infer.sliding.sliding_window`)."""
        mirror = self.plan.mirror_axes if self.tta else ()
        total = None
        for model in self.models:
            logits = predict_logits(model, data, self.plan.patch_size, overlap=self.overlap, mirror_axes=mirror,
                                    precision=self.precision, should_stop=should_stop)
            total = logits if total is None else total.add_(logits)
        assert total is not None
        return total.div_(len(self.models)) if len(self.models) > 1 else total

    @torch.inference_mode()  # the sliding window's tensors are inference tensors, updated in place below
    def predict(self, image: Image, source: str | Path | None = None,
                should_stop: Callable[[], bool] | None = None) -> Prediction:
        """Segment one image; ``should_stop`` (asked between batches of windows) ends the work early with
        :class:`medseg.infer.sliding.Cancelled`."""
        start = time.perf_counter()
        self.check_input(image, source)
        body = case_body(image, self.plan)
        data, _, props = preprocess_image(image, self.plan, body=body)
        probabilities = probabilities_from_logits(self.logits(torch.from_numpy(data), should_stop), self.plan,
                                                  inplace=True)
        if should_stop is not None and should_stop():
            raise Cancelled("stopped after the sliding window")
        release_freed_memory()  # the window temporaries are done with: restoring needs the room
        thresholds = self.postprocess.thresholds if self.postprocess and not self.plan.regions else {}

        def decide(p: torch.Tensor) -> torch.Tensor:
            return labels_from_probabilities(p, self.plan)

        if thresholds:
            def decide(p: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(apply_thresholds(p.numpy(), thresholds))
        labels = restore_labels(probabilities, props.crop_bbox, props.original_shape, decide)
        if body is not None:  # a CT's air is never labelled (medseg.preprocess.body)
            labels[~body] = 0
        if self.postprocess:  # thresholds were applied slab by slab above; the rest works on the label map
            labels = apply_postprocessing(labels, _without_thresholds(self.postprocess), props.original_spacing)
        result = Prediction(labels=_label_image(image, to_disk_values(labels, self.plan.label_values)))
        if self.calibration is not None and (self.options.probabilities or self.options.uncertainty):
            calibrate_probabilities_(probabilities, self.calibration)  # after the labels: they do not change
        if self.options.probabilities:
            fill = [0.0] * probabilities.shape[0] if self.plan.regions else [1.0] + [0.0] * (probabilities.shape[0] - 1)
            result.probabilities = _float_image(image, outside_body(restore_maps(
                probabilities, props.crop_bbox, props.original_shape, fill), body, fill))
        if self.options.uncertainty:
            entropy = normalised_entropy(probabilities, regions=bool(self.plan.regions))
            result.uncertainty = _float_image(image, outside_body(restore_maps(
                entropy, props.crop_bbox, props.original_shape, [0.0]), body, [0.0]))
        result.volumes = label_volumes(labels, props.original_spacing, self.plan.labels)
        result.components = measure_components(labels, image.spacing_zyx, self.plan.labels, image.voxel_to_physical,
                                               self.options.max_components)
        result.seconds = time.perf_counter() - start
        return result


def outside_body(maps: np.ndarray, body: np.ndarray | None, fill: list[float]) -> np.ndarray:
    """Float maps ``(K, ...)`` with each channel ``fill[k]`` outside the body (unchanged when ``body`` is None)."""
    if body is not None:
        outside = ~body
        for k, value in enumerate(fill):
            maps[k][outside] = value
    return maps


def check_finite(image: Image, source: str | Path | None = None) -> None:
    """Refuse NaN or infinite voxels: a network maps them to NaN logits, so the mask would be silently empty or
    wrong (and NaN is not valid JSON)."""
    array = image.array
    if np.iscomplexobj(array):
        raise MedsegError(f"holds complex voxel values ({array.dtype}): a segmentation model takes real intensities",
                          source, "export the magnitude image (e.g. abs()) and send that")
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = int(array.size - np.count_nonzero(finite))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    kinds = " and ".join(k for k, test in (("NaN", np.isnan), ("infinite", np.isinf)) if test(array).any())
    raise MedsegError(f"holds {bad} {kinds} voxel value(s) (the first at channel/index {first})", source,
                      "repair the scan (e.g. replace them with the background value) and send it again")


def normalised_entropy(probabilities: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Predictive entropy in [0, 1], ``(1, *spatial)``: of the softmax over the labels, or for region (sigmoid)
    outputs the mean binary entropy of the regions."""
    p = probabilities.clamp(1e-8, 1 - 1e-8)
    if regions:
        return (-(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / math.log(2)).mean(0, keepdim=True)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-8))).sum(0, keepdim=True)
    return entropy / math.log(max(probabilities.shape[0], 2))


def case_uncertainty_score(uncertainty: np.ndarray, labels: np.ndarray) -> float:
    """One number per case for "which case to correct first": the mean uncertainty (normalised entropy, 0-1)
    over the predicted foreground grown by one voxel, plus every voxel above 0.5 uncertainty. Errors sit at
    boundaries and in doubtful regions, so a whole-image mean (mostly confident background) would hide them;
    the doubtful voxels keep a missed structure from scoring 0. Higher means likelier to need a correction;
    0.0 when the model is sure of every voxel and found nothing."""
    from scipy.ndimage import binary_dilation

    region = binary_dilation(labels > 0) | (uncertainty > 0.5)
    return round(float(uncertainty[region].mean()), 6) if region.any() else 0.0


def _without_thresholds(config: PostprocessConfig) -> PostprocessConfig:
    if not config.thresholds:
        return config
    copy = PostprocessConfig.from_dict(config.to_dict())
    for value in copy.thresholds:
        copy.set_class(value, threshold=None)
    return copy


def label_volumes(labels: np.ndarray, spacing: Sequence[float], names: dict[int, str]) -> dict[str, float]:
    """Volume in ml of each foreground label (area in mm^2 for 2D)."""
    voxel = float(np.prod(spacing))
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    scale = voxel / 1000.0 if labels.ndim == 3 else voxel
    return {name: round(float(counts[value]) * scale, 4) for value, name in names.items() if value != 0}


def _label_image(image: Image, labels: np.ndarray) -> Image:
    out = image.with_array(labels[None])
    out.meta.pop("rescale", None)
    return out


def _float_image(image: Image, maps: np.ndarray) -> Image:
    return image.with_array(maps)
