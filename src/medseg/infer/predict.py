"""From a bundle and scans to masks in each scan's own format and geometry.

    predictor = Predictor(load_bundle("run/bundle"))
    result = predictor.predict(read_image("case.nii.gz"))    # a Prediction: labels as an Image on the input grid
    predict_paths(bundle, ["scans/"], "out/")                # files in, files out, plus predictions.json

Folds and mirror copies are averaged as logits (as nnU-Net does), then soft-maxed; the uncertainty map is the
predictive entropy of that average, normalised to [0, 1] by log(K).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.bundle import POSTPROCESS_FILE, Bundle
from medseg.data.dataset import Case, discover_dataset, load_case_image
from medseg.errors import MedsegError
from medseg.evaluate.metrics import SIZE_UNITS
from medseg.infer.outputs import labels_from_probabilities, probabilities_from_logits
from medseg.infer.restore import restore_labels, restore_maps
from medseg.infer.sliding import predict_logits
from medseg.io import CHANNEL_FILE, IMAGE_SUFFIXES, Image, image_stem, image_suffix, write_image
from medseg.io.atomic import write_text_atomic
from medseg.io.dicom_seg import write_dicom_seg
from medseg.io.nifti import NIFTI_SUFFIXES
from medseg.io.raster import LOSSY_SUFFIXES, RASTER_SUFFIXES
from medseg.postprocess import PostprocessConfig, apply_postprocessing, apply_thresholds, load_postprocessing
from medseg.postprocess.components import DEFAULT_MAX_COMPONENTS, measure_components
from medseg.preprocess import preprocess_image
from medseg.runtime import keep_freed_memory, runtime_precision


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
    return bool(bundle.metrics.get("inference", {}).get("tta", False))


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
        if self.options.backend == "torch":
            self.models = bundle.load_models(folds)
        elif self.options.backend == "onnxruntime":
            from medseg.infer.backend import load_onnx_models

            self.models = load_onnx_models(bundle, folds)
        else:
            raise MedsegError(f"unknown backend {self.options.backend!r}", "--backend", "use torch or onnxruntime")
        self.tta = tta_default(bundle) if self.options.tta is None else self.options.tta
        self.precision = runtime_precision(self.plan.precision)  # prediction runs on the CPU
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

    def logits(self, data: torch.Tensor) -> torch.Tensor:
        """Mean logits over folds (and mirror copies) for one preprocessed case."""
        mirror = self.plan.mirror_axes if self.tta else ()
        total = None
        for model in self.models:
            logits = predict_logits(model, data, self.plan.patch_size, overlap=self.overlap, mirror_axes=mirror,
                                    precision=self.precision)
            total = logits if total is None else total + logits
        assert total is not None
        return total / len(self.models)

    def predict(self, image: Image, source: str | Path | None = None) -> Prediction:
        start = time.perf_counter()
        self.check_input(image, source)
        data, _, props = preprocess_image(image, self.plan)
        probabilities = probabilities_from_logits(self.logits(torch.from_numpy(data)), self.plan)
        thresholds = self.postprocess.thresholds if self.postprocess and not self.plan.regions else {}

        def decide(p: torch.Tensor) -> torch.Tensor:
            return labels_from_probabilities(p, self.plan)

        if thresholds:
            def decide(p: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(apply_thresholds(p.numpy(), thresholds))
        labels = restore_labels(probabilities, props.crop_bbox, props.original_shape, decide)
        if self.postprocess:  # thresholds were applied slab by slab above; the rest works on the label map
            labels = apply_postprocessing(labels, _without_thresholds(self.postprocess), props.original_spacing)
        result = Prediction(labels=_label_image(image, labels))
        if self.options.probabilities:
            fill = [0.0] * probabilities.shape[0] if self.plan.regions else [1.0] + [0.0] * (probabilities.shape[0] - 1)
            result.probabilities = _float_image(image, restore_maps(probabilities, props.crop_bbox,
                                                                     props.original_shape, fill))
        if self.options.uncertainty:
            entropy = normalised_entropy(probabilities, regions=bool(self.plan.regions))
            result.uncertainty = _float_image(image, restore_maps(entropy, props.crop_bbox, props.original_shape,
                                                                  [0.0]))
        result.volumes = label_volumes(labels, props.original_spacing, self.plan.labels)
        result.components = measure_components(labels, image.spacing_zyx, self.plan.labels, image.voxel_to_physical,
                                               self.options.max_components)
        result.seconds = time.perf_counter() - start
        return result


def normalised_entropy(probabilities: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Predictive entropy in [0, 1], ``(1, *spatial)``: of the softmax over the labels, or for region (sigmoid)
    outputs the mean binary entropy of the regions."""
    p = probabilities.clamp(1e-8, 1 - 1e-8)
    if regions:
        return (-(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / math.log(2)).mean(0, keepdim=True)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-8))).sum(0, keepdim=True)
    return entropy / math.log(max(probabilities.shape[0], 2))


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


