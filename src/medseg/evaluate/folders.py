"""``medseg evaluate`` on files: match predictions to references by case id, score them, write the report.

Files are matched by case id, the file name without its image suffix (a prediction named like an nnU-Net
channel file, ``case_0000``, also matches reference ``case``); grids must agree. Cases are scored in worker
processes from 16 cases up; the report is ``metrics.csv`` (a row per case and class) and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.evaluate.metrics import CSV_COLUMNS, EvaluationResult, evaluate_case
from medseg.evaluate.surface import DEFAULT_TOLERANCE_MM
from medseg.io import CHANNEL_FILE, IMAGE_SUFFIXES, image_stem, image_suffix, read_image
from medseg.io.atomic import write_text_atomic

_SKIPPED_NAMES = {"dataset.json", "split.json", "splits.json", "plans.json"}


def _label_files(path: Path, what: str) -> dict[str, Path]:
    if not path.exists():
        raise MedsegError("does not exist", path, f"give the {what} folder or file")
    if path.is_file():
        return {image_stem(path): path}
    files: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        if (child.name.startswith(".") or child.name in _SKIPPED_NAMES or not child.is_file()
                or image_suffix(child) not in IMAGE_SUFFIXES):
            continue
        key = image_stem(child)
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


Members = dict[int, tuple[int, ...]]


def resolve_classes(labels: dict[int, str] | str | Path | None, reference: str | Path,
                    regions_file: str | Path | None = None) -> tuple[dict[int, str] | None, Members | None]:
    """The scored classes: label names (see :func:`resolve_labels`), or regions (class key -> name, and the label
    values of each) from ``regions_file`` or from a region ``dataset.json`` (:mod:`medseg.data.regions`)."""
    from medseg.data import load_regions_file

    if regions_file is not None:
        _, regions = load_regions_file(regions_file)
    else:
        meta_path = _dataset_json_for(labels, reference)
        regions = _regions_of(meta_path) if meta_path is not None else []
        if not regions:
            return resolve_labels(labels, reference), None
    return {i + 1: r.name for i, r in enumerate(regions)}, {i + 1: r.values for i, r in enumerate(regions)}


def _dataset_json_for(labels: dict[int, str] | str | Path | None, reference: str | Path) -> Path | None:
    """The dataset.json that ``labels`` names, or the one in or above the reference when ``labels`` is None."""
    if isinstance(labels, dict):
        return None
    if labels is not None:
        path = Path(str(labels).strip())
        path = path / "dataset.json" if path.is_dir() else path
        return path if path.suffix == ".json" and path.is_file() else None
    folder = Path(reference) if Path(reference).is_dir() else Path(reference).parent
    return next((c for c in (folder / "dataset.json", folder.parent / "dataset.json") if c.is_file()), None)


def _regions_of(path: Path) -> list:
    from medseg.data.regions import is_region_labels, parse_regions

    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []  # resolve_labels reads it again and says what is wrong
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict) or not is_region_labels(meta["labels"]):
        return []
    return parse_regions(meta["labels"], meta.get("regions_class_order"), path)[1]


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


def _evaluate_pair(job: tuple[str, Path, Path, Path | None, dict[int, str] | None, float, Members | None]
                   ) -> list[dict]:
    case, pred_path, ref_path, region_path, labels, tolerance_mm, members = job
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
    rows = evaluate_case(pred, ref, ref_image.spacing_zyx, labels, region=region, tolerance_mm=tolerance_mm,
                         members=members)
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
    regions_file: str | Path | None = None,
) -> EvaluationResult:
    """Score every prediction against the reference with the same case id (folders or single files).

    ``labels``: a dict, a ``dataset.json`` path or ``1:a,2:b`` text; default a ``dataset.json`` in or above
    ``ref_dir``, else the union of the values present (``label_N``). ``region_dir``: masks matched by case id
    (or one mask for all). ``workers``: processes (``None``: up to 4, one below 16 cases). Regions
    (``regions_file``, or a ``dataset.json`` declaring them) are scored instead of label values.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = _match_files(pred_dir, ref_dir)
    matched = [key for key in refs if key in preds]
    if ref_dir.is_file() or pred_dir.is_file():
        missing, extra = [], []
    else:
        missing = [key for key in refs if key not in preds]
        extra = [key for key in preds if key not in refs]
    if not matched:
        raise MedsegError(f"no prediction matches a reference in {ref_dir}", pred_dir,
                          "name each prediction like its reference file, e.g. case_001.nii.gz")
    regions = _region_files(Path(region_dir), matched) if region_dir is not None else {}
    names, members = resolve_classes(labels, ref_dir, regions_file)
    jobs = [(key, preds[key], refs[key], regions.get(key), names, float(tolerance_mm), members) for key in matched]
    results = _run_jobs(jobs, workers)
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


def _match_files(pred_dir: Path, ref_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Prediction and reference files by case id, the predictions renamed to the reference they match.

    Two single files always match; in a folder, a prediction named like an nnU-Net channel file
    (``case_0000``) takes the id ``case`` when only that matches a reference.
    """
    preds, refs = _label_files(pred_dir, "prediction"), _label_files(ref_dir, "reference")
    if pred_dir.is_file() and ref_dir.is_file():
        return {next(iter(refs)): pred_dir}, refs
    for key in list(preds):  # nnU-Net channel suffix on a prediction: case_0000 -> case
        match = CHANNEL_FILE.match(key)
        if key not in refs and match and match["case"] in refs and match["case"] not in preds:
            preds[match["case"]] = preds.pop(key)
    return preds, refs


def _region_files(region_dir: Path, matched: list[str]) -> dict[str, Path]:
    """The region mask of each matched case: the one file ``region_dir`` for all, or the file of its case id."""
    found = _label_files(region_dir, "region mask")
    regions: dict[str, Path] = {}
    for key in matched:
        if region_dir.is_file():
            regions[key] = region_dir
        elif key in found:
            regions[key] = found[key]
        else:
            raise MedsegError(f"has no region mask for case {key!r}", region_dir,
                              f"add {key} with the reference's suffix, or leave out --region")
    return regions


def _run_jobs(jobs: list[tuple], workers: int | None) -> list[list[dict]]:
    """Score the cases in order: in worker processes (forked where possible) when several, else here."""
    workers = workers or (1 if len(jobs) < 16 else min(4, os.cpu_count() or 1))
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        context = multiprocessing.get_context("fork") if os.name == "posix" else None
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker) as pool:
            return list(pool.map(_evaluate_pair, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return [_evaluate_pair(job) for job in jobs]


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
