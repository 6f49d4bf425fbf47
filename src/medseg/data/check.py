"""``medseg check``: read every case once, report every problem at once, and summarise the data set.

The per-case statistics gathered here (shape, spacing, intensities, foreground intensity sample, label voxel
counts) are the raw material of the plan's fingerprint, so a data set is read once for both.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.dataset import Case, Dataset, Problem, load_case_image, load_case_label
from medseg.data.label_values import to_class_values
from medseg.errors import DatasetError, MedsegError
from medseg.io import Image

FOREGROUND_SAMPLE = 10_000  # foreground intensities kept per case and channel (as nnU-Net's fingerprint)


@dataclass
class CaseStats:
    """What one read of a case tells: geometry, intensities per channel, label voxel counts."""

    case_id: str
    dim: int
    channels: int
    shape: tuple[int, ...]  # array order (Z, Y, X) or (Y, X)
    spacing: tuple[float, ...]  # array order, mm
    intensity_min: list[float]
    intensity_max: list[float]
    intensity_mean: list[float]
    intensity_std: list[float]
    label_counts: dict[int, int] = field(default_factory=dict)
    foreground_sample: list[list[float]] = field(default_factory=list)  # per channel
    label_boundary: dict[int, int] = field(default_factory=dict)  # voxels with a face neighbour of another label
    label_centroid: dict[int, list[float]] = field(default_factory=dict)  # per axis, as a fraction of the extent
    content_box_fraction: float = 1.0  # share of the image inside the box of its content (see content_mask)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))


@dataclass
class CheckReport:
    dataset: Dataset
    stats: list[CaseStats]
    problems: list[Problem]  # the data set cannot be trained on until they are fixed
    warnings: list[Problem] = field(default_factory=list)  # worth a look; training goes on

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return summarise(self.dataset, self.stats)

    def raise_if_failed(self, shown: int = 10) -> None:
        """Refuse a data set that fails the check, naming its first ``shown`` problems (for plan, train, demo)."""
        if self.ok:
            return
        listed = "; ".join(p.line() for p in self.problems[:shown])
        more = f" (and {len(self.problems) - shown} more)" if len(self.problems) > shown else ""
        raise DatasetError(f"fails `medseg check` with {len(self.problems)} problem(s): {listed}{more}",
                           self.dataset.root, "fix them first; `medseg check` lists them all")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.dataset.root),
            "layout": self.dataset.layout,
            "ok": self.ok,
            "summary": self.summary(),
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def analyse_case(case: Case, declared_labels: tuple[int, ...],
                 label_values: dict[int, int] | None = None) -> tuple[CaseStats | None, list[Problem]]:
    """Read one case and check it; returns its statistics (None when unreadable) and its problems.

    ``declared_labels`` are the values masks may hold on disk; statistics count class values (``label_values``:
    class -> disk value, see :func:`medseg.data.dataset.consecutive_labels`)."""
    problems: list[Problem] = []

    def problem(path: object, what: str, fix: str) -> None:
        problems.append(Problem(str(path), what, fix, case.case_id))

    try:
        image = load_case_image(case)
    except MedsegError as exc:
        problem(exc.path or case.image_files[0], exc.what, exc.fix or "replace the file")
        return None, problems
    _check_intensities(image, case, problem)
    label_counts: dict[int, int] = {}
    label_boundary: dict[int, int] = {}
    label_centroid: dict[int, list[float]] = {}
    label_array = None
    if case.label_file is not None:
        try:
            label = load_case_label(case)
        except MedsegError as exc:
            problem(exc.path or case.label_file, exc.what, exc.fix or "replace the mask")
        else:
            label_array = _check_label(image, label, case, declared_labels, problem)
            if label_array is not None:
                label_array = to_class_values(label_array, label_values or {})
                values, counts = np.unique(label_array, return_counts=True)
                label_counts = {int(v): int(c) for v, c in zip(values, counts)}
                label_boundary = boundary_counts(label_array)
                label_centroid = centroids(label_array, [int(v) for v in values])
    stats = CaseStats(
        case_id=case.case_id,
        dim=image.ndim,
        channels=image.channels,
        shape=image.shape,
        spacing=image.spacing_zyx,
        intensity_min=[float(np.nanmin(c)) if np.isfinite(c).any() else float("nan") for c in image.array],
        intensity_max=[float(np.nanmax(c)) if np.isfinite(c).any() else float("nan") for c in image.array],
        intensity_mean=[float(np.nanmean(c, dtype=np.float64)) for c in image.array],
        intensity_std=[float(np.nanstd(c, dtype=np.float64)) for c in image.array],
        label_counts=label_counts,
        foreground_sample=_foreground_sample(image, label_array),
        label_boundary=label_boundary,
        label_centroid=label_centroid,
        content_box_fraction=content_box_fraction(image.array),
    )
    return stats, problems


def background_values(data: np.ndarray) -> list[float]:
    """Per channel, the value of the background: the corners' value where every corner of the channel has the
    same one (a scan z-scored inside the brain and stored with a constant outside, as BraTS preprocessed sets
    are), otherwise 0 (nnU-Net's non-zero rule)."""
    corners = list(itertools.product((0, -1), repeat=data.ndim - 1))
    values = []
    for channel in data:
        ends = {float(channel[c]) for c in corners}
        value = ends.pop() if len(ends) == 1 else 0.0
        values.append(value if np.isfinite(value) else 0.0)
    return values


def content_mask(data: np.ndarray) -> np.ndarray:
    """Voxels that differ from the background (:func:`background_values`) in any channel."""
    mask = np.zeros(data.shape[1:], dtype=bool)
    for channel, value in zip(data, background_values(data)):
        mask |= channel != value
    return mask


def mask_bbox(mask: np.ndarray) -> list[list[int]]:
    """Bounding box of a mask's true voxels as [[start, stop], ...] (the whole array when none is true)."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def content_box_fraction(data: np.ndarray) -> float:
    """The share of the image inside the box of its content (1.0 when cropping to it removes nothing)."""
    box = mask_bbox(content_mask(data))
    return float(np.prod([(b - a) / s for (a, b), s in zip(box, data.shape[1:])]))


def centroids(labels: np.ndarray, values: list[int]) -> dict[int, list[float]]:
    """Per label, its centre of mass along each axis as a fraction of the extent (0 first voxel, 1 last)."""
    extent = np.maximum(np.asarray(labels.shape, np.float64) - 1, 1)
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, values)
    return {v: (np.asarray(c) / extent).tolist() for v, c in zip(values, centres) if np.all(np.isfinite(c))}


def boundary_counts(labels: np.ndarray) -> dict[int, int]:
    """Per label, how many of its voxels touch a voxel of another label across a face.

    Voxels over boundary voxels is about half a structure's thickness (a strip of width w gives w/2, a disc
    of radius r gives r/2): planning uses it to know how far an image can be coarsened without losing the
    structure (thin vessels: not at all; lungs: a lot).
    """
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        ahead, behind = [slice(None)] * labels.ndim, [slice(None)] * labels.ndim
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        differs = labels[tuple(ahead)] != labels[tuple(behind)]
        edge[tuple(ahead)] |= differs
        edge[tuple(behind)] |= differs
    values, counts = np.unique(labels[edge], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _check_intensities(image: Image, case: Case, problem: Callable[[object, str, str], None]) -> None:
    for index, channel in enumerate(image.array):
        where = case.image_files[min(index, len(case.image_files) - 1)]
        name = f"channel {index}" if image.channels > 1 else "image"
        if np.issubdtype(channel.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(channel)))
            if bad:
                problem(where, f"{name} has {bad} NaN/Inf voxels", "fix the export; NaN/Inf cannot be trained on")
                continue
        if channel.size and channel.min() == channel.max():
            problem(where, f"{name} is constant (every voxel {channel.flat[0]})",
                    "the file is blank; replace or remove the case")


def _check_label(
    image: Image, label: Image, case: Case, declared: tuple[int, ...], problem: Callable[[object, str, str], None]
) -> np.ndarray | None:
    path = case.label_file
    if label.ndim != image.ndim or label.shape != image.shape:
        problem(path, f"mask size {_fmt(label.shape)} differs from image size {_fmt(image.shape)}",
                "the mask must be on the image's voxel grid; re-export or resample it with nearest neighbour")
        return None
    if image.ndim == 3:
        diff = image.geometry_difference(label)
        if diff:
            problem(path, f"mask geometry differs from the image: {diff}",
                    "re-export the mask on the image's grid (same spacing, origin, direction)")
    array = label.array[0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            problem(path, "mask holds non-integer values", "a label map holds integers 0..K; re-export it")
            return None
        array = array.astype(np.int64)
    values = np.unique(array)
    if declared:
        extra = [int(v) for v in values if int(v) not in declared]
        if extra:
            problem(path, f"mask has value(s) {extra} outside the declared labels {list(declared)}",
                    "fix the mask, or declare the label in dataset.json / --labels")
    elif values.min() < 0:
        problem(path, f"mask has negative value {int(values.min())}", "labels are 0 (background) .. K")
    return array


def _foreground_sample(image: Image, label_array: np.ndarray | None) -> list[list[float]]:
    if label_array is None:
        return [[] for _ in range(image.channels)]
    mask = label_array > 0
    rng = np.random.default_rng(1234)
    sample = []
    for channel in image.array:
        values = channel[mask]
        if values.size > FOREGROUND_SAMPLE:
            values = rng.choice(values, FOREGROUND_SAMPLE, replace=False)
        sample.append(values.astype(np.float32).tolist())
    return sample


def _analyse_packed(args: tuple[Case, tuple[int, ...], dict[int, int]]) -> tuple[CaseStats | None, list[Problem]]:
    return analyse_safely(*args)


def analyse_safely(case: Case, declared_labels: tuple[int, ...],
                   label_values: dict[int, int] | None = None) -> tuple[CaseStats | None, list[Problem]]:
    """:func:`analyse_case`, with anything unexpected on one case (a bug, ``MemoryError``) reported as that case's
    problem: one strange file must not stop the check of thousands."""
    try:
        return analyse_case(case, declared_labels, label_values)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 - reported as a problem naming the case and the error
        what = f"could not be checked: {type(error).__name__}: {error}"
        return None, [Problem(str(case.image_files[0]), what, "remove or replace the case, and report this error",
                              case.case_id)]


def check_dataset(
    dataset: Dataset, workers: int | None = None, progress: Callable[[int, int], None] | None = None
) -> CheckReport:
    """Read every labelled case, collecting every problem, and the statistics the plan needs."""
    declared = tuple(sorted(dataset.label_values.get(v, v) for v in dataset.labels))  # as on disk
    jobs = [(case, declared, dataset.label_values) for case in dataset.cases]
    workers = workers or min(4, os.cpu_count() or 1)
    results: list[tuple[CaseStats | None, list[Problem]]] = []
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_analyse_packed, jobs, chunksize=8):
                results.append(result)
                if progress:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(analyse_safely(*job))
            if progress:
                progress(len(results), len(jobs))
    stats = [s for s, _ in results if s is not None]
    problems = list(dataset.problems) + [p for _, ps in results for p in ps]
    problems += _consistency_problems(dataset, stats)
    return CheckReport(dataset, stats, problems, _consistency_warnings(dataset, stats))


def _consistency_problems(dataset: Dataset, stats: list[CaseStats]) -> list[Problem]:
    """Problems across cases: mixed dimensions or channel counts, undeclared label values that are not 0..K."""
    problems = []
    for attr, what in (("dim", "dimension"), ("channels", "channel count")):
        values = [getattr(s, attr) for s in stats]
        if values:
            common = max(set(values), key=values.count)
            for s in stats:
                if getattr(s, attr) != common:
                    case = dataset.case(s.case_id)
                    problems.append(Problem(
                        str(case.image_files[0]), f"{what} {getattr(s, attr)} differs from the data set's {common}",
                        f"every case needs the same {what}", s.case_id,
                    ))
    if not dataset.labels and stats:
        problems += _undeclared_gaps(dataset, stats)
    return problems


def _consistency_warnings(dataset: Dataset, stats: list[CaseStats]) -> list[Problem]:
    """What is odd but trainable: a declared label that occurs in no mask (a tumour type absent from the one or
    two cases a site has; the network then never predicts it)."""
    if not dataset.labels or not stats:
        return []
    seen = {v for s in stats for v in s.label_counts}
    return [Problem(str(dataset.root), f"declared label {value} ({name}) occurs in no mask: the model will never "
                    "predict it", "check the masks, or remove the label from dataset.json if it is not meant to be "
                    "there") for value, name in dataset.labels.items() if value not in seen and value != 0]


def _undeclared_gaps(dataset: Dataset, stats: list[CaseStats]) -> list[Problem]:
    """Undeclared mask values that are not 0..K: a 0/255 mask would train 256 classes, 254 of them never seen."""
    seen = sorted({v for s in stats for v in s.label_counts} | {0})
    if seen == list(range(len(seen))):
        return []
    named = ",".join(f"{v}:{'background' if v == 0 else f'label_{v}'}" for v in seen[:6])
    shown = ", ".join(map(str, seen[:8])) + (", ..." if len(seen) > 8 else "")
    return [Problem(str(dataset.root), f"masks hold label values {shown}, not 0..{len(seen) - 1}, and no labels are "
                    f"declared: as they are, the network would get {seen[-1] + 1} outputs",
                    f"declare them (dataset.json \"labels\", or --labels {named}); declared values are trained "
                    "as 0..K and written back as declared. Or re-export the masks as 0..K")]


def summarise(dataset: Dataset, stats: list[CaseStats]) -> dict[str, Any]:
    """The data set at a glance: counts, shapes, spacings, intensities per channel, labels per class."""
    if not stats:
        return {"cases": len(dataset.cases), "readable_cases": 0}
    shapes = np.array([s.shape for s in stats if len(s.shape) == stats[0].dim])
    spacings = np.array([s.spacing for s in stats if len(s.spacing) == stats[0].dim])
    channels = stats[0].channels
    label_values = sorted({v for s in stats for v in s.label_counts} | set(dataset.labels))
    unit = "ml" if stats[0].dim == 3 else "mm2"
    scale = 1e-3 if stats[0].dim == 3 else 1.0
    per_label = {}
    for value in label_values:
        sizes = [s.label_counts.get(value, 0) * s.voxel_volume_mm3 * scale for s in stats]
        per_label[str(value)] = {
            "name": dataset.labels.get(value, "background" if value == 0 else f"label_{value}"),
            "cases_containing": sum(1 for s in stats if s.label_counts.get(value, 0) > 0),
            f"mean_size_{unit}": round(float(np.mean(sizes)), 4),
        }
    return {
        "cases": len(dataset.cases),
        "readable_cases": len(stats),
        "test_images": len(dataset.test_images),
        "dim": stats[0].dim,
        "channels": channels,
        "channel_names": {str(k): v for k, v in dataset.channel_names.items()},
        "shape_min": shapes.min(axis=0).tolist(),
        "shape_median": np.median(shapes, axis=0).tolist(),
        "shape_max": shapes.max(axis=0).tolist(),
        "spacing_min": spacings.min(axis=0).round(4).tolist(),
        "spacing_median": np.median(spacings, axis=0).round(4).tolist(),
        "spacing_max": spacings.max(axis=0).round(4).tolist(),
        "intensity": [
            {
                "channel": c,
                "min": float(np.nanmin([s.intensity_min[c] for s in stats if len(s.intensity_min) > c])),
                "max": float(np.nanmax([s.intensity_max[c] for s in stats if len(s.intensity_max) > c])),
                "mean_of_case_means": float(np.nanmean([s.intensity_mean[c] for s in stats
                                                        if len(s.intensity_mean) > c])),
            }
            for c in range(channels)
        ],
        "labels": per_label,
        "split": {k: len(v) for k, v in dataset.split.items()} if dataset.split else None,
    } | ({"regions": {r.name: list(r.values) for r in dataset.regions}} if dataset.regions else {})


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))

