"""DICOM series and DICOM SEG reading (folders or ``.zip`` archives), geometry included.

* :func:`list_dicom_series` lists the series in a folder (searched recursively) or a ``.zip`` file,
  reading headers only. DICOM SEG objects are listed with modality ``"SEG"``; non-DICOM files and DICOMDIR
  are skipped.
* :func:`read_dicom_series` reads one image series as a ``(C, Z, Y, X)`` :class:`~medseg.io.image.Image`
  (``C`` is 1, or 3 for colour images) with ITK/LPS geometry: slices sorted along the slice normal
  (``row cosine x column cosine``), origin at the first slice, direction columns = row cosine, column cosine,
  normal. Modality rescale (RescaleSlope/Intercept) is applied.
* :func:`read_dicom_seg` turns a DICOM SEG into a label map (segment number ``k`` -> label ``k``) on the
  grid of its source series, or on the SEG's own grid; :func:`read_dicom_seg_segments` gives one binary
  channel per segment instead.

Overlap rule: a label map cannot hold overlapping segments, so where segments overlap **the highest segment
number wins**. Use :func:`read_dicom_seg_segments` to keep every segment intact. FRACTIONAL segments are
binarised at 0.5.

Zip archives are read in memory, never extracted; members with absolute names or ``..`` are refused.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg.errors import ImageReadError
from medseg.io.image import Image

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

__all__ = [
    "DicomSeriesInfo",
    "list_dicom_series",
    "read_dicom_series",
    "read_dicom_seg",
    "read_dicom_seg_segments",
]

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ from their mean by 1 %
_ORIENTATION_TOLERANCE = 1e-4
_SERIES_FIX = "pass series_uid (CLI: --series UID) to pick one"


# --------------------------------------------------------------------------------------------------
# Files: a folder or a zip archive, seen as a list of named members
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One file of a DICOM folder or zip archive."""

    name: str  # relative to the folder / the member name in the archive (shown to users)
    root: Path  # the folder or the archive
    in_zip: bool

    @property
    def location(self) -> str:
        """Where the file lies, for messages and ``meta["source_files"]``."""
        return f"{self.root}/{self.name}" if self.in_zip else str(self.root / self.name)

    def open(self) -> BinaryIO:
        """A binary file object: the file itself, or the member read into memory (never extracted)."""
        if self.in_zip:
            with zipfile.ZipFile(self.root) as archive:
                return io.BytesIO(archive.read(self.name))
        return open(self.root / self.name, "rb")  # the caller closes it


def _members(path: Path) -> list[_Member]:
    """The files of a folder (recursively, sorted) or of a zip archive."""
    if not path.exists():
        raise ImageReadError("does not exist", path, "check the path")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [_Member(p.relative_to(path).as_posix(), path, in_zip=False) for p in files]
    if zipfile.is_zipfile(path):
        return _zip_members(path)
    raise ImageReadError(
        "is neither a folder nor a zip archive of DICOM files", path, "give the series folder or a .zip of it"
    )


def _zip_members(path: Path) -> list[_Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageReadError(
            f"cannot open zip archive ({exc})", path, "re-create or re-copy the archive"
        ) from None
    members = []
    for info in infos:
        if info.is_dir():
            continue
        _check_member_name(info.filename, path)
        members.append(_Member(info.filename, path, in_zip=True))
    return sorted(members, key=lambda m: m.name)


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse members that would point outside the archive (absolute names, drive letters, ``..``)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and posix.parts[0].endswith(":")):
        raise ImageReadError(
            f"zip member '{name}' has an unsafe path (absolute or containing '..')",
            archive,
            "re-create the archive with relative member names",
        )


def _read_dataset(member: _Member, headers_only: bool) -> Dataset | None:
    """Parse one member; None when it is not DICOM (no 'DICM' preamble) or is a DICOMDIR."""
    if PurePosixPath(member.name).name.upper() == "DICOMDIR":
        return None
    try:
        with member.open() as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=headers_only)
    except InvalidDicomError:
        return None
    except Exception as exc:  # pydicom raises many exception types for corrupt or truncated files
        raise ImageReadError(
            f"cannot read DICOM file ({type(exc).__name__}: {exc})",
            member.location,
            "the file is truncated or corrupt; re-export or re-copy it, or remove it from the folder",
        ) from None
    sop_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS:
        return None
    return dataset


