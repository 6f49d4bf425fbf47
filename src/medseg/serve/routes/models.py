"""The models served and segmenting a scan with one of them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response

from medseg.serve.cases import CaseRunner, Served, answer
from medseg.serve.dependencies import authorize, find_model, get_models, get_runner

router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/v1/models", tags=["models"])
def list_models(models: dict[str, Served] = Depends(get_models)) -> list[dict[str, Any]]:
    """Each model: name, version, labels, channels, dimension and its training figures."""
    return [served.describe() for served in models.values()]


@router.post("/v1/models/{name}/segment", tags=["segment"],
             responses={200: {"content": {"application/gzip": {}, "image/png": {}, "application/json": {}},
                              "description": "the mask (the input's format; NIfTI for DICOM) or JSON"}})
async def segment(request: Request, name: str,
                  file: UploadFile | None = File(None, description="NIfTI, PNG/JPEG/TIFF, or a .zip of one DICOM "
                                                                   "series"),
                  format: str = Query("file", pattern="^(file|json)$", description="file: the mask; json: "
                                      "volumes per label and the drift check"),
                  uncertainty: bool = Query(False, description="add an uncertainty summary (JSON)"),
                  example: str | None = Query(None, description="segment this file of /v1/examples instead "
                                                                "of an upload"),
                  models: dict[str, Served] = Depends(get_models),
                  runner: CaseRunner = Depends(get_runner)) -> Response:
    """Segment one scan and answer with its mask, or with JSON volumes (``?format=json``)."""
    served = find_model(models, name)
    result = await runner.run(served, file, example, uncertainty, disconnected=request.is_disconnected)
    return answer(result, format == "json")