# ---- files in, files out ------------------------------------------------------------------------------------


@dataclass
class PredictInput:
    case_id: str
    files: list[Path]  # channel files, a DICOM folder or a DICOM zip

    @property
    def is_dicom(self) -> bool:
        first = self.files[0]
        return first.is_dir() or image_suffix(first) in (".zip", ".dcm")


def collect_inputs(paths: Iterable[str | Path], test_list: bool = False) -> list[PredictInput]:
    """Cases to predict from files, folders of files or DICOM series, or a data set's ``split.json`` test list."""
    inputs: list[PredictInput] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MedsegError("does not exist", path, "check the input path")
        if path.is_file():
            inputs.append(PredictInput(image_stem(path), [path]))
        elif test_list or (path / "split.json").exists() and any((path / d).is_dir() for d in ("imagesTr", "images")):
            inputs.extend(_test_list(path))
        elif _is_dicom_folder(path):
            inputs.append(PredictInput(path.name, [path]))
        else:
            inputs.extend(_folder_inputs(path))
    if not inputs:
        raise MedsegError("holds no images to predict", ", ".join(str(p) for p in paths),
                          f"give image files ({', '.join(IMAGE_SUFFIXES)}), folders of them or DICOM series")
    return inputs


def _is_dicom_folder(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(image_suffix(p) in ("", ".dcm") or p.suffix.isdigit() for p in files)


def _folder_inputs(folder: Path) -> list[PredictInput]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in ("dataset.json", "split.json", "predictions.json"):
            continue
        if path.is_dir():
            if _is_dicom_folder(path):
                groups[path.name] = [path]
            continue
        case_id = image_stem(path)
        match = CHANNEL_FILE.match(case_id)
        groups.setdefault(match["case"] if match else case_id, []).append(path)
    return [PredictInput(case_id, sorted(files)) for case_id, files in groups.items()]


def _test_list(root: Path) -> list[PredictInput]:
    dataset = discover_dataset(root)
    if not dataset.split or not dataset.split.get("test"):
        raise MedsegError("has no test list in split.json", root, "give image files or a folder of them instead")
    wanted = set(dataset.split["test"])
    cases = [c for c in dataset.cases + dataset.test_images if c.case_id in wanted]
    unknown = sorted(wanted - {c.case_id for c in cases})
    if unknown:
        listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise MedsegError(f"split.json's test list names case(s) the data set does not hold: {listed}",
                          root / "split.json", "correct the test list, or give the image files instead")
    return [PredictInput(c.case_id, list(c.image_files)) for c in cases]


def output_path(item: PredictInput, out_dir: Path, fmt: str = "same") -> Path:
    """Where the mask of ``item`` goes: the input's format, except lossless PNG for JPEG and NIfTI for DICOM."""
    if fmt == "dicom-seg":
        return out_dir / f"{item.case_id}.seg.dcm"
    if fmt != "same":
        return out_dir / f"{item.case_id}.{fmt.lstrip('.')}"
    first = item.files[0]
    suffix = image_suffix(first)
    if item.is_dicom:
        suffix = ".nii.gz"
    elif suffix in LOSSY_SUFFIXES:
        suffix = ".png"
    elif suffix not in NIFTI_SUFFIXES + RASTER_SUFFIXES and suffix not in (".nrrd", ".mha", ".mhd", ".nhdr"):
        suffix = ".nii.gz"
    return out_dir / f"{item.case_id}{suffix}"


def _side_path(mask_path: Path, tag: str) -> Path:
    suffix = image_suffix(mask_path)
    base = mask_path.name[: -len(suffix)]
    keep = suffix if suffix in NIFTI_SUFFIXES + (".nrrd", ".mha") else ".nii.gz"  # float maps, any channel count
    return mask_path.with_name(f"{base}_{tag}{keep}")


def predict_paths(
    bundle: Bundle,
    inputs: Sequence[str | Path] | list[PredictInput],
    out_dir: str | Path,
    options: PredictOptions | None = None,
    fmt: str = "same",
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Predict every input into ``out_dir``; returns (and writes) the ``predictions.json`` manifest.

    A case that fails (unreadable, wrong channels) is listed under ``failed`` and the others still run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = inputs if inputs and isinstance(inputs[0], PredictInput) else collect_inputs(inputs)  # type: ignore
    predictor = Predictor(bundle, options)
    start = time.perf_counter()
    manifest: dict[str, Any] = {
        "medseg_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "bundle": str(bundle.folder), "tta": predictor.tta, "overlap": predictor.overlap,
        "backend": predictor.options.backend, "precision": predictor.precision,
        "postprocess": predictor.postprocess.to_dict() if predictor.postprocess else None,
        "folds": predictor.options.folds or bundle.folds,
        "cases": [], "failed": [],
    }
    for index, item in enumerate(items):  # type: ignore[arg-type]
        if progress:
            progress(index, len(items), item.case_id)
        try:
            image = load_case_image(Case(item.case_id, item.files))
            result = predictor.predict(image, item.files[0])
            record = write_prediction(result, item, out_dir, fmt, bundle.plan.labels)
        except MedsegError as error:
            manifest["failed"].append({"case": item.case_id, "input": [str(f) for f in item.files],
                                       "error": error.message})
            continue
        manifest["cases"].append(record)
    if progress:
        progress(len(items), len(items), "")
    manifest["total_seconds"] = round(time.perf_counter() - start, 3)
    write_text_atomic(out_dir / "predictions.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_prediction(result: Prediction, item: PredictInput, out_dir: Path, fmt: str = "same",
                     names: dict[int, str] | None = None) -> dict[str, Any]:
    """Write the mask (and side maps); ``fmt="dicom-seg"`` writes a DICOM SEG referencing a DICOM input series,
    one segment per label of ``names``."""
    if fmt == "dicom-seg":
        source = item.files[0]
        if not (source.is_dir() or image_suffix(source) == ".zip"):
            raise MedsegError("is not a DICOM series folder or .zip: a DICOM SEG must reference one", source,
                              "use --format same (or nii.gz) for other inputs")
        values = names or {int(v): f"label {v}" for v in np.unique(result.labels.array) if v != 0} or {1: "label 1"}
        path = write_dicom_seg(result.labels.array, source, output_path(item, out_dir, fmt), values,
                               sop_instance_uids=result.labels.meta.get("sop_instance_uids"),
                               series_uid=result.labels.meta.get("series_instance_uid"))
    else:
        path = write_image(result.labels, output_path(item, out_dir, fmt))
    record: dict[str, Any] = {"case": item.case_id, "input": [str(f) for f in item.files], "output": str(path),
                              "seconds": round(result.seconds, 3), "volumes": result.volumes,
                              "size_unit": SIZE_UNITS[result.labels.ndim], "components": result.components,
                              "shape": list(result.labels.shape[1:]), "spacing": list(result.labels.spacing)}
    if result.probabilities is not None:
        record["probabilities"] = str(write_image(result.probabilities, _side_path(path, "probabilities")))
    if result.uncertainty is not None:
        record["uncertainty"] = str(write_image(result.uncertainty, _side_path(path, "uncertainty")))
    return record