# --------------------------------------------------------------------------------------------------
# Listing series
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder or archive (from headers only)."""

    series_instance_uid: str
    modality: str
    description: str
    num_files: int
    num_slices: int  # frames in all files: equals num_files for single-frame images
    rows: int
    columns: int
    files: tuple[str, ...] = field(repr=False)  # member names, relative to the folder or archive
    series_number: int | None = None

    @property
    def is_seg(self) -> bool:
        return self.modality == "SEG"

    def summary(self) -> str:
        """One line for messages: uid, modality, description and size."""
        uid = self.series_instance_uid or "(no SeriesInstanceUID)"
        description = f" '{self.description}'" if self.description else ""
        size = f"{self.num_slices} slices, {self.rows}x{self.columns}"
        return f"{uid} [{self.modality or '?'}{description}, {size}]"


def list_dicom_series(path: str | Path) -> list[DicomSeriesInfo]:
    """The DICOM image and SEG series in a folder (recursively) or ``.zip`` archive, reading headers only.

    Non-DICOM files, DICOMDIR and DICOM objects without pixels (SR, RTSTRUCT, ...) are skipped. Image series
    come first (by series number, then uid), SEG series last.
    """
    return [info for info, _ in _scan(Path(path))]


def _scan(path: Path) -> list[tuple[DicomSeriesInfo, list[_Member]]]:
    """Group the DICOM members of ``path`` by SeriesInstanceUID, with each series' members."""
    groups: dict[str, list[tuple[_Member, Dataset]]] = {}
    for member in _members(path):
        header = _read_dataset(member, headers_only=True)
        if header is None or not _is_image(header, member):
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((member, header))
    found = [(_series_info(uid, items), [m for m, _ in items]) for uid, items in groups.items()]
    return sorted(found, key=lambda pair: _series_sort_key(pair[0]))


def _is_image(header: Dataset, member: _Member) -> bool:
    """True for images and SEGs, False for objects without pixels (SR, RTSTRUCT, ...).

    pydicom reads a file cut inside its header without complaint; an image SOP class without Rows/Columns
    is such a truncated file.
    """
    if "Rows" in header and "Columns" in header:
        return True
    sop_class = _sop_class(header)
    if "Image Storage" in sop_class.name or sop_class.name == "Segmentation Storage":
        raise ImageReadError(
            f"incomplete DICOM header ({sop_class.name} without Rows/Columns)",
            member.location,
            "the file is truncated or corrupt; re-export or re-copy it, or remove it from the folder",
        )
    return False


def _sop_class(ds: Dataset) -> pydicom.uid.UID:
    uid = str(ds.get("SOPClassUID", ""))
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    return pydicom.uid.UID(uid)


def _series_info(uid: str, items: list[tuple[_Member, Dataset]]) -> DicomSeriesInfo:
    first = items[0][1]
    number = first.get("SeriesNumber")
    return DicomSeriesInfo(
        series_instance_uid=uid,
        modality=str(first.get("Modality", "")),
        description=str(first.get("SeriesDescription", "")),
        num_files=len(items),
        num_slices=sum(_frame_count(header) for _, header in items),
        rows=int(first.Rows),
        columns=int(first.Columns),
        files=tuple(member.name for member, _ in items),
        series_number=int(number) if number not in (None, "") else None,
    )


def _series_sort_key(info: DicomSeriesInfo) -> tuple:
    number = info.series_number if info.series_number is not None else -1
    return (info.is_seg, number, info.series_instance_uid)


def _frame_count(header: Dataset) -> int:
    frames = header.get("NumberOfFrames")
    return int(frames) if frames not in (None, "") else 1


# --------------------------------------------------------------------------------------------------
# Reading one image series
# --------------------------------------------------------------------------------------------------


def read_dicom_series(path: str | Path, series_uid: str | None = None) -> Image:
    """Read one DICOM image series from a folder (recursively) or ``.zip`` archive as a (C, Z, Y, X) Image.

    With several image series present (SEG objects do not count) ``series_uid`` must name one. Stored values
    are rescaled with RescaleSlope/RescaleIntercept: the result is float32 when any slope is not 1 or any
    intercept is not whole, a signed integer type (int16 when it fits, else int32) for integer rescales, and
    the stored type when there is no rescale. ``meta`` holds "format", "series_instance_uid",
    "study_instance_uid", "modality", "series_description", "sop_instance_uids" and "source_files" (both in
    slice order).
    """
    path = Path(path)
    info, members = _select_series(path, series_uid)
    _check_single_frame(info, path)
    datasets = [_read_dataset(member, headers_only=False) for member in members]
    slices = [(m, ds) for m, ds in zip(members, datasets, strict=True) if ds is not None]
    name = f"series {info.summary()}"
    _check_consistent(slices, name)
    slices = _sort_slices(slices)
    spacing, origin, direction = _series_geometry([ds for _, ds in slices], name, path)
    array = _stack_pixels(slices)
    meta = {
        "format": "dicom",
        "series_instance_uid": info.series_instance_uid,
        "study_instance_uid": str(slices[0][1].get("StudyInstanceUID", "")),
        "modality": info.modality,
        "series_description": info.description,
        "sop_instance_uids": [_sop_uid(ds) for _, ds in slices],
        "source_files": [member.location for member, _ in slices],
    }
    return Image(array, spacing, origin, direction, meta)


