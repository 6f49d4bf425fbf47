"""Resample, normalise and crop cases as the plan says; cache the result on disk for every later run.

The same :func:`preprocess_image` serves training and inference, so both sides can never drift apart; its
:class:`CaseProperties` (original shape and spacing, crop box) are what :mod:`medseg.infer.restore` needs to put a
prediction back on the scan's grid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data import Case, Dataset, load_case_image, load_case_label
from medseg.data.check import content_mask, mask_bbox
from medseg.errors import MedsegError
from medseg.io import Image, ReadLimits
from medseg.io.atomic import atomic_path, write_text_atomic
from medseg.plan import ChannelNorm, Plan
from medseg.preprocess.body import body_mask

CLASS_LOCATIONS_PER_CLASS = 2000  # foreground voxels remembered per class for oversampling


@dataclass
class CaseProperties:
    """What is needed to map a prediction back onto the original image grid."""

    case_id: str
    original_shape: list[int]
    original_spacing: list[float]  # array order
    crop_bbox: list[list[int]]  # [[start, stop], ...] in original array coordinates
    resampled_shape: list[int]
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)  # label -> voxel indices

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize(data: np.ndarray, norms: list[ChannelNorm], inside: np.ndarray | None = None) -> np.ndarray:
    """Float32 channels normalised as the plan says, computed in place in the output: one float copy of a
    512x512x600 CT, not four (a clip, a difference and a quotient of temporaries each). A channel with
    ``nonzero_mask`` takes its mean and std inside the content (``inside``, by default
    :func:`~medseg.data.check.content_mask` of ``data``) and is 0 outside it."""
    out = np.empty(data.shape, dtype=np.float32)
    if inside is None and any(n.nonzero_mask for n in norms):
        inside = content_mask(data)
    for c, norm in enumerate(norms):
        channel = out[c]
        if norm.scheme == "ct":
            np.clip(data[c], norm.clip_low, norm.clip_high, out=channel, casting="unsafe")
            mean, std = norm.mean, norm.std
        else:
            channel[...] = data[c]
            if norm.scheme not in ("zscore", "rgb"):
                continue
            values = channel[inside] if norm.nonzero_mask and inside is not None and inside.any() else channel
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        channel -= np.float32(mean)
        channel /= np.float32(max(std, 1e-8))
        if norm.nonzero_mask and inside is not None:
            channel[~inside] = 0.0
    return out


def _needs_resampling(shape: tuple[int, ...], new_shape: tuple[int, ...]) -> bool:
    return tuple(shape) != tuple(new_shape)


def resampled_shape(shape: list[int] | tuple[int, ...], spacing: list[float] | tuple[float, ...],
                    target: list[float]) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target)]


def check_resampled_shape(new_shape: list[int], channels: int, spacing: list[float] | tuple[float, ...],
                          target: list[float], max_voxels: int | None = None, case_id: str = "") -> None:
    """Refuse a resampling whose result would exceed ``max_voxels`` (default ``ReadLimits().max_voxels``).

    A header spacing of 50 mm resampled to 0.5 mm makes 10**6 times the voxels: refused before allocating them.
    """
    limit = max_voxels if max_voxels is not None else ReadLimits().max_voxels
    voxels = math.prod(new_shape) * channels
    if voxels > limit:
        raise MedsegError(
            f"resampling from spacing {list(spacing)} mm to the plan's target spacing {list(target)} mm gives shape "
            f"{list(new_shape)} x {channels} channel(s) = {voxels:,} voxels, over the limit of {limit:,} "
            "(ReadLimits.max_voxels)",
            case_id or None,
            "check the image's spacing in its header; if it is right, pass a larger max_voxels",
        )


def resample_data(data: np.ndarray, new_shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Linear (bi/trilinear) resampling of a channels-first float array."""
    if not _needs_resampling(data.shape[1:], new_shape):
        return data
    mode = "trilinear" if data.ndim == 4 else "bilinear"
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    return F.interpolate(tensor, size=tuple(new_shape), mode=mode, align_corners=False)[0].numpy()


