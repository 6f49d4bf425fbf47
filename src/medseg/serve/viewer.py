"""What the web viewer (``GET /``, files in ``static/``) needs beyond the plain API: a display copy of the scan, its
label map and uncertainty map as compact arrays, the legend, a bounded cache of masks to download, and the
admin's example folder (files picked by name only).

The display copy stays on the scan's own voxel grid, subsampled by a whole factor only when large (so the label
overlay stays aligned); volumes and the downloadable mask always come from the full-resolution answer. Axes whose
direction points the "wrong" way are flipped for display only, so axial slices show the patient's right on the
left (radiological convention) with anterior at the top, when the scan's direction matrix is axis-aligned.
"""

from __future__ import annotations

import base64
import math
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.io import Image, image_suffix

MAX_VIEW_SIDE = 1024  # a display copy larger than this on any axis is subsampled
MAX_VIEW_VOXELS = 2**24  # ... or larger than this in all
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")


def legend(labels: dict[int, str]) -> list[dict[str, Any]]:
    """Foreground labels with their names and colours, in label order."""
    return [{"value": int(v), "name": name, "color": label_colour(int(v))} for v, name in sorted(labels.items())
            if int(v) != 0]


def display_stride(shape: tuple[int, ...], max_side: int = MAX_VIEW_SIDE, max_voxels: int = MAX_VIEW_VOXELS) -> int:
    """The smallest whole subsampling factor that brings ``shape`` within the display limits."""
    stride = 1
    while max(math.ceil(s / stride) for s in shape) > max_side or \
            math.prod(math.ceil(s / stride) for s in shape) > max_voxels:
        stride += 1
    return stride


def display_flips(image: Image) -> list[bool] | None:
    """Per array axis (``(Z,) Y, X``): flip it for display? None when the direction is not axis-aligned."""
    direction = image.direction_matrix
    if not np.allclose(np.abs(direction), np.eye(image.ndim), atol=1e-3):
        return None
    return [bool(direction[i, i] < 0) for i in reversed(range(image.ndim))]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _encode_scan(channel: np.ndarray) -> dict[str, Any]:
    """One channel as int16 with ``value = stored * slope + intercept``, its range and a default window."""
    values = channel.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if low >= -32768 and high <= 32767 and np.array_equal(values, np.round(values)):
        stored, slope, intercept = values.astype(np.int16), 1.0, 0.0
    else:
        slope = (high - low) / 65535.0 or 1.0
        intercept = low + 32768.0 * slope
        stored = np.clip(np.round((values - intercept) / slope), -32768, 32767).astype(np.int16)
    sample = finite[:: max(1, finite.size // 1_000_000)] if finite.size else np.zeros(1)
    window = [float(v) for v in np.percentile(sample, [0.5, 99.5])]
    if window[1] <= window[0]:
        window = [low, high if high > low else low + 1.0]
    return {"dtype": "int16", "data": _b64(stored), "slope": slope, "intercept": intercept, "min": low,
            "max": high, "window": window}


def view_payload(image: Image, labels: np.ndarray, uncertainty: np.ndarray | None, names: dict[int, str],
                 modality: str) -> dict[str, Any]:
    """The display copy for the viewer: scan channel(s) as int16, labels as uint8/uint16, uncertainty as uint8,
    all in C order on the display grid ``shape`` (``[Y, X]`` or ``[Z, Y, X]``), with spacing in the same order."""
    stride = display_stride(image.shape)
    take = (slice(None, None, stride),) * image.ndim
    flips = display_flips(image)
    flip_axes = tuple(i for i, f in enumerate(flips or []) if f)

    def display(array: np.ndarray) -> np.ndarray:
        return np.flip(array[take], flip_axes) if flip_axes else array[take]

    shown_labels = display(labels)
    label_type = np.uint8 if int(labels.max(initial=0)) < 256 else np.uint16
    rgb = image.ndim == 2 and image.channels == 3 and image.array.dtype == np.uint8
    channels = [_encode_scan(display(image.array[c])) for c in range(min(image.channels, 4))]
    out: dict[str, Any] = {
        "dim": image.ndim, "shape": list(shown_labels.shape), "stride": stride,
        "spacing": [s * stride for s in image.spacing_zyx], "original_shape": list(image.shape),
        "orientation": "radiological" if flips is not None else "as stored", "channels": channels,
        "channel_count": image.channels, "rgb": bool(rgb), "modality": modality,
        "labels": {"dtype": label_type.__name__, "data": _b64(shown_labels.astype(label_type))},
        "legend": legend(names), "uncertainty": None,
    }
    if uncertainty is not None:
        shown = np.clip(np.round(display(uncertainty) * 255), 0, 255).astype(np.uint8)
        out["uncertainty"] = {"dtype": "uint8", "scale": 1 / 255, "data": _b64(shown)}
    return out


@dataclass
class Kept:
    """The scan behind a viewer result, kept (as uploaded) while the result may be corrected."""

    upload: Path  # in a private folder of its own under the service's folder, deleted with the entry
    model: str
    source_name: str  # the upload's file name or the example's name: for the correction's sidecar, never logs
    example: str | None
    case: str | None = None  # the corrections' case name, once saved (a second save replaces it)


@dataclass
class Stored:
    expires: float
    mask: bytes
    suffix: str
    kept: Kept | None = None


class ViewCache:
    """Masks kept for download by an unguessable id: at most ``size`` of them, each for ``ttl_s`` seconds; with
    them, where corrections are saved, the scans they came from (deleted when their entry goes)."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.ttl_s, self.size = ttl_s, max(1, size)
        self.items: OrderedDict[str, Stored] = OrderedDict()
        self.lock = threading.Lock()

    def put(self, mask: bytes, suffix: str, kept: Kept | None = None) -> str:
        key = secrets.token_urlsafe(24)
        with self.lock:
            self._prune()
            self.items[key] = Stored(time.monotonic() + self.ttl_s, mask, suffix, kept)
            while len(self.items) > self.size:
                _drop(self.items.popitem(last=False)[1])
        return key

    def get(self, key: str) -> Stored | None:
        with self.lock:
            self._prune()
            return self.items.get(key)

    def prune(self) -> None:
        with self.lock:
            self._prune()

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self.items.items() if v.expires <= now]:
            _drop(self.items.pop(key))

    def clear(self) -> None:
        with self.lock:
            for stored in self.items.values():
                _drop(stored)
            self.items.clear()


def _drop(stored: Stored) -> None:
    if stored.kept is not None:
        shutil.rmtree(stored.kept.upload.parent, ignore_errors=True)


def examples_folder(folder: str | Path | None) -> Path | None:
    """The admin's example folder, checked once at start-up."""
    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise MedsegError("is not a folder", path, "give --examples a folder of scans (NIfTI, PNG/JPEG, DICOM .zip)")
    return path.resolve()


def list_examples(folder: Path | None, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Name -> file for each readable scan directly in ``folder`` (no sub-folders, no hidden files, no links
    leading outside it). Clients name a file from this listing; no path from a request is ever joined."""
    if folder is None or not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or not set(name) <= NAME_CHARS or image_suffix(name) not in suffixes:
            continue
        real = path.resolve()
        if real.is_file() and folder in real.parents:
            found[name] = real
    return found