def _select_series(path: Path, series_uid: str | None) -> tuple[DicomSeriesInfo, list[_Member]]:
    found = _scan(path)
    images = [(info, members) for info, members in found if not info.is_seg]
    if series_uid is not None:
        return _find_series(path, found, series_uid)
    if not images:
        what = "holds only DICOM SEG objects, no image series" if found else "holds no DICOM image files"
        raise ImageReadError(what, path, "point at the folder or .zip of the image series")
    if len(images) > 1:
        listing = "; ".join(info.summary() for info, _ in images)
        raise ImageReadError(f"holds {len(images)} image series: {listing}", path, _SERIES_FIX)
    return images[0]


def _find_series(
    path: Path, found: list[tuple[DicomSeriesInfo, list[_Member]]], series_uid: str
) -> tuple[DicomSeriesInfo, list[_Member]]:
    for info, members in found:
        if info.series_instance_uid == series_uid:
            if info.is_seg:
                raise ImageReadError(
                    f"series {series_uid} is a DICOM SEG, not an image series",
                    path,
                    "read it with read_dicom_seg",
                )
            return info, members
    available = "; ".join(info.summary() for info, _ in found) or "none"
    raise ImageReadError(f"has no series {series_uid} (series found: {available})", path, _SERIES_FIX)


def _check_single_frame(info: DicomSeriesInfo, path: Path) -> None:
    """Multi-frame images (enhanced CT/MR, one file per volume) are refused before any pixels are read."""
    if info.num_slices != info.num_files:
        raise ImageReadError(
            f"series {info.summary()}: multi-frame DICOM ({info.num_slices} frames in {info.num_files} "
            "file(s), e.g. enhanced CT/MR) is not supported yet",
            path,
            "convert it to single-frame DICOM or NIfTI (e.g. with dcm2niix) first",
        )


def _check_consistent(slices: list[tuple[_Member, Dataset]], name: str) -> None:
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


def _sort_slices(slices: list[tuple[_Member, Dataset]]) -> list[tuple[_Member, Dataset]]:
    """Ascending along the slice normal when every slice has a position, else by InstanceNumber."""
    if all(_position(ds) is not None for _, ds in slices):
        normal = _normal(slices[0][1])
        return sorted(slices, key=lambda s: (float(normal @ _position(s[1])), _instance_number(s[1])))
    return sorted(slices, key=lambda s: (_instance_number(s[1]), s[0].name))


