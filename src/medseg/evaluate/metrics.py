"""Segmentation metrics per case and class, in physical units, and the evaluation report.

Metrics (one row per case and foreground class; background, value 0, is never scored):

* ``dice``, ``iou``, ``precision``, ``recall``, ``f1`` from voxel counts (``f1`` equals ``dice`` for binary masks;
  both are reported because readers look for either name).
* ``hd95_mm``: 95th-percentile symmetric Hausdorff distance in mm, MONAI's definition: the larger of the two
  directed 95th percentiles of the distances from each surface voxel of one mask to the nearest surface voxel
  of the other (surface voxel = a voxel of the mask with a face neighbour outside it).
* ``assd_mm``: average symmetric surface distance in mm (mean over the surface voxels of both masks).
* ``nsd``: normalised surface Dice at a tolerance of ``tolerance_mm`` (default 2 mm, a common choice for
  organ-scale structures at ~1 mm resolution; pass a smaller one for fine structures): the fraction of the
  surface voxels of both masks lying within the tolerance of the other surface.
* ``volume_pred``, ``volume_ref`` in ml for 3D, area in mm^2 for 2D; ``volume_error = volume_pred - volume_ref``
  (signed, same unit).

Distances use the image spacing in array-axis order, so anisotropic voxels are honoured. Surfaces and exact
Euclidean surface distances are computed as MONAI computes them for its ``compute_hausdorff_distance``,
``compute_average_surface_distance`` and ``compute_surface_dice`` (surface = mask XOR its scipy erosion; nearest
surface voxel by a KD-tree over physical coordinates), once per class on the bounding box of prediction |
reference plus a one-voxel margin. The few lines are written here over scipy rather than imported from
``monai.metrics``, because ``import monai`` alone took about a minute on a loaded 2-core machine: longer than
scoring the 52 hippocampus test cases. ``tests/test_evaluate.py`` checks the results against MONAI's functions.

Empty-mask conventions (also written into ``summary.json``):

* class absent from both prediction and reference: dice, iou, precision, recall, f1 = 1; hd95, assd and nsd
  are NaN (not defined) and left out of means; volumes 0.
* class present in only one of them: dice, iou, precision, recall, f1 = 0; nsd = 0; hd95 and assd are NaN
  (missing, left out of means) and the number of such cases is reported per class in ``summary.json``.
* ``region``: voxels outside the region mask are set to background in both maps before anything is scored.
* a reference without a prediction is not scored; its case id is listed in ``missing_predictions``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.errors import MedsegError
from medseg.io import IMAGE_SUFFIXES, image_suffix, read_image
from medseg.io.atomic import write_text_atomic

OVERLAP_METRICS = ("dice", "iou", "precision", "recall", "f1")
DISTANCE_METRICS = ("hd95_mm", "assd_mm", "nsd")
SIZE_METRICS = ("volume_pred", "volume_ref", "volume_error")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS + SIZE_METRICS
CSV_COLUMNS = ("case", "prediction", "reference", "label", "label_value") + METRICS
SIZE_UNITS = {2: "mm2", 3: "ml"}
DEFAULT_TOLERANCE_MM = 2.0

CONVENTIONS = (
    "Background (label 0) is not scored. Class absent from both prediction and reference: dice, iou, precision, "
    "recall, f1 = 1; hd95_mm, assd_mm and nsd are NaN and excluded from the statistics. Class present in only "
    "one: dice, iou, precision, recall, f1 = 0, nsd = 0; hd95_mm and assd_mm are NaN (missing, excluded; counted "
    "under 'empty'). hd95_mm is the larger of the two directed 95th percentiles of surface-voxel distances (MONAI); "
    "assd_mm is the mean symmetric surface distance; nsd is the normalised surface Dice at tolerance_mm. "
    "Distances use the voxel spacing in mm. volume_* are in size_unit (ml for 3D, mm2 for 2D); "
    "volume_error = volume_pred - volume_ref. With a region mask, voxels outside it are background in both "
    "maps. References without a prediction are not scored (missing_predictions). Statistics: mean, median, "
    "population std and n over the finite values."
)
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_\d{4}$")
_SKIPPED_NAMES = {"dataset.json", "split.json", "splits.json", "plans.json"}


# ----------------------------------------------------------------------------------------------- one case


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx: tuple[float, ...] | list[float],
    labels: dict[int, str],
    region: np.ndarray | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> list[dict[str, Any]]:
    """Score one case: a row per foreground label (``label``, ``label_value`` and :data:`METRICS`).

    ``pred`` and ``ref`` are integer label maps of the same spatial shape (``(Y, X)`` or ``(Z, Y, X)``, no
    channel axis); ``spacing_zyx`` is the spacing in that axis order, in mm; ``region`` an optional mask
    (non-zero = scored) of the same shape.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    if pred.ndim not in (2, 3) or len(spacing_zyx) != pred.ndim:
        raise ValueError(f"expected 2D or 3D maps with one spacing per axis, got shape {pred.shape} and "
                         f"spacing {tuple(spacing_zyx)}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if region is not None:
        region = np.asarray(region)
        if region.shape != pred.shape:
            raise ValueError(f"region shape {region.shape} differs from the label maps' {pred.shape}")
        outside = region == 0
        pred = np.where(outside, 0, pred)
        ref = np.where(outside, 0, ref)
    voxel_size = math.prod(spacing) / (1000.0 if pred.ndim == 3 else 1.0)
    rows = []
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        scores = _score_class(pred == value, ref == value, spacing, voxel_size, tolerance_mm)
        rows.append({"label": name, "label_value": int(value)} | {metric: scores[metric] for metric in METRICS})
    return rows


def _score_class(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], voxel_size: float,
                 tolerance_mm: float) -> dict[str, float]:
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    row = {"volume_pred": n_pred * voxel_size, "volume_ref": n_ref * voxel_size}
    row["volume_error"] = row["volume_pred"] - row["volume_ref"]
    nan = float("nan")
    if n_pred == 0 and n_ref == 0:
        return row | dict.fromkeys(OVERLAP_METRICS, 1.0) | dict.fromkeys(DISTANCE_METRICS, nan)
    if n_pred == 0 or n_ref == 0:
        return row | dict.fromkeys(OVERLAP_METRICS, 0.0) | {"hd95_mm": nan, "assd_mm": nan, "nsd": 0.0}
    tp = int(np.count_nonzero(p & r))
    precision, recall = tp / n_pred, tp / n_ref
    dice = 2.0 * tp / (n_pred + n_ref)
    row |= {
        "dice": dice,
        "iou": tp / (n_pred + n_ref - tp),
        "precision": precision,
        "recall": recall,
        "f1": 0.0 if tp == 0 else 2 * precision * recall / (precision + recall),
    }
    return row | surface_distances(p, r, spacing, tolerance_mm)


