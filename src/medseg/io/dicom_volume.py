"""From the files of one DICOM image series to a volume: slice order, LPS geometry, decoded and rescaled pixels.

Used by :mod:`medseg.io.dicom_series` once it has chosen a series and read its files:

* :func:`check_consistent_slices` refuses series whose slices differ in size, samples per pixel or orientation.
* :func:`sort_slices` orders slices along the slice normal (``row cosine x column cosine``), or by InstanceNumber
  when positions are missing.
* :func:`series_geometry` gives ITK/LPS spacing, origin (the first slice) and direction (columns: row cosine,
  column cosine, normal), refusing duplicate positions and non-uniform slice gaps.
* :func:`stack_pixels` decodes the slices and applies the modality rescale (RescaleSlope/Intercept).
* :func:`pixel_extent` and :func:`check_pixel_extents` size the pixel data from headers alone, so that a series
  too large for :class:`~medseg.io.limits.ReadLimits` is refused before its pixels are read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from medseg.errors import ImageReadError
from medseg.io.dicom_archive import ArchiveMember
from medseg.io.limits import ReadLimits, check_expansion, check_size, check_truncated

__all__ = [
    "PixelExtent",
    "SeriesSlice",
    "check_consistent_slices",
    "check_pixel_extents",
    "malformed_attributes",
    "pixel_extent",
    "series_geometry",
    "sop_instance_uid",
    "sort_slices",
    "stack_pixels",
]

SeriesSlice = tuple[ArchiveMember, Dataset]  # one file of a series and its dataset, pixels included

_SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ from their mean by 1 %
_ORIENTATION_TOLERANCE = 1e-4


@contextmanager
def malformed_attributes(path: str | Path, name: str) -> Iterator[None]:
    """Turn the errors that odd attribute values cause (a one-value PixelSpacing, a text Rows) into ImageReadError."""
    try:
        yield
    except (TypeError, IndexError, KeyError, ValueError, AttributeError, ZeroDivisionError) as exc:
        raise ImageReadError(
            f"{name}: malformed DICOM attributes ({type(exc).__name__}: {exc})",
            path,
            "the files are corrupt or not standard DICOM; re-export the series",
        ) from None


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
    """Decode, rescale and stack sorted slices into a channels-first ``(C, Z, Y, X)`` array.

    Planes are decoded one at a time into one stored-type stack; a whole-number rescale that fits is then applied
    in place. The peak is thus the encoded data plus one stack (plus the float32 result for other rescales).
    """
    rescales = [_rescale(ds) for _, ds in slices]
    raw = _decode_stack(slices)
    dtype = _output_dtype(list(raw), rescales)
    if all(r == (1.0, 0.0) for r in rescales):
        stack = raw
    elif _fits_in_place(raw, dtype, rescales):
        stack = raw.view(dtype)
        for index, (_, intercept) in enumerate(rescales):
            stack[index] += dtype.type(intercept)
    else:
        stack = np.empty(raw.shape, dtype=dtype)
        for index, (slope, intercept) in enumerate(rescales):
            stack[index] = raw[index].astype(np.float64) * slope + intercept
    if stack.ndim == 3:
        return stack[None]
    return np.ascontiguousarray(np.moveaxis(stack, -1, 0))  # colour: (Z, Y, X, C) -> (C, Z, Y, X)


def _decode_stack(slices: list[SeriesSlice]) -> np.ndarray:
    """The stored values of every slice, ``(Z, Y, X[, C])``, in the common type of the planes."""
    first = _decode(*slices[0])
    stack = np.empty((len(slices), *first.shape), dtype=first.dtype)
    stack[0] = first
    del first
    for index, (member, ds) in enumerate(slices[1:], start=1):
        plane = _decode(member, ds)
        if np.result_type(stack.dtype, plane.dtype) != stack.dtype:
            stack = stack.astype(np.result_type(stack.dtype, plane.dtype))  # slices of mixed sample types: rare
        stack[index] = plane
    return stack


def _fits_in_place(raw: np.ndarray, dtype: np.dtype, rescales: list[tuple[float, float]]) -> bool:
    """Whole-number intercepts (slope 1) on stored integers that the output type holds as they are."""
    if dtype.kind not in "iu" or raw.dtype.kind not in "iu" or raw.dtype.itemsize != dtype.itemsize:
        return False
    if any(slope != 1.0 for slope, _ in rescales):
        return False
    info = np.iinfo(dtype)
    return info.min <= int(raw.min()) and int(raw.max()) <= info.max


def _decode(member: ArchiveMember, ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise ImageReadError(
            "has no pixel data (truncated?)", member.location, "re-copy the file or remove it from the series"
        )
    try:
        return np.asarray(pixel_array(ds))  # as ds.pixel_array, without keeping a decoded copy on the dataset
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


@dataclass(frozen=True)
class PixelExtent:
    """The pixel data that one DICOM header declares (read with ``stop_before_pixels``)."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits: int  # BitsAllocated
    compressed: bool  # encapsulated (JPEG, JPEG 2000, RLE, ...) or deflated: the file may be smaller than the data
    rescaled: bool = False  # RescaleSlope/Intercept present: the result may be float32 or int32

    @property
    def voxels(self) -> int:
        return self.frames * self.rows * self.columns * self.samples

    @property
    def decoded_bytes(self) -> int:
        """In memory once decoded: 1-bit samples become one byte each, rescaled ones (at most) four."""
        itemsize = max(1, (self.bits + 7) // 8)
        return self.voxels * (max(itemsize, 4) if self.rescaled else itemsize)

    @property
    def stored_bytes(self) -> int:
        """In the file, for an uncompressed transfer syntax."""
        return (self.voxels * self.bits + 7) // 8

    def describe(self) -> str:
        frames = f"{self.frames} frames of " if self.frames != 1 else ""
        rescaled = ", rescaled (4 bytes each once decoded)" if self.rescaled else ""
        size = f"{self.rows}x{self.columns}x{self.samples}"
        return f"header declares {frames}{size} samples of {self.bits} bits{rescaled}"


def pixel_extent(ds: Dataset, location: str) -> PixelExtent:
    """Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated from a header."""
    syntax = pydicom.uid.UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    try:
        values = [int(ds.get(keyword) or default) for keyword, default in
                  (("NumberOfFrames", 1), ("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1), ("BitsAllocated", 16))]
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"corrupt DICOM image header ({exc})", location, "re-export or re-copy the file") from None
    if min(values) < 0:
        raise ImageReadError(f"corrupt DICOM image header (negative size {values})", location, "re-export the file")
    rescaled = ds.get("RescaleSlope") not in (None, "", 1) or ds.get("RescaleIntercept") not in (None, "", 0)
    return PixelExtent(*values, compressed=syntax.is_encapsulated or syntax.is_deflated, rescaled=rescaled)


def check_pixel_extents(
    files: Sequence[tuple[str, int, PixelExtent]], name: str, path: Path, limits: ReadLimits
) -> None:
    """Refuse before decoding: each file (location, bytes, extent) and all of them together, against ``limits``.

    An uncompressed file must hold its declared pixel data; compressed ones must not expand beyond the limit.
    """
    for location, file_bytes, extent in files:
        check_size(location, extent.voxels, extent.decoded_bytes, limits, extent.describe())
        if not extent.compressed:
            check_truncated(location, extent.stored_bytes, file_bytes, extent.describe())
        check_expansion(location, extent.decoded_bytes, file_bytes, limits, extent.describe())
    if len(files) > 1:
        what = f"{name}: the headers of {len(files)} files declare"
        check_size(path, sum(e.voxels for _, _, e in files), sum(e.decoded_bytes for _, _, e in files), limits, what)
        check_expansion(path, sum(e.decoded_bytes for _, _, e in files), sum(b for _, b, _ in files), limits, what)
