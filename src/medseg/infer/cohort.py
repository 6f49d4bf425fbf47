"""A cohort: files in, masks out, with a ``predictions.json`` manifest, surviving bad cases and restarts.

    predict_paths(bundle, ["scans/"], "out/")                       # every case, a manifest, failures listed
    predict_paths(bundle, ["scans/"], "out/", resume=True)          # after a crash: only what is not done yet
    torchrun --nproc_per_node 4 -m medseg predict BUNDLE scans/ -o out/   # inputs split over the ranks

How restarts work: every mask is written atomically (a temporary name, then a rename), and once a case's files
are in place its record is appended to a journal (``.medseg-predict/journal-<rank>.jsonl``, flushed and synced).
``resume`` skips the cases the journal lists whose files still exist, deletes temporaries a killed process left
beside the outputs, and predicts the rest; the manifest lists every case, old and new. A half-written journal line
(a kill during the append) is ignored, so its case is simply predicted again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.bundle import Bundle
from medseg.data.dataset import Case, discover_dataset, load_case_image
from medseg.errors import MedsegError
from medseg.evaluate.metrics import SIZE_UNITS
from medseg.infer.predict import Prediction, PredictOptions, Predictor, case_uncertainty_score
from medseg.io import CHANNEL_FILE, IMAGE_SUFFIXES, image_stem, image_suffix, write_image
from medseg.io.atomic import write_text_atomic
from medseg.io.dicom_rtstruct import write_rtstruct
from medseg.io.dicom_seg import write_dicom_seg
from medseg.io.nifti import NIFTI_SUFFIXES
from medseg.io.paths import json_safe
from medseg.io.raster import LOSSY_SUFFIXES, RASTER_SUFFIXES

log = logging.getLogger("medseg.predict")

MANIFEST_FILE = "predictions.json"
JOURNAL_FOLDER = ".medseg-predict"


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
    if fmt in ("dicom-seg", "rtstruct"):
        return out_dir / f"{item.case_id}.{'seg' if fmt == 'dicom-seg' else 'rtstruct'}.dcm"
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
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    label_codes: dict | None = None,  # DICOM SEG codes by label name over the bundle's (medseg.io.label_codes)
) -> dict[str, Any]:
    """Predict every input into ``out_dir``; returns (and writes) the manifest.

    A case that fails, for whatever reason, is listed under ``failed`` and the others still run. ``resume`` skips
    cases already complete (see the module docstring). With ``world_size > 1`` this process takes every
    ``world_size``-th input from ``rank`` and writes its part of the manifest, ``predictions.part-<rank>.json``;
    :func:`merge_manifests` joins the parts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = inputs if inputs and isinstance(inputs[0], PredictInput) else collect_inputs(inputs)  # type: ignore
    items = list(items)[rank::world_size]  # type: ignore[assignment]
    journal = Journal(out_dir, rank)
    done = journal.completed(bundle) if resume else {}
    if resume:
        remove_temporaries(out_dir / (MANIFEST_FILE if world_size == 1 else f"predictions.part-{rank}.json"))
    predictor = Predictor(bundle, options)
    codes = bundle.plan.segment_codes(label_codes)
    start = time.perf_counter()
    manifest = _manifest_header(bundle, predictor)
    manifest["resumed"] = 0
    for index, item in enumerate(items):  # type: ignore[arg-type]
        if progress:
            progress(index, len(items), item.case_id)
        previous = done.get(_key(item))
        if previous is not None:
            manifest["cases"].append(previous)
            manifest["resumed"] += 1
            continue
        if resume:
            remove_temporaries(output_path(item, out_dir, fmt))
        record = _predict_one(predictor, item, out_dir, fmt, bundle.plan.disk_labels, codes)
        if "error" in record:
            manifest["failed"].append(record)
            continue
        journal.append(record, bundle)
        manifest["cases"].append(record)
    if progress:
        progress(len(items), len(items), "")
    manifest["total_seconds"] = round(time.perf_counter() - start, 3)
    if world_size > 1:
        manifest["rank"], manifest["world_size"] = rank, world_size
    name = MANIFEST_FILE if world_size == 1 else f"predictions.part-{rank}.json"
    write_text_atomic(out_dir / name, json.dumps(json_safe(manifest), indent=1) + "\n")
    return manifest


def _manifest_header(bundle: Bundle, predictor: Predictor) -> dict[str, Any]:
    return {
        "medseg_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "bundle": str(bundle.folder), "tta": predictor.tta, "overlap": predictor.overlap,
        "backend": predictor.options.backend, "device": str(predictor.device), "precision": predictor.precision,
        "postprocess": predictor.postprocess.to_dict() if predictor.postprocess else None,
        # the bundle's temperatures applied to probabilities, uncertainty and uncertainty_score (None: uncalibrated)
        "calibration": predictor.calibration.temperatures if predictor.calibration else None,
        "folds": predictor.options.folds or bundle.folds,
        "cases": [], "failed": [],
    }