def _crop(p: np.ndarray, r: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus ``margin`` voxels (clipped to the array)."""
    union = p | r
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, union.shape[axis])))
    return p[tuple(box)], r[tuple(box)]


def surface_distances(p: np.ndarray, r: np.ndarray, spacing_zyx: tuple[float, ...],
                      tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, float]:
    """HD95 (mm), ASSD (mm) and normalised surface Dice of two non-empty boolean masks.

    Both directed surface distances are computed once and reduced the way MONAI's three functions reduce them,
    several times cheaper than calling each of them.
    """
    p, r = _crop(p, r)
    scale = np.asarray(spacing_zyx, dtype=np.float64)
    surface_p = np.argwhere(p ^ ndimage.binary_erosion(p)) * scale
    surface_r = np.argwhere(r ^ ndimage.binary_erosion(r)) * scale
    # float32, as MONAI returns them: the tolerance comparison below must round the same way.
    to_ref = cKDTree(surface_r, leafsize=32).query(surface_p, k=1)[0].astype(np.float32)
    to_pred = cKDTree(surface_p, leafsize=32).query(surface_r, k=1)[0].astype(np.float32)
    both = np.concatenate([to_ref, to_pred])
    within = np.count_nonzero(both <= np.asarray(tolerance_mm, dtype=both.dtype))
    return {
        "hd95_mm": float(max(np.percentile(to_ref.astype(np.float64), 95),
                             np.percentile(to_pred.astype(np.float64), 95))),
        "assd_mm": float(both.astype(np.float64).mean()),
        "nsd": float(within / both.size),
    }


# -------------------------------------------------------------------------------------------- many cases


@dataclass
class EvaluationResult:
    """Rows of :func:`evaluate_case` for every matched case, plus what could not be matched."""

    rows: list[dict[str, Any]]
    labels: dict[int, str]
    dim: int
    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    missing_predictions: list[str] = field(default_factory=list)
    extra_predictions: list[str] = field(default_factory=list)

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(row["case"] for row in self.rows))

    @property
    def size_unit(self) -> str:
        return SIZE_UNITS[self.dim]

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` content: statistics per class, empty-mask counts, unmatched cases."""
        per_class: dict[str, dict[str, dict[str, float | int | None]]] = {}
        empty: dict[str, dict[str, int]] = {}
        for value, name in sorted(self.labels.items()):
            rows = [row for row in self.rows if row["label_value"] == value]
            per_class[name] = {metric: _stats([row[metric] for row in rows]) for metric in METRICS}
            pred_empty = [row["volume_pred"] == 0 for row in rows]
            ref_empty = [row["volume_ref"] == 0 for row in rows]
            empty[name] = {
                "both_empty": sum(a and b for a, b in zip(pred_empty, ref_empty)),
                "pred_empty_only": sum(a and not b for a, b in zip(pred_empty, ref_empty)),
                "ref_empty_only": sum(b and not a for a, b in zip(pred_empty, ref_empty)),
            }
        means = [stats["dice"]["mean"] for stats in per_class.values() if stats["dice"]["mean"] is not None]
        return {
            "cases": len(self.cases),
            "size_unit": self.size_unit,
            "tolerance_mm": self.tolerance_mm,
            "conventions": CONVENTIONS,
            "per_class": per_class,
            "empty": empty,
            "mean_dice": float(np.mean(means)) if means else None,
            "missing_predictions": list(self.missing_predictions),
            "extra_predictions": list(self.extra_predictions),
        }


def _stats(values: list[float]) -> dict[str, float | int | None]:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "std": float(finite.std()),
            "n": int(finite.size)}


