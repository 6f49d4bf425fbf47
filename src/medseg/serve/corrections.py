"""Corrections from the web viewer, saved as training data (``medseg serve --corrections DIR``).

A clinician paints over a viewer result (brush and eraser per label, on the display copy) and presses "Save
correction". The page sends only what changed: flat indices on the display grid and the new label values
(:func:`decode_changes`). The service maps them back to the scan's full-resolution grid
(:func:`apply_display_changes`; where the display copy was subsampled by ``stride``, a changed display voxel
sets the ``stride``-sided block it stands for) and writes the scan and the corrected mask as one case of a
standard data set, one folder per model, so that ``medseg check`` and ``medseg train --init`` read it as is:

    DIR/<model>/imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json     (3D: Decathlon layout)
    DIR/<model>/images/<case>.png, masks/<case>.png, dataset.json                     (2D folder layout)
    DIR/<model>/corrections/<case>.json     who corrected it and when, the model and its version, voxels changed

Case names are made up (``corr-<UTC time>-<random>``), never taken from an upload's file name, and the log
line of a save names only the model, the case name and the voxel count: no patient data reaches the logs. The
sidecar keeps the uploaded file's name (it sits beside the scan itself, which is patient data anyway). Every
file is written under a temporary name and renamed; saving the same viewer result again replaces its case.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io import Image, image_suffix, write_image
from medseg.io.atomic import atomic_path
from medseg.serve.viewer import display_flips, display_stride

log = logging.getLogger("medseg.serve")

SIDECARS = "corrections"
MAX_NAME = 100
NAME_PATTERN = re.compile(r"^[\w .,'()-]+$")
TWO_D_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}  # kept as uploaded; other 2D formats are written as PNG


class CorrectionError(ValueError):
    """A correction the service refuses (answered 400 with this text)."""


@dataclass(frozen=True)
class Changes:
    """Voxels the viewer changed: flat indices on the display grid (C order) and their new label values."""

    index: np.ndarray  # int64
    value: np.ndarray  # int64


def _array(entry: Any, dtype: str, what: str) -> np.ndarray:
    if not isinstance(entry, str):
        raise CorrectionError(f"'{what}' must be base64 text of little-endian {dtype}")
    try:
        raw = base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError):
        raise CorrectionError(f"'{what}' is not valid base64") from None
    item = np.dtype(dtype).itemsize
    if len(raw) % item:
        raise CorrectionError(f"'{what}' holds {len(raw)} bytes, not a whole number of {dtype}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.int64)


def decode_changes(body: dict[str, Any]) -> Changes:
    """``{"index": base64 uint32, "value": base64 uint16}`` -> :class:`Changes` (400 text when malformed)."""
    index, value = _array(body.get("index"), "uint32", "index"), _array(body.get("value"), "uint16", "value")
    if index.size != value.size:
        raise CorrectionError(f"'index' holds {index.size} voxels but 'value' holds {value.size}")
    return Changes(index, value)


def check_name(name: Any) -> str:
    """The corrector's name or initials, as typed in the viewer: required, one short line of plain text."""
    text = str(name or "").strip()
    if not text:
        raise CorrectionError("say who made the correction ('corrected_by': a name or initials)")
    if len(text) > MAX_NAME or not NAME_PATTERN.match(text):
        raise CorrectionError(f"'corrected_by' must be at most {MAX_NAME} letters, digits, spaces or .,'()-")
    return text