def _predict_one(predictor: Predictor, item: PredictInput, out_dir: Path, fmt: str,
                 names: dict[int, str], label_codes: dict | None = None) -> dict[str, Any]:
    """One case's record, or its failure record (with ``error``): one bad case never stops the cohort."""
    try:
        image = load_case_image(Case(item.case_id, item.files))
        result = predictor.predict(image, item.files[0])
        return write_prediction(result, item, out_dir, fmt, names, label_codes)
    except MedsegError as error:
        return {"case": item.case_id, "input": [str(f) for f in item.files], "error": error.message}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 - e.g. MemoryError or a bug on one strange case: keep going
        log.exception("case %s failed", item.case_id)
        return {"case": item.case_id, "input": [str(f) for f in item.files],
                "error": f"internal error ({type(error).__name__}: {error}); please report it", "internal": True}


def merge_manifests(out_dir: str | Path, world_size: int) -> dict[str, Any]:
    """Join the ranks' ``predictions.part-<rank>.json`` into ``predictions.json`` (cases in input order per
    rank); the parts are kept."""
    out_dir = Path(out_dir)
    parts = [json.loads((out_dir / f"predictions.part-{rank}.json").read_text()) for rank in range(world_size)]
    merged = {k: v for k, v in parts[0].items() if k not in ("rank", "cases", "failed", "resumed", "total_seconds")}
    merged["cases"] = [c for part in parts for c in part["cases"]]
    merged["failed"] = [f for part in parts for f in part["failed"]]
    merged["resumed"] = sum(part.get("resumed", 0) for part in parts)
    merged["total_seconds"] = max(part["total_seconds"] for part in parts)
    merged["world_size"] = world_size
    write_text_atomic(out_dir / MANIFEST_FILE, json.dumps(merged, indent=1) + "\n")
    return merged


def _key(item: PredictInput) -> str:
    return json.dumps([item.case_id, [str(f) for f in item.files]])


class Journal:
    """Records of finished cases, appended one line each (flushed and synced) as the cohort goes."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.folder = out_dir / JOURNAL_FOLDER
        self.path = self.folder / f"journal-{rank}.jsonl"

    def append(self, record: dict[str, Any], bundle: Bundle) -> None:
        self.folder.mkdir(exist_ok=True)
        line = json.dumps({"bundle": str(bundle.folder), "record": record}) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def completed(self, bundle: Bundle) -> dict[str, dict[str, Any]]:
        """Finished cases of every rank's journal, by input, whose output files still exist."""
        done: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("journal-*.jsonl")) if self.folder.is_dir() else []:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    record = entry["record"]
                    same_bundle = entry["bundle"] == str(bundle.folder)
                    key = json.dumps([record["case"], record["input"]])
                    files = [record["output"]] + [record[k] for k in ("probabilities", "uncertainty") if k in record]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that case is predicted again
                if same_bundle and all(Path(f).exists() for f in files):
                    done[key] = record
        return done


def remove_temporaries(final: Path) -> None:
    """Delete the temporaries :func:`medseg.io.atomic.atomic_path` made for ``final`` and its side maps
    (``.NAME.<random><suffix>``) that a killed process left behind; nothing else matches."""
    base = final.name[: -len(image_suffix(final))] if image_suffix(final) else final.name
    for pattern in (f".{final.name}.*", f".{base}_probabilities.*", f".{base}_uncertainty.*"):
        for leftover in final.parent.glob(pattern):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)


def write_prediction(result: Prediction, item: PredictInput, out_dir: Path, fmt: str = "same",
                     names: dict[int, str] | None = None, label_codes: dict | None = None) -> dict[str, Any]:
    """Write the mask (and side maps); ``fmt="dicom-seg"`` writes a DICOM SEG (``"rtstruct"``: an RT Structure
    Set) referencing a DICOM input series, one segment (ROI) per label of ``names``."""
    if fmt in ("dicom-seg", "rtstruct"):
        source = item.files[0]
        if not (source.is_dir() or image_suffix(source) == ".zip"):
            kind = "a DICOM SEG" if fmt == "dicom-seg" else "an RTSTRUCT"
            raise MedsegError(f"is not a DICOM series folder or .zip: {kind} must reference one", source,
                              "use --format same (or nii.gz) for other inputs")
        values = names or {int(v): f"label {v}" for v in np.unique(result.labels.array) if v != 0} or {1: "label 1"}
        uids, series_uid = result.labels.meta.get("sop_instance_uids"), result.labels.meta.get("series_instance_uid")
        if fmt == "rtstruct":
            path = write_rtstruct(result.labels.array, source, output_path(item, out_dir, fmt), values,
                                  sop_instance_uids=uids, series_uid=series_uid)
        else:
            path = write_dicom_seg(result.labels.array, source, output_path(item, out_dir, fmt), values,
                                   sop_instance_uids=uids, series_uid=series_uid, label_codes=label_codes)
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
        record["uncertainty_score"] = case_uncertainty_score(result.uncertainty.array[0], result.labels.array[0])
    return record