def case_id(path: str | Path) -> str:
    """A file's case id: its name without the image suffix (``case_001.nii.gz`` -> ``case_001``)."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _label_files(path: Path, what: str) -> dict[str, Path]:
    if not path.exists():
        raise MedsegError("does not exist", path, f"give the {what} folder or file")
    if path.is_file():
        return {case_id(path): path}
    files: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        if (child.name.startswith(".") or child.name in _SKIPPED_NAMES or not child.is_file()
                or image_suffix(child) not in IMAGE_SUFFIXES):
            continue
        key = case_id(child)
        if key in files:
            raise MedsegError(f"two files for case {key!r}: {files[key].name} and {child.name}", path,
                              "keep one file per case")
        files[key] = child
    return files


def resolve_labels(labels: dict[int, str] | str | Path | None, reference: str | Path) -> dict[int, str] | None:
    """Label names from a dict, a ``dataset.json`` path, or text like ``1:liver,2:tumour``; with ``None``,
    a ``dataset.json`` in or above the reference folder; ``None`` when there is none (use the values present)."""
    from medseg.data import parse_labels

    if isinstance(labels, dict):
        return {int(k): str(v) for k, v in labels.items()}
    if labels is not None:
        text = str(labels).strip()
        path = Path(text)
        if not text.startswith("{") and (path.suffix == ".json" or path.is_dir()):
            return _labels_from_dataset_json(path / "dataset.json" if path.is_dir() else path)
        return parse_labels(text)
    reference = Path(reference)
    folder = reference if reference.is_dir() else reference.parent
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            return _labels_from_dataset_json(candidate)
    return None


def _labels_from_dataset_json(path: Path) -> dict[int, str]:
    from medseg.data import parse_labels

    if not path.is_file():
        raise MedsegError("does not exist", path, "give a dataset.json, or labels like 1:liver,2:tumour")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedsegError(f"is not valid JSON ({exc})", path, "fix the file or pass labels like 1:liver") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise MedsegError("has no 'labels' object", path, 'add "labels": {"0": "background", "1": "liver"}')
    return parse_labels(json.dumps(meta["labels"]))


def _read_label_map(path: Path) -> tuple[np.ndarray, Any]:
    image = read_image(path)
    if image.channels != 1:
        raise MedsegError(f"has {image.channels} channels; a label map has one", path,
                          "give single-channel integer label maps")
    array = image.array[0]
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise MedsegError("holds non-integer values, so it is not a label map", path,
                              "give arg-maxed label maps (e.g. `medseg predict` output), not probabilities")
        array = array.astype(np.int64)
    return array, image


def _evaluate_pair(job: tuple[str, Path, Path, Path | None, dict[int, str] | None, float]) -> list[dict]:
    case, pred_path, ref_path, region_path, labels, tolerance_mm = job
    pred, pred_image = _read_label_map(pred_path)
    ref, ref_image = _read_label_map(ref_path)
    difference = pred_image.geometry_difference(ref_image)
    if difference:
        raise MedsegError(f"is not on the grid of the reference {ref_path} ({difference})", pred_path,
                          "resample the prediction onto the reference image's grid")
    region = None
    if region_path is not None:
        region_image = read_image(region_path)
        if region_image.shape != ref_image.shape:
            raise MedsegError(f"region mask shape {region_image.shape} differs from the reference {ref_path} "
                              f"({ref_image.shape})", region_path, "give the region mask of this case")
        region = region_image.array.any(axis=0)
    if labels is None:  # the values present, named label_N; the caller adds the union's missing ones
        values = np.union1d(np.unique(pred), np.unique(ref))
        labels = {int(v): f"label_{int(v)}" for v in values if v != 0}
    rows = evaluate_case(pred, ref, ref_image.spacing_zyx, labels, region=region, tolerance_mm=tolerance_mm)
    prefix = {"case": case, "prediction": str(pred_path), "reference": str(ref_path)}
    return [prefix | row | {"_dim": ref_image.ndim} for row in rows]


def _init_worker() -> None:
    torch = sys.modules.get("torch")  # inherited from a parent that trains or predicts; never imported here
    if torch is not None:
        torch.set_num_threads(1)  # as torch's own DataLoader workers: forked processes must not share OpenMP pools


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | str | Path | None = None,
    region_dir: str | Path | None = None,
    workers: int | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> EvaluationResult:
    """Score every prediction against the reference with the same case id (folders or single files).

    ``labels``: a dict, a ``dataset.json`` path or ``1:a,2:b`` text; default a ``dataset.json`` in or above
    ``ref_dir``, else the union of the values present (``label_N``). ``region_dir``: masks matched by case id
    (or one mask for all). ``workers``: processes (``None``: up to 4, one below 16 cases).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = _label_files(pred_dir, "prediction"), _label_files(ref_dir, "reference")
    if pred_dir.is_file() and ref_dir.is_file():
        preds = {next(iter(refs)): pred_dir}
    else:
        for key in list(preds):  # nnU-Net channel suffix on a prediction: case_0000 -> case
            match = _CHANNEL_SUFFIX.match(key)
            if key not in refs and match and match["case"] in refs and match["case"] not in preds:
                preds[match["case"]] = preds.pop(key)
    matched = [key for key in refs if key in preds]
    if ref_dir.is_file() or pred_dir.is_file():
        missing, extra = [], []
    else:
        missing = [key for key in refs if key not in preds]
        extra = [key for key in preds if key not in refs]
    if not matched:
        raise MedsegError(f"no prediction matches a reference in {ref_dir}", pred_dir,
                          "name each prediction like its reference file, e.g. case_001.nii.gz")
    regions: dict[str, Path] = {}
    if region_dir is not None:
        region_dir = Path(region_dir)
        found = _label_files(region_dir, "region mask")
        for key in matched:
            if region_dir.is_file():
                regions[key] = region_dir
            elif key in found:
                regions[key] = found[key]
            else:
                raise MedsegError(f"has no region mask for case {key!r}", region_dir,
                                  f"add {key} with the reference's suffix, or leave out --region")
    names = resolve_labels(labels, ref_dir)
    jobs = [(key, preds[key], refs[key], regions.get(key), names, float(tolerance_mm)) for key in matched]
    workers = workers or (1 if len(jobs) < 16 else min(4, os.cpu_count() or 1))
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        context = multiprocessing.get_context("fork") if os.name == "posix" else None
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker) as pool:
            results = list(pool.map(_evaluate_pair, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_evaluate_pair(job) for job in jobs]
    dims = {row.pop("_dim") for rows in results for row in rows}
    dim = dims.pop() if len(dims) == 1 else None
    if dim is None:
        raise MedsegError("mixes 2D and 3D label maps", ref_dir, "evaluate 2D and 3D cases separately")
    if names is None:
        values = sorted({row["label_value"] for rows in results for row in rows})
        names = {v: f"label_{v}" for v in values}
        results = [_complete(rows, names, dim) for rows in results]
    names = {v: n for v, n in sorted(names.items()) if v != 0}
    rows = [row for case_rows in results for row in case_rows]
    return EvaluationResult(rows, names, dim, float(tolerance_mm), missing, extra)


def _complete(rows: list[dict], names: dict[int, str], dim: int) -> list[dict]:
    """Add both-empty rows for labels of the union absent from this case."""
    if not rows:
        return rows
    present = {row["label_value"] for row in rows}
    prefix = {k: rows[0][k] for k in ("case", "prediction", "reference")}
    empty = np.zeros((1,) * dim, dtype=np.uint8)
    for value in sorted(set(names) - present):
        rows.append(prefix | evaluate_case(empty, empty, (1.0,) * dim, {value: names[value]})[0])
    return sorted(rows, key=lambda row: row["label_value"])


def write_evaluation(result: EvaluationResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (a row per case and class) and ``summary.json`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegError("is a file, not a folder", out_dir, "give a folder for the report")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        writer.writerow([_cell(row[column]) for column in CSV_COLUMNS])
    csv_path, json_path = out_dir / "metrics.csv", out_dir / "summary.json"
    write_text_atomic(csv_path, buffer.getvalue())
    write_text_atomic(json_path, json.dumps(result.summary(), indent=1) + "\n")
    return csv_path, json_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)
