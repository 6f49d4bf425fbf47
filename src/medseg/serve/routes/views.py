"""The web viewer's API: a segmentation with its display copy, the mask kept for download, the example scans
(ranked for correction in a worklist), and corrections saved as training data."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from medseg.errors import MedsegError
from medseg.io import read_image
from medseg.serve.cases import UPLOAD_SUFFIXES, CaseRunner, FiniteJSONResponse, Served, error_text, mask_response
from medseg.serve.config import ServeConfig
from medseg.serve.corrections import (
    Correction,
    CorrectionError,
    CorrectionStore,
    apply_display_changes,
    check_name,
    decode_changes,
    new_case_name,
)
from medseg.serve.dependencies import (
    authorize,
    find_model,
    get_config,
    get_corrections,
    get_home,
    get_models,
    get_runner,
    get_views,
    get_worklist,
)
from medseg.serve.viewer import Kept, Stored, ViewCache, list_examples
from medseg.serve.worklist import Worklist

PRIVATE = {"Cache-Control": "no-store"}  # answers holding patient data
KEPT = "kept"  # the scans of viewer results that may be corrected, under the service's folder

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/models/{name}/view", tags=["viewer"])
async def view(request: Request, name: str,
               file: UploadFile | None = File(None, description="as for segment"),
               uncertainty: bool = Query(False, description="add the uncertainty map"),
               example: str | None = Query(None, description="a file of /v1/examples instead of an upload"),
               models: dict[str, Served] = Depends(get_models), runner: CaseRunner = Depends(get_runner),
               views: ViewCache = Depends(get_views), config: ServeConfig = Depends(get_config),
               corrections: CorrectionStore | None = Depends(get_corrections),
               home: Path = Depends(get_home)) -> Response:
    """Segment one scan for the web viewer: the JSON answer of segment (volumes from the full-resolution
    labels), a display copy (``view``: scan channels as base64 little-endian int16 with slope/intercept,
    labels, uncertainty as uint8, legend) and ``mask_url``, where the mask in the input's format can be
    fetched until ``expires_s`` seconds have passed. Where the service saves corrections, ``correction_url``
    takes the corrected labels for as long."""
    served = find_model(models, name)
    keep = None
    if corrections is not None:  # the scan stays (in a private folder) while its result may be corrected
        (home / KEPT).mkdir(mode=0o700, exist_ok=True)
        keep = Path(tempfile.mkdtemp(prefix="view-", dir=home / KEPT))
    try:
        result = await runner.run(served, file, example, uncertainty, view=True,
                                  disconnected=request.is_disconnected, keep=keep)
    except BaseException:
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
        raise
    kept = None
    if keep is not None:
        source = example if example is not None else (file.filename if file is not None else None) or "upload"
        kept = Kept(next(keep.iterdir()), served.name, Path(source).name, example)
    key = views.put(result.mask, result.suffix, kept)
    answer = {"result": result.body, "view": result.view, "mask_url": f"/v1/views/{key}/mask",
              "mask_filename": f"mask{result.suffix}", "expires_s": config.view_ttl_s,
              "correction_url": f"/v1/views/{key}/correction" if kept is not None else None}
    return FiniteJSONResponse(answer, headers=PRIVATE)


@router.get("/v1/views/{key}/mask", tags=["viewer"])
def view_mask(key: str, views: ViewCache = Depends(get_views), config: ServeConfig = Depends(get_config)) -> Response:
    """The mask of a viewer's result, in the input's format (NIfTI for DICOM), while it has not expired."""
    stored = views.get(key)
    if stored is None:
        raise HTTPException(404, f"this result has expired (results are kept {config.view_ttl_s:g} s): "
                                 "segment the scan again")
    return mask_response(stored.mask, stored.suffix, PRIVATE)


@router.post("/v1/views/{key}/correction", tags=["viewer"])
async def save_correction(key: str, body: dict[str, Any] = Body(..., examples=[{
        "corrected_by": "A. Radiologist", "index": "base64 of little-endian uint32 flat display indices",
        "value": "base64 of little-endian uint16 new label values"}]),
        views: ViewCache = Depends(get_views), models: dict[str, Served] = Depends(get_models),
        corrections: CorrectionStore | None = Depends(get_corrections),
        config: ServeConfig = Depends(get_config)) -> dict[str, Any]:
    """Save a viewer result with the voxels the clinician changed (on the display grid) as a labelled case of
    the corrections data set of its model (see :mod:`medseg.serve.corrections`); saving again replaces it.
    The answer names the case and the voxels changed, never a server path."""
    if corrections is None:
        raise HTTPException(403, "this service does not save corrections (start it with --corrections DIR)")
    stored = views.get(key)
    if stored is None or stored.kept is None:
        raise HTTPException(404, f"this result has expired (results are kept {config.view_ttl_s:g} s): "
                                 "segment the scan again and redo the correction")
    try:
        corrected_by, changes = check_name(body.get("corrected_by")), decode_changes(body)
    except CorrectionError as error:
        raise HTTPException(400, str(error)) from None
    served = models[stored.kept.model]
    try:
        return await asyncio.to_thread(_save, stored, served, corrections, config, corrected_by, changes)
    except CorrectionError as error:
        raise HTTPException(400, str(error)) from None


def _save(stored: Stored, served: Served, store: CorrectionStore, config: ServeConfig, corrected_by: str,
          changes: Any) -> dict[str, Any]:
    kept = stored.kept
    assert kept is not None
    try:
        scan = read_image(kept.upload, limits=config.read_limits)
        mask_file = kept.upload.with_name(f"predicted{stored.suffix}")
        mask_file.write_bytes(stored.mask)
        predicted = read_image(mask_file)
    except FileNotFoundError:  # the entry expired while this request waited
        raise HTTPException(404, "this result has expired: segment the scan again") from None
    except MedsegError as error:
        raise HTTPException(400, error_text(error, kept.upload.parent)) from None
    plan = served.bundle.plan
    labels, changed = apply_display_changes(predicted.array[0], scan, changes, set(plan.disk_labels))
    kept.case = kept.case or new_case_name()
    token_id = hashlib.sha256(config.token.encode()).hexdigest()[:12] if config.token else None
    correction = Correction(served.name, served.bundle.version, plan.disk_labels, plan.channel_names, corrected_by,
                            token_id, kept.source_name, kept.example)
    sidecar = store.save(kept.case, scan, predicted.with_array(labels[None].astype(predicted.array.dtype)),
                         correction, changed)
    return {"case": sidecar["case"], "model": served.name, "changed_voxels": changed,
            "saved_at": sidecar["saved_at"], "corrected_by": corrected_by}


@router.post("/v1/models/{name}/worklist", tags=["viewer"])
async def worklist(name: str, models: dict[str, Served] = Depends(get_models),
                   runner: CaseRunner = Depends(get_runner), ranking: Worklist = Depends(get_worklist),
                   corrections: CorrectionStore | None = Depends(get_corrections)) -> dict[str, Any]:
    """The example scans ranked for correction by this model: each segmented once (results kept) and ordered by
    its per-case uncertainty score, highest first; those with a saved correction last, marked ``corrected``."""
    served = find_model(models, name)
    files = list_examples(runner.examples, UPLOAD_SUFFIXES)
    corrected = corrections.corrected_examples(served.name) if corrections is not None else set()
    return {"model": served.name, "cases": await ranking.rank(served, runner, files, corrected)}


@router.get("/v1/examples", tags=["viewer"])
def examples_list(runner: CaseRunner = Depends(get_runner)) -> dict[str, Any]:
    """The scans in the admin's example folder (``--examples``), by name; empty when none is configured."""
    listing = list_examples(runner.examples, UPLOAD_SUFFIXES)
    return {"examples": [{"name": n, "bytes": p.stat().st_size} for n, p in listing.items()]}
