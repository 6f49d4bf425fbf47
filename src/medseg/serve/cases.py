"""One case, from upload to answer: the scan saved into its own private folder, admitted to a slot, segmented by
a worker thread (stopped when its request gives up or its time is up, see :mod:`medseg.serve.cancel`), and
encoded as the mask file or the JSON answer.

Every case lives in a fresh 0700 folder under the service's root (``mkdtemp``), deleted as soon as the case ends;
an upload's name only picks the format (its suffix), never a path, and it is read within
``ServeConfig.read_limits``. Errors a client can fix are :class:`ClientError`; the service turns them into HTTP
answers without server paths. JSON answers go through :class:`FiniteJSONResponse`: never a ``NaN``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import UploadFile
from fastapi.responses import JSONResponse, Response

from medseg.bundle import Bundle, load_bundle
from medseg.errors import MedsegError
from medseg.infer.predict import PredictOptions, Predictor, case_uncertainty_score
from medseg.infer.sliding import Cancelled
from medseg.io import image_suffix, read_image, write_image
from medseg.io.limits import ReadLimits
from medseg.io.raster import LOSSY_SUFFIXES
from medseg.serve.admission import CHUNK, Admission, Metrics, too_large
from medseg.serve.cancel import ClientGone, Stop, Submitted, wait_case
from medseg.serve.config import ServeConfig
from medseg.serve.drift import DriftReference
from medseg.serve.viewer import list_examples, view_payload

UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".zip")  # no NRRD/MHA: their
# headers may name other files to read (detached data), which an upload must not be able to do
MEDIA_TYPES = {".nii.gz": "application/gzip", ".nii": "application/octet-stream", ".png": "image/png",
               ".tif": "image/tiff", ".tiff": "image/tiff"}


class ClientError(Exception):
    """An answer for the client: HTTP ``status`` with ``detail`` (and ``headers``, e.g. ``Retry-After``)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass
class Served:
    """A bundle being served: loaded once, with its predictor and drift reference."""

    name: str
    bundle: Bundle
    predictor: Predictor
    drift: DriftReference
    load_seconds: float
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict)  # the bundle's version and parent

    def describe(self) -> dict[str, Any]:
        plan, metrics = self.bundle.plan, self.bundle.metrics
        folds = {k: {key: v.get(key) for key in ("val_dice", "val_dice_mean", "cases", "steps", "elapsed_s")
                     if key in v} for k, v in metrics.get("folds", {}).items()}
        return {"name": self.name, "version": plan.medseg_version, "dataset": plan.dataset_name,
                "labels": {str(k): v for k, v in plan.disk_labels.items()},
                "channels": {"count": plan.channels, "names": {str(k): v for k, v in plan.channel_names.items()}},
                "dimension": plan.data_dim, "model": plan.model, "folds": self.bundle.folds,
                "backend": self.predictor.options.backend, "tta": self.predictor.tta,
                "training": {"folds": folds, "inference": metrics.get("inference", {})},
                "drift_reference": self.drift.source, "bundle_version": self.lineage.get("version"),
                "lineage": self.lineage}


def model_name(bundle: Bundle, taken: set[str]) -> str:
    """The bundle folder's name, or the data set's when the folder is just ``bundle``; made unique."""
    name = bundle.folder.name
    if name in ("bundle", "") or name in taken:
        name = bundle.plan.dataset_name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def load_models(bundles: Sequence[str | Path], config: ServeConfig, metrics: Metrics | None = None,
                ) -> dict[str, Served]:
    """Name -> served model for each bundle folder, each loaded once (with ``metrics``: its version shown)."""
    models: dict[str, Served] = {}
    for folder in bundles:
        start = time.perf_counter()
        bundle = load_bundle(folder)
        predictor = Predictor(bundle, PredictOptions(backend=config.backend, tta=config.tta, device=config.device))
        seconds = time.perf_counter() - start
        name = model_name(bundle, set(models))
        models[name] = Served(name, bundle, predictor, DriftReference.from_bundle(bundle), seconds, bundle.lineage)
        if metrics is not None:
            metrics.show_model(name, models[name].lineage)
    return models