def _series_geometry(
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


def _sop_uid(ds: Dataset) -> str:
    uid = str(ds.get("SOPInstanceUID", ""))
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    return uid


def _stack_pixels(slices: list[tuple[_Member, Dataset]]) -> np.ndarray:
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


def _decode(member: _Member, ds: Dataset) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# DICOM SEG
# --------------------------------------------------------------------------------------------------

_MaskReader = Callable[[int], np.ndarray]  # segment number -> boolean (Z, Y, X) mask on the output grid


def read_dicom_seg(seg_path: str | Path, source: Image | str | Path | None = None) -> Image:
    """Read a DICOM SEG as a ``(1, Z, Y, X)`` label map: segment number ``k`` becomes label ``k``.

    ``source`` is the series the SEG was drawn on: an Image from :func:`read_dicom_series` or the path of its
    folder/archive (the referenced series is picked when that holds several). Frames are matched to source
    slices by SOP Instance UID (falling back to plane positions), and the result has the source's geometry.
    Without ``source`` the SEG's own plane positions define the grid. Overlaps: the highest segment number
    wins (see :func:`read_dicom_seg_segments` to keep them). The dtype is uint8 below 256 segments, else
    uint16. ``meta["segment_labels"]`` maps segment number to segment label.
    """
    seg, grid, read_mask = _open_seg_on_grid(Path(seg_path), source)
    numbers = list(seg.segment_numbers)
    dtype = np.uint8 if max(numbers, default=0) < 256 else np.uint16
    labels = np.zeros(grid.shape, dtype=dtype)
    for number in sorted(numbers):  # ascending: a later (higher) segment overwrites an earlier one
        labels[read_mask(number)] = number
    return Image(labels[None], grid.spacing, grid.origin, grid.direction, _seg_meta(seg, grid, numbers))


def read_dicom_seg_segments(seg_path: str | Path, source: Image | str | Path | None = None) -> Image:
    """Read a DICOM SEG as a (S, Z, Y, X) uint8 binary stack; channel i is ``meta["segment_numbers"][i]``.

    Same grid rules as :func:`read_dicom_seg`; overlapping segments stay intact. ``meta["segment_labels"]``
    maps segment number to label and ``meta["segment_names"]`` lists the labels in channel order.
    """
    seg, grid, read_mask = _open_seg_on_grid(Path(seg_path), source)
    numbers = sorted(seg.segment_numbers)
    stack = np.zeros((len(numbers), *grid.shape), dtype=np.uint8)
    for channel, number in enumerate(numbers):
        stack[channel] = read_mask(number)
    meta = _seg_meta(seg, grid, numbers)
    meta["segment_names"] = [meta["segment_labels"][n] for n in numbers]
    return Image(stack, grid.spacing, grid.origin, grid.direction, meta)


def _open_seg_on_grid(
    seg_path: Path, source: Image | str | Path | None
) -> tuple[Segmentation, Image, _MaskReader]:
    """The SEG, the output grid (an Image whose array is unused) and a per-segment mask reader on it."""
    seg = _load_seg(seg_path)
    if source is None:
        grid, read_mask = _seg_own_grid(seg, seg_path)
        return seg, grid, read_mask
    grid = source if isinstance(source, Image) else _read_referenced_series(seg, Path(source))
    read_mask = _masks_by_uid(seg, grid, seg_path) or _masks_by_position(seg, grid, seg_path)
    return seg, grid, read_mask


def _load_seg(path: Path) -> Segmentation:
    """Parse a DICOM SEG with highdicom."""
    import highdicom as hd

    if not path.is_file():
        raise ImageReadError("does not exist or is not a file", path, "give the path of a DICOM SEG file")
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many exception types for corrupt files
        raise ImageReadError(
            f"cannot read DICOM file ({type(exc).__name__}: {exc})",
            path,
            "the file is truncated or not DICOM",
        ) from None
    if dataset.get("Modality") != "SEG":
        raise ImageReadError(
            f"is not a DICOM SEG (Modality {dataset.get('Modality', 'missing')})",
            path,
            "read image series with read_dicom_series",
        )
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:  # highdicom validates many attributes, each with its own error
        raise ImageReadError(
            f"invalid DICOM SEG ({type(exc).__name__}: {exc})", path, "re-export the segmentation"
        ) from None


def _seg_meta(seg: Segmentation, grid: Image, numbers: list[int]) -> dict:
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    referenced = sorted({series for _, series, _ in seg.get_source_image_uids()})
    return {
        "format": "dicom-seg",
        "segment_labels": labels,
        "segment_numbers": list(numbers),
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "referenced_series_instance_uids": referenced,
        "source_series_instance_uid": grid.meta.get("series_instance_uid"),
    }


def _read_referenced_series(seg: Segmentation, source: Path) -> Image:
    """Read the series of ``source`` that the SEG references (or its only image series)."""
    referenced = {series for _, series, _ in seg.get_source_image_uids()}
    for info in list_dicom_series(source):
        if not info.is_seg and info.series_instance_uid in referenced:
            return read_dicom_series(source, series_uid=info.series_instance_uid)
    return read_dicom_series(source)


def _fractional_to_bool(pixels: np.ndarray) -> np.ndarray:
    """Binary segments are 0/1; fractional ones (rescaled to 0..1) are cut at 0.5."""
    return pixels >= 0.5 if np.issubdtype(pixels.dtype, np.floating) else pixels > 0


def _masks_by_uid(seg: Segmentation, grid: Image, seg_path: Path) -> _MaskReader | None:
    """Map SEG frames to the grid's slices by SOP Instance UID; None when the SEG references none of them."""
    uids = list(grid.meta.get("sop_instance_uids") or [])
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    if len(uids) != grid.shape[0] or not referenced.intersection(uids):
        return None
    if (int(seg.Rows), int(seg.Columns)) != grid.shape[1:]:
        raise ImageReadError(
            f"SEG frames are {seg.Rows}x{seg.Columns} but the source slices are "
            f"{grid.shape[1]}x{grid.shape[2]}",
            seg_path,
            "give the series the segmentation was made on",
        )

    def read_mask(number: int) -> np.ndarray:
        pixels = seg.get_pixels_by_source_instance(
            uids,
            segment_numbers=[number],
            ignore_spatial_locations=True,  # many SEGs omit SpatialLocationsPreserved; sizes checked above
            assert_missing_frames_are_empty=True,  # slices the SEG does not reference are empty
        )
        return _fractional_to_bool(pixels[..., 0])

    return read_mask


def _seg_own_grid(seg: Segmentation, seg_path: Path) -> tuple[Image, _MaskReader]:
    """The SEG's own regular grid from its plane positions, slices ascending along the normal."""
    try:
        template = seg.get_volume(segment_numbers=[seg.segment_numbers[0]])
    except Exception as exc:  # highdicom: ValueError/RuntimeError when frames do not form a regular volume
        raise ImageReadError(
            f"SEG frames do not form a regular 3D grid ({type(exc).__name__}: {exc})",
            seg_path,
            "pass the source series (source=...) to map frames by their referenced slices",
        ) from None
    grid, flip = _volume_geometry(template.affine, template.spatial_shape)

    def read_mask(number: int) -> np.ndarray:
        pixels = seg.get_volume(segment_numbers=[number]).array[..., 0]
        return _fractional_to_bool(pixels[::-1] if flip else pixels)

    return grid, read_mask


def _volume_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Image, bool]:
    """A voxel-less Image with the LPS geometry of a highdicom (slice, row, column) affine, and whether z was
    flipped.

    The slice axis is flipped when needed so that z runs along row cosine x column cosine, as in
    :func:`read_dicom_series`.
    """
    slice_step, row_step, column_step = (affine[:3, axis] for axis in range(3))
    origin = affine[:3, 3].copy()
    flip = float(np.dot(slice_step, np.cross(column_step, row_step))) < 0
    if flip:
        origin = origin + (shape[0] - 1) * slice_step
        slice_step = -slice_step
    steps = np.stack([column_step, row_step, slice_step], axis=1)  # columns: x, y, z
    spacing = np.linalg.norm(steps, axis=0)
    direction = steps / spacing[None, :]
    placeholder = np.broadcast_to(np.uint8(0), (1, *shape))  # a grid only: no voxel memory
    return Image(placeholder, tuple(spacing), tuple(origin), tuple(direction.ravel())), flip


