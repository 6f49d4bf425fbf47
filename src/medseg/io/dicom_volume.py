"""From the files of one DICOM image series to a volume: slice order, LPS geometry, decoded and rescaled pixels.

Used by :mod:`medseg.io.dicom_series` once it has chosen a series and read its files:

* :func:`check_consistent_slices` refuses series whose slices differ in size, samples per pixel or orientation.
* :func:`sort_slices` orders slices along the slice normal (``row cosine x column cosine``), or by InstanceNumber
  when positions are missing.
* :func:`series_geometry` gives ITK/LPS spacing, origin (the first slice) and direction (columns: row cosine,
  column cosine, normal), refusing duplicate positions and non-uniform slice gaps.
* :func:`stack_pixels` decodes the slices and applies the modality rescale (RescaleSlope/Intercept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medseg.errors import ImageReadError
from medseg.io.dicom_archive import ArchiveMember

__all__ = [
    "SeriesSlice",
    "check_consistent_slices",
    "series_geometry",
    "sop_instance_uid",
    "sort_slices",
    "stack_pixels",
]

SeriesSlice = tuple[ArchiveMember, Dataset]  # one file of a series and its dataset, pixels included

_SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ from their mean by 1 %
_ORIENTATION_TOLERANCE = 1e-4


def check_consistent_slices(slices: list[SeriesSlice], name: str) -> None:
    """All slices must share Rows/Columns, samples per pixel and orientation."""
    first_member, first = slices[0]
    for member, ds in slices[1:]:
        for keyword in ("Rows", "Columns", "SamplesPerPixel"):
            if ds.get(keyword) != first.get(keyword):
                raise ImageReadError(
                    f"{name}: inconsistent slices, {keyword} is {ds.get(keyword)} here but "
                    f"{first.get(keyword)} in {first_member.name}",
                    member.location,
                    "the series mixes images of different sizes; export it again or remove the odd files",
                )
        if not np.allclose(_orientation(ds), _orientation(first), atol=_ORIENTATION_TOLERANCE):
            raise ImageReadError(
                f"{name}: inconsistent slices, ImageOrientationPatient differs from {first_member.name}",
                member.location,
                "the series mixes orientations (e.g. a localiser); export it again or remove the odd files",
            )


def _orientation(ds: Dataset) -> np.ndarray:
    iop = ds.get("ImageOrientationPatient")
    return np.asarray([float(v) for v in iop], dtype=np.float64) if iop else np.array([1.0, 0, 0, 0, 1, 0])


def _position(ds: Dataset) -> np.ndarray | None:
    ipp = ds.get("ImagePositionPatient")
    return np.asarray([float(v) for v in ipp], dtype=np.float64) if ipp else None


def _normal(ds: Dataset) -> np.ndarray:
    iop = _orientation(ds)
    return np.cross(iop[:3], iop[3:])


def _instance_number(ds: Dataset) -> int:
    number = ds.get("InstanceNumber")
    return int(number) if number not in (None, "") else 0


def sort_slices(slices: list[SeriesSlice]) -> list[SeriesSlice]:
    """Ascending along the slice normal when every slice has a position, else by InstanceNumber."""
    if all(_position(ds) is not None for _, ds in slices):
        normal = _normal(slices[0][1])
        return sorted(slices, key=lambda s: (float(normal @ _position(s[1])), _instance_number(s[1])))
    return sorted(slices, key=lambda s: (_instance_number(s[1]), s[0].name))


def series_geometry(
    datasets: list[Dataset], name: str, path: Path
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """LPS spacing, origin and direction of sorted slices."""
    first = datasets[0]
    iop = _orientation(first)
    normal = np.cross(iop[:3], iop[3:])
    direction = np.stack([iop[:3], iop[3:], normal], axis=1)  # columns: x (row cosine), y, z
    row_spacing, column_spacing = _pixel_spacing(first)
    slice_spacing = _slice_spacing(datasets, normal, name, path)
    origin = _position(first)
    if origin is None:
        origin = np.zeros(3)
    spacing = (column_spacing, row_spacing, slice_spacing)
    return spacing, tuple(origin), tuple(direction.ravel())


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing): the DICOM PixelSpacing order (y first)."""
    values = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not values:
        return 1.0, 1.0
    return float(values[0]), float(values[1])


def _slice_spacing(datasets: list[Dataset], normal: np.ndarray, name: str, path: Path) -> float:
    """Mean gap between slice positions along the normal; header fall-backs when positions are missing."""
    positions = [_position(ds) for ds in datasets]
    if len(datasets) < 2 or any(p is None for p in positions):
        return _header_slice_spacing(datasets[0])
    gaps = np.diff([float(normal @ p) for p in positions])
    mean = float(gaps.mean())
    if mean <= 1e-6 or gaps.min() <= 1e-6:
        raise ImageReadError(
            f"{name}: several slices share the same position (duplicates, or several echoes/time points)",
            path,
            "export the volumes as separate series or remove the duplicate files",
        )
    if np.abs(gaps - mean).max() > _SPACING_TOLERANCE * mean:
        raise ImageReadError(
            f"{name}: non-uniform slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm; missing slices?)",
            path,
            "check that no slice files are missing; resample or re-export the series",
        )
    return mean


def _header_slice_spacing(ds: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def sop_instance_uid(ds: Dataset) -> str:
    """The SOPInstanceUID, or the file meta's MediaStorageSOPInstanceUID when the dataset lacks it."""
    uid = str(ds.get("SOPInstanceUID", ""))
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    return uid


def stack_pixels(slices: list[SeriesSlice]) -> np.ndarray:
    """Decode, rescale and stack sorted slices into a channels-first ``(C, Z, Y, X)`` array."""
    planes = [_decode(member, ds) for member, ds in slices]
    rescales = [_rescale(ds) for _, ds in slices]
    dtype = _output_dtype(planes, rescales)
    stack = np.empty((len(planes), *planes[0].shape), dtype=dtype)
    for index, (plane, (slope, intercept)) in enumerate(zip(planes, rescales, strict=True)):
        if (slope, intercept) == (1.0, 0.0):
            stack[index] = plane
        else:
            stack[index] = plane.astype(np.float64) * slope + intercept
    if stack.ndim == 3:
        return stack[None]
    return np.ascontiguousarray(np.moveaxis(stack, -1, 0))  # colour: (Z, Y, X, C) -> (C, Z, Y, X)


def _decode(member: ArchiveMember, ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise ImageReadError(
            "has no pixel data (truncated?)", member.location, "re-copy the file or remove it from the series"
        )
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types (missing plugin, truncated data, ...)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(
            f"cannot decode pixel data (transfer syntax {syntax_name}; {type(exc).__name__}: {exc})",
            member.location,
            "the file may be truncated, or its compression needs a decoder plugin "
            "(pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg)",
        ) from None


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _output_dtype(planes: list[np.ndarray], rescales: list[tuple[float, float]]) -> np.dtype:
    """Stored type without rescale; int16/int32 for whole-number rescales; float32 otherwise."""
    if all(r == (1.0, 0.0) for r in rescales):
        return np.result_type(*planes)
    if any(slope != 1.0 or not float(intercept).is_integer() for slope, intercept in rescales):
        return np.dtype(np.float32)
    low = min(int(p.min()) + int(b) for p, (_, b) in zip(planes, rescales, strict=True))
    high = max(int(p.max()) + int(b) for p, (_, b) in zip(planes, rescales, strict=True))
    info = np.iinfo(np.int16)
    return np.dtype(np.int16 if info.min <= low and high <= info.max else np.int32)
