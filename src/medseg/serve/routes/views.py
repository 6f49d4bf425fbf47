"""The web viewer's API: a segmentation with its display copy, the mask kept for download, the example scans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from medseg.serve.cases import UPLOAD_SUFFIXES, CaseRunner, FiniteJSONResponse, Served, mask_response
from medseg.serve.config import ServeConfig
from medseg.serve.dependencies import authorize, find_model, get_config, get_models, get_runner, get_views
from medseg.serve.viewer import ViewCache, list_examples

PRIVATE = {"Cache-Control": "no-store"}  # answers holding patient data

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/models/{name}/view", tags=["viewer"])
async def view(request: Request, name: str,
               file: UploadFile | None = File(None, description="as for segment"),
               uncertainty: bool = Query(False, description="add the uncertainty map"),
               example: str | None = Query(None, description="a file of /v1/examples instead of an upload"),
               models: dict[str, Served] = Depends(get_models), runner: CaseRunner = Depends(get_runner),
               views: ViewCache = Depends(get_views), config: ServeConfig = Depends(get_config)) -> Response:
    """Segment one scan for the web viewer: the JSON answer of segment (volumes from the full-resolution
    labels), a display copy (``view``: scan channels as base64 little-endian int16 with slope/intercept,
    labels, uncertainty as uint8, legend) and ``mask_url``, where the mask in the input's format can be
    fetched until ``expires_s`` seconds have passed."""
    result = await runner.run(find_model(models, name), file, example, uncertainty, view=True,
                              disconnected=request.is_disconnected)
    key = views.put(result.mask, result.suffix)
    return FiniteJSONResponse({"result": result.body, "view": result.view, "mask_url": f"/v1/views/{key}/mask",
                               "mask_filename": f"mask{result.suffix}", "expires_s": config.view_ttl_s},
                              headers=PRIVATE)


@router.get("/v1/views/{key}/mask", tags=["viewer"])
def view_mask(key: str, views: ViewCache = Depends(get_views), config: ServeConfig = Depends(get_config)) -> Response:
    """The mask of a viewer's result, in the input's format (NIfTI for DICOM), while it has not expired."""
    stored = views.get(key)
    if stored is None:
        raise HTTPException(404, f"this result has expired (results are kept {config.view_ttl_s:g} s): "
                                 "segment the scan again")
    return mask_response(stored.mask, stored.suffix, PRIVATE)


@router.get("/v1/examples", tags=["viewer"])
def examples_list(runner: CaseRunner = Depends(get_runner)) -> dict[str, Any]:
    """The scans in the admin's example folder (``--examples``), by name; empty when none is configured."""
    listing = list_examples(runner.examples, UPLOAD_SUFFIXES)
    return {"examples": [{"name": n, "bytes": p.stat().st_size} for n, p in listing.items()]}