@dataclass
class CaseResult:
    body: dict[str, Any]  # the JSON answer
    mask: bytes
    suffix: str
    view: dict[str, Any] | None = None  # the viewer's display copy (``/view`` only)


def upload_suffix(filename: str | None) -> str:
    """The upload's format from its name; 415 (400 without an extension) for anything not accepted."""
    suffix = image_suffix(filename or "")
    if suffix not in UPLOAD_SUFFIXES:
        raise ClientError(415 if suffix else 400, f"upload '{suffix or '(no extension)'}' is not a supported format; "
                          f"send one of {', '.join(UPLOAD_SUFFIXES)} (a DICOM series as a .zip)")
    return suffix


def mask_suffix(suffix: str) -> str:
    """The mask's format for an input format: NIfTI for DICOM, PNG for lossy JPEG, else the input's."""
    if suffix == ".zip":
        return ".nii.gz"
    return ".png" if suffix in LOSSY_SUFFIXES else suffix


def error_text(error: MedsegError, folder: Path | None = None) -> str:
    """The error without the server-side temporary path (nor ``folder``, should a message quote it)."""
    text = error.what + (f" ({error.fix})" if error.fix else "")
    return text.replace(f"{folder}{os.sep}", "").replace(str(folder), "upload") if folder is not None else text


def uncertainty_summary(uncertainty: np.ndarray, labels: np.ndarray, calibrated: bool = False,
                        ) -> dict[str, float | bool]:
    """Means of the uncertainty map, and the per-case ``score`` (see ``case_uncertainty_score``); ``calibrated``:
    whether the map comes from the bundle's calibrated probabilities (:mod:`medseg.infer.calibration`), so that
    scores of bundles with and without calibration are not compared unawares."""
    foreground = labels > 0
    return {"score": case_uncertainty_score(uncertainty, labels), "calibrated": calibrated,
            "mean": round(float(uncertainty.mean()), 5),
            "mean_in_foreground": round(float(uncertainty[foreground].mean()), 5) if foreground.any() else 0.0,
            "fraction_above_0_5": round(float((uncertainty > 0.5).mean()), 6)}


def with_options(predictor: Predictor, **changes: Any) -> Predictor:
    """A shallow copy sharing the loaded models, with other options (per request)."""
    other = copy.copy(predictor)
    other.options = dataclasses.replace(predictor.options, **changes)
    return other


def run_case(served: Served, upload: Path, suffix: str, uncertainty: bool, view: bool = False,
             should_stop: Callable[[], bool] | None = None, limits: ReadLimits | None = None,
             keep: Path | None = None) -> CaseResult:
    """Read (within ``limits``), check, segment and encode one uploaded scan (runs in a worker thread); with
    ``view``, also the viewer's display copy of scan, labels and uncertainty. ``should_stop`` ends the prediction
    early with :class:`~medseg.infer.sliding.Cancelled` (see :mod:`medseg.serve.cancel`). With ``keep`` (a
    folder), the upload is kept there once segmented, as ``upload<suffix>``, for a correction to be saved."""
    try:  # limits None: the readers' defaults (medseg.io.limits)
        image = read_image(upload, limits=limits)
    except MedsegError as error:
        raise ClientError(400, f"cannot read the upload: {error_text(error, upload.parent)}") from None
    predictor = served.predictor
    if uncertainty and not predictor.options.uncertainty:
        predictor = with_options(predictor, uncertainty=True)
    try:  # predict checks the input first (dimension, channels, NaN/Inf): one pass over the voxels, not two
        result = predictor.predict(image, should_stop=should_stop)
    except MedsegError as error:  # wrong dimension or channels, NaN or infinite voxels, a resampling too large
        raise ClientError(422, error_text(error, upload.parent)) from None
    labels = result.labels.array[0]
    drift = served.drift.check(image, labels)
    body: dict[str, Any] = {"model": served.name, "volumes": result.volumes, "components": result.components,
                            "volume_unit": "ml" if labels.ndim == 3 else "mm2",
                            "shape": list(labels.shape), "spacing": list(result.labels.spacing),
                            "seconds": round(result.seconds, 3), "drift": drift}
    if result.uncertainty is not None:
        body["uncertainty"] = uncertainty_summary(result.uncertainty.array[0], labels,
                                                  calibrated=predictor.calibration is not None)
    suffix_out = mask_suffix(suffix)
    out = write_image(result.labels, upload.parent / f"mask{suffix_out}")
    shown = None
    if view:
        plan = served.bundle.plan
        modality = "ct" if any(n.scheme == "ct" for n in plan.normalization) else "other"
        shown = view_payload(image, labels, None if result.uncertainty is None else result.uncertainty.array[0],
                             plan.disk_labels, modality)
    if keep is not None:
        keep_upload(upload, keep / upload.name)
    return CaseResult(body, out.read_bytes(), suffix_out, shown)