def _masks_by_position(seg: Segmentation, grid: Image, seg_path: Path) -> _MaskReader:
    """Paste the SEG's own grid into ``grid`` when both share spacing and direction and the voxels line up."""
    own, read_own = _seg_own_grid(seg, seg_path)
    offset = _grid_offset(own, grid)
    if offset is None:
        raise ImageReadError(
            "SEG references none of the source slices and its frames do not lie on the source grid",
            seg_path,
            "give the series the segmentation was made on",
        )
    window = tuple(slice(o, o + n) for o, n in zip(offset, own.shape, strict=True))

    def read_mask(number: int) -> np.ndarray:
        mask = np.zeros(grid.shape, dtype=bool)
        mask[window] = read_own(number)
        return mask

    return read_mask


def _grid_offset(inner: Image, outer: Image, tol: float = 1e-2) -> tuple[int, int, int] | None:
    """The (z, y, x) index of ``inner``'s first voxel in ``outer``, when ``inner`` is an aligned sub-grid."""
    compared = slice(0, 2) if inner.shape[0] == 1 else slice(0, 3)  # one slice: its z spacing is arbitrary
    if not (
        np.allclose(inner.spacing[compared], outer.spacing[compared], rtol=1e-3)
        and np.allclose(inner.direction, outer.direction, atol=1e-3)
    ):
        return None
    index_xyz = np.linalg.solve(outer.index_to_world()[:3, :3], np.subtract(inner.origin, outer.origin))
    rounded = np.round(index_xyz)
    if np.abs(index_xyz - rounded).max() > tol:
        return None
    offset = tuple(int(v) for v in rounded[::-1])
    inside = all(o >= 0 and o + n <= m for o, n, m in zip(offset, inner.shape, outer.shape, strict=True))
    return offset if inside else None