def apply_display_changes(predicted: np.ndarray, scan: Image, changes: Changes,
                          allowed: set[int]) -> tuple[np.ndarray, int]:
    """The full-resolution label map with the viewer's changes applied, and how many voxels changed.

    The display grid is ``predicted`` subsampled by :func:`~medseg.serve.viewer.display_stride` and flipped by
    :func:`~medseg.serve.viewer.display_flips`, exactly as :func:`~medseg.serve.viewer.view_payload` made it.
    """
    stride = display_stride(predicted.shape)
    shown_shape = tuple(-(-s // stride) for s in predicted.shape)
    if changes.index.size and (changes.index.min() < 0 or changes.index.max() >= np.prod(shown_shape)):
        raise CorrectionError(f"an index lies outside the display grid of {' x '.join(map(str, shown_shape))}")
    unknown = sorted(set(np.unique(changes.value).tolist()) - allowed)
    if unknown:
        raise CorrectionError(f"label value(s) {unknown} are not this model's (it has {sorted(allowed)})")
    flips = display_flips(scan) or [False] * predicted.ndim
    coords = list(np.unravel_index(changes.index, shown_shape))
    for axis, flipped in enumerate(flips):
        if flipped:
            coords[axis] = shown_shape[axis] - 1 - coords[axis]
    corrected = predicted.copy()
    if stride == 1:
        corrected[tuple(coords)] = changes.value
    else:  # a display voxel stands for the block of full-resolution voxels it was sampled from
        for offset in np.ndindex(*(stride,) * predicted.ndim):
            block = [c * stride + o for c, o in zip(coords, offset)]
            inside = np.all([b < s for b, s in zip(block, predicted.shape)], axis=0)
            corrected[tuple(b[inside] for b in block)] = changes.value[inside]
    return corrected, int((corrected != predicted).sum())


def new_case_name() -> str:
    return f"corr-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Correction:
    """One save: who, the model it corrects, where the scan came from (an example's name or the upload's)."""

    model: str
    version: str
    labels: dict[int, str]
    channel_names: dict[int, str]
    corrected_by: str
    token_id: str | None  # a short hash of the bearer token used, never the token
    source_name: str
    example: str | None  # the --examples file corrected, when it came from there


class CorrectionStore:
    """Writes corrected cases into ``root/<model>/``, a standard labelled data set (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedsegError(f"cannot be created ({exc.strerror})", path,
                              "give --corrections a folder the service may write") from None
        if not path.is_dir():
            raise MedsegError("is not a folder", path, "give --corrections a folder for corrected cases")
        self.root = path.resolve()
        self.lock = threading.Lock()  # dataset.json is read, changed and replaced by one save at a time

    def folder(self, model: str) -> Path:
        return self.root / model

    def save(self, case: str, scan: Image, mask: Image, correction: Correction, changed: int) -> dict[str, Any]:
        """Write ``case`` (replacing an earlier save of it); the sidecar's content is returned."""
        folder = self.folder(correction.model)
        three_d = mask.ndim == 3
        image_dir, label_dir = ("imagesTr", "labelsTr") if three_d else ("images", "masks")
        suffix = ".nii.gz" if three_d else _two_d_suffix(correction.source_name)
        mask_suffix = ".nii.gz" if three_d else ".png"
        files = []
        if three_d:  # one file a channel, as nnU-Net names them
            for c in range(scan.channels):
                channel = scan.with_array(scan.array[c:c + 1])
                files.append(write_image(channel, folder / image_dir / f"{case}_{c:04d}{suffix}"))
        else:
            files.append(write_image(scan, folder / image_dir / f"{case}{suffix}"))
        label_file = write_image(mask, folder / label_dir / f"{case}{mask_suffix}")
        sidecar = {
            "case": case, "corrected_by": correction.corrected_by, "token_id": correction.token_id,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": correction.model, "bundle_version": correction.version, "changed_voxels": changed,
            "source_name": correction.source_name, "example": correction.example,
            "images": [f"{image_dir}/{f.name}" for f in files], "label": f"{label_dir}/{label_file.name}",
            "medseg_version": __version__,
        }
        _write_json(folder / SIDECARS / f"{case}.json", sidecar)
        with self.lock:
            self._update_dataset_json(folder, correction, three_d, mask_suffix)
        log.info("correction saved: model=%s case=%s changed_voxels=%d", correction.model, case, changed)
        return sidecar

    def corrected_examples(self, model: str) -> set[str]:
        """The names of the ``--examples`` files that have a saved correction for ``model``."""
        found = set()
        for path in sorted((self.folder(model) / SIDECARS).glob("*.json")):
            try:
                example = json.loads(path.read_text()).get("example")
            except (OSError, ValueError):
                continue
            if isinstance(example, str):
                found.add(example)
        return found

    def _update_dataset_json(self, folder: Path, correction: Correction, three_d: bool, mask_suffix: str) -> None:
        """dataset.json with the model's labels and channels; ``numTraining`` counts the cases (3D layout)."""
        path = folder / "dataset.json"
        meta: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {
            "name": f"{correction.model} corrections",
            "description": "cases corrected in the medseg viewer (see corrections/ for who and when)",
        }
        meta["labels"] = {str(v): n for v, n in sorted(correction.labels.items())}
        meta["channel_names"] = {str(c): n for c, n in sorted(correction.channel_names.items())}
        meta["file_ending"] = mask_suffix
        if three_d:
            cases = sorted(p.name[: -len(mask_suffix)] for p in (folder / "labelsTr").glob(f"*{mask_suffix}")
                           if not p.name.startswith("."))
            meta["numTraining"] = len(cases)
            if "training" in meta:  # keep an explicit list true as well
                meta["training"] = [{"image": f"./imagesTr/{c}{mask_suffix}", "label": f"./labelsTr/{c}{mask_suffix}"}
                                    for c in cases]
        _write_json(path, meta)


def _two_d_suffix(source_name: str) -> str:
    suffix = image_suffix(source_name)
    return suffix if suffix in TWO_D_SUFFIXES else ".png"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