def resample_labels(labels: np.ndarray, new_shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Resample a label map by linear interpolation of each class's indicator (smoother than nearest),
    one class at a time so memory stays at two float maps whatever the number of classes."""
    if not _needs_resampling(labels.shape, new_shape):
        return labels
    mode = "trilinear" if labels.ndim == 3 else "bilinear"
    best = torch.full(tuple(new_shape), -1.0)
    out = torch.zeros(tuple(new_shape), dtype=torch.int16)
    for value in np.unique(labels):
        indicator = torch.from_numpy((labels == value).astype(np.float32))[None, None]
        score = F.interpolate(indicator, size=tuple(new_shape), mode=mode, align_corners=False)[0, 0]
        better = score > best
        best = torch.where(better, score, best)
        out[better] = int(value)
    return out.numpy().astype(labels.dtype)


def case_body(image: Image, plan: Plan) -> np.ndarray | None:
    """The body mask of a CT plan's image on its own grid (:mod:`medseg.preprocess.body`); None for other plans."""
    return None if plan.body_channel is None else body_mask(image.array[plan.body_channel])


def preprocess_image(
    image: Image, plan: Plan, label: np.ndarray | None = None, case_id: str = "", *, max_voxels: int | None = None,
    body: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Crop, resample and normalise one image (and its label map) as the plan says.

    A resampled shape over ``max_voxels`` (default ``ReadLimits().max_voxels``, all channels) is refused. A CT plan
    crops to the body (``body``: :func:`case_body`, computed here when not given) instead of the content.
    """
    data = image.array
    inside = body if body is not None else case_body(image, plan)
    if inside is None:
        inside = content_mask(data)
    bbox = mask_bbox(inside) if plan.crop_to_nonzero else [[0, s] for s in image.shape]
    slices = (slice(None),) + tuple(slice(a, b) for a, b in bbox)
    data = data[slices]
    new_shape = resampled_shape(data.shape[1:], image.spacing_zyx, plan.target_spacing)
    check_resampled_shape(new_shape, data.shape[0], image.spacing_zyx, plan.target_spacing, max_voxels, case_id)
    data = normalize(data, plan.normalization, inside[slices[1:]])
    del inside
    data = resample_data(data, new_shape)
    seg = None
    if label is not None:
        seg_dtype = np.int8 if plan.num_classes < 128 else np.int16
        seg = resample_labels(label[slices[1:]].astype(np.int16), new_shape).astype(seg_dtype)
    props = CaseProperties(case_id, list(image.shape), list(image.spacing_zyx), bbox, list(new_shape))
    if seg is not None:
        props.class_locations = _class_locations(seg, plan.foreground_labels)
    return data.astype(np.float32, copy=False), seg, props


def _class_locations(seg: np.ndarray, labels: list[int]) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(0)
    locations = {}
    for value in labels:
        coords = np.argwhere(seg == value)
        if len(coords) > CLASS_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), CLASS_LOCATIONS_PER_CLASS, replace=False)]
        locations[str(value)] = coords.tolist()
    return locations


# ---- the on-disk cache -----------------------------------------------------------------------------------


def cache_dir_for(plan: Plan, cache_root: str | Path, source_root: str | Path) -> Path:
    """The cache folder of one data set under one plan: keyed by the data set's path and the plan fields."""
    import hashlib

    key = hashlib.sha256(f"{Path(source_root).resolve()}|{plan.preprocessing_key()}".encode()).hexdigest()[:12]
    return Path(cache_root) / f"{plan.dataset_name}_{key}"


def source_signature(case: Case) -> list[list[int]]:
    """Sizes and modification times of a case's files: a changed file is preprocessed again."""
    files = [*case.image_files, *([case.label_file] if case.label_file else [])]
    return [[f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _is_cached(folder: Path, case: Case) -> bool:
    path = folder / f"{case.case_id}.json"
    if not path.exists() or not (folder / f"{case.case_id}_seg.npy").exists():
        return False
    try:
        return json.loads(path.read_text()).get("source") == source_signature(case)
    except (OSError, json.JSONDecodeError):
        return False


def _preprocess_to_cache(args: tuple[Case, Plan, Path]) -> str:
    case, plan, folder = args
    image = load_case_image(case)
    label = load_case_label(case, plan.label_values).array[0] if case.label_file is not None else None
    data, seg, props = preprocess_image(image, plan, label, case.case_id)
    with atomic_path(folder / f"{case.case_id}.npy") as tmp:
        np.save(tmp, data)
    if seg is not None:
        with atomic_path(folder / f"{case.case_id}_seg.npy") as tmp:
            np.save(tmp, seg)
    write_text_atomic(folder / f"{case.case_id}.json", json.dumps(props.to_dict() | {"source": source_signature(case)}))
    return case.case_id


def prepare_cache(
    dataset: Dataset, plan: Plan, cache_root: str | Path, workers: int | None = None,
    progress: Callable[[int, int], None] | None = None, source_root: str | Path | None = None,
) -> Path:
    """Preprocess every labelled case once into ``cache_root/<name>_<key>/``; unchanged cases are reused."""
    folder = cache_dir_for(plan, cache_root, source_root or dataset.root)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in dataset.cases if c.label_file is not None and not _is_cached(folder, c)]
    workers = workers or min(4, os.cpu_count() or 1)
    done = len(dataset.cases) - len(todo)
    jobs = [(case, plan, folder) for case in todo]
    if workers > 1 and len(jobs) > 4:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_preprocess_to_cache, jobs, chunksize=4):
                done += 1
                if progress:
                    progress(done, len(dataset.cases))
    else:
        for job in jobs:
            _preprocess_to_cache(job)
            done += 1
            if progress:
                progress(done, len(dataset.cases))
    return folder


@dataclass
class CachedCase:
    case_id: str
    data: np.ndarray  # (C, *S) float32, memory-mapped
    seg: np.ndarray  # (*S) int8/int16, memory-mapped
    props: CaseProperties


def load_cached(folder: str | Path, case_id: str) -> CachedCase:
    folder = Path(folder)
    fields = json.loads((folder / f"{case_id}.json").read_text())
    fields.pop("source", None)
    props = CaseProperties(**fields)
    data = np.load(folder / f"{case_id}.npy", mmap_mode="r")
    seg = np.load(folder / f"{case_id}_seg.npy", mmap_mode="r")
    return CachedCase(case_id, data, seg, props)