def keep_upload(upload: Path, target: Path) -> None:
    """A hard link where the file system allows (no copy of a large scan), else a copy."""
    try:
        os.link(upload, target)
    except OSError:
        shutil.copyfile(upload, target)


async def save_upload(file: UploadFile, root: Path, limit: int) -> tuple[Path, str]:
    """Stream the upload into a new private folder under ``root``; 413 past ``limit`` bytes, 400 when empty."""
    suffix = upload_suffix(file.filename)
    work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    path = work / f"upload{suffix}"
    size = 0
    try:
        with open(path, "wb") as handle:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ClientError(413, too_large(limit))
                handle.write(chunk)
        if size == 0:
            raise ClientError(400, "the upload is empty")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return path, suffix


async def take_input(file: UploadFile | None, example: str | None, examples: Path | None, root: Path,
                     limit: int) -> tuple[Path, str]:
    """The scan to segment, in its own private folder: the upload, or a copy of the named example."""
    if (file is None) == (example is None):
        raise ClientError(400, "send either a scan (multipart 'file') or '?example=NAME' (see /v1/examples)")
    if file is not None:
        return await save_upload(file, root, limit)
    found = list_examples(examples, UPLOAD_SUFFIXES).get(str(example))
    if found is None:
        raise ClientError(404, "no such example: choose a name listed by /v1/examples")
    suffix = image_suffix(found.name)
    work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    try:
        await asyncio.to_thread(shutil.copyfile, found, work / f"upload{suffix}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work / f"upload{suffix}", suffix


def mask_response(mask: bytes, suffix: str, headers: dict[str, str]) -> Response:
    """The mask as a download named ``mask{suffix}``."""
    return Response(mask, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                    headers=headers | {"Content-Disposition": f'attachment; filename="mask{suffix}"'})


def finite(value: Any) -> Any:
    """``value`` with each float that is not finite (NaN, infinity) replaced by None, in dicts, lists and tuples
    at any depth: JSON without the non-standard ``NaN`` (which many clients cannot parse)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """Every JSON answer of the service: floats that are not finite become ``null``; never ``NaN``."""

    def render(self, content: Any) -> bytes:
        return json.dumps(finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def answer(result: CaseResult, want_json: bool) -> Response:
    """The mask file (or the JSON body), with the drift flag and volumes as headers either way."""
    headers = {"X-Medseg-Drift": str(result.body["drift"]["flag"]).lower(),
               "X-Medseg-Volumes": json.dumps(finite(result.body["volumes"]), allow_nan=False)}
    if want_json:
        return FiniteJSONResponse(result.body, headers=headers)
    return mask_response(result.mask, result.suffix, headers)


def timed_out(timeout_s: float) -> str:
    return f"segmentation took longer than {timeout_s:g} s and was stopped"


class CaseRunner:
    """Takes cases in (private folders under ``root``), admits them to the bounded slots and runs them on
    ``max_concurrency`` worker threads, counting outcomes in ``metrics``; each case can be stopped (see
    :mod:`medseg.serve.cancel`)."""

    def __init__(self, config: ServeConfig, admission: Admission, metrics: Metrics, root: Path,
                 examples: Path | None) -> None:
        self.config, self.admission, self.metrics = config, admission, metrics
        self.root, self.examples = root, examples
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="medseg-case")
        self.live: set[Submitted] = set()  # admitted and not ended
        self.lock = threading.Lock()

    async def take_input(self, file: UploadFile | None, example: str | None) -> tuple[Path, str]:
        return await take_input(file, example, self.examples, self.root, self.config.max_upload_bytes)

    def submit(self, served: Served, path: Path, suffix: str, uncertainty: bool,
               on_start: Callable[[], None] | None = None, view: bool = False,
               timeout_s: float | None = None, keep: Path | None = None) -> Submitted:
        """Run the case saved at ``path`` in a worker, stopped ``timeout_s`` seconds after it starts (a job's
        failure then says 504); 503 (its folder deleted) when every slot is taken. The slot and the folder are
        freed when the case ends, however it ends."""
        admission, metrics = self.admission, self.metrics
        if not admission.try_acquire():
            shutil.rmtree(path.parent, ignore_errors=True)
            raise ClientError(503, "busy: too many scans queued, retry later",
                              headers={"Retry-After": str(self.config.retry_after_s)})
        metrics.show(admission)
        stop = Stop()

        def work() -> CaseResult:
            stop.begin(timeout_s)
            metrics.show(admission)
            if on_start is not None:
                on_start()
            return self.segment(served, path, suffix, uncertainty, view, stop, timeout_s, keep)

        def done(_: Future | None = None) -> None:
            with self.lock:
                self.live.discard(case)
            admission.release()
            metrics.show(admission)
            shutil.rmtree(path.parent, ignore_errors=True)

        try:
            case = Submitted(self.executor.submit(work), stop)
        except RuntimeError:  # the executor was shut down: the service is stopping
            case = Submitted(Future(), stop)
            done()
            raise ClientError(503, "the service is shutting down", headers={
                "Retry-After": str(self.config.retry_after_s)}) from None
        with self.lock:
            self.live.add(case)
        case.future.add_done_callback(done)
        return case

    def segment(self, served: Served, path: Path, suffix: str, uncertainty: bool, view: bool, stop: Stop,
                timeout_s: float | None, keep: Path | None = None) -> CaseResult:
        """:func:`run_case` with its outcome counted: ok, rejected (a client error), cancelled or error."""
        cases = self.metrics.cases
        try:
            if stop():
                raise Cancelled("stopped before it started")
            result = run_case(served, path, suffix, uncertainty, view=view, should_stop=stop,
                              limits=self.config.read_limits, keep=keep)
        except Cancelled:
            cases.labels(served.name, "cancelled").inc()
            if stop.expired() and timeout_s is not None:
                raise ClientError(504, timed_out(timeout_s)) from None
            raise
        except ClientError:
            cases.labels(served.name, "rejected").inc()
            raise
        except Exception:
            cases.labels(served.name, "error").inc()
            raise
        cases.labels(served.name, "ok").inc()
        if result.body["drift"]["flag"]:
            self.metrics.drift.labels(served.name).inc()
        return result

    async def run(self, served: Served, file: UploadFile | None, example: str | None, uncertainty: bool,
                  view: bool = False, disconnected: Callable[[], Awaitable[bool]] | None = None,
                  keep: Path | None = None) -> CaseResult:
        """One case answered in this request: 504 past ``request_timeout_s`` (counted from admission, waiting
        included). When the request gives up (timed out, ``disconnected()`` said the client left, or it was
        cancelled) the case is stopped: dropped from the queue, or ended at its next check."""
        path, suffix = await self.take_input(file, example)
        timeout = self.config.request_timeout_s
        case = self.submit(served, path, suffix, uncertainty, view=view, timeout_s=timeout, keep=keep)
        try:
            return await wait_case(case.future, timeout, disconnected)
        except asyncio.TimeoutError:
            raise ClientError(504, timed_out(timeout)) from None
        except ClientGone:
            raise ClientError(499, "the client closed the request; its case was stopped") from None
        finally:
            if not case.future.done():
                case.cancel()

    def shutdown(self) -> None:
        """Drop the waiting cases and stop the running ones at their next check."""
        with self.lock:
            live = list(self.live)
        for case in live:
            case.stop.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
