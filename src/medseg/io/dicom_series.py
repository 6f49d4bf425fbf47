"""DICOM image series in a folder or ``.zip``: grouping the files into series, choosing one, reading it as an Image.

* :func:`list_dicom_series` lists the series in a folder (searched recursively) or a ``.zip`` file, reading
  headers only. DICOM SEG objects are listed with modality ``"SEG"``; non-DICOM files and DICOMDIR are skipped.
* :func:`read_dicom_series` reads one image series as a ``(C, Z, Y, X)`` :class:`~medseg.io.image.Image`
  (``C`` is 1, or 3 for colour images) with ITK/LPS geometry: slices sorted along the slice normal
  (``row cosine x column cosine``), origin at the first slice, direction columns = row cosine, column cosine,
  normal. Modality rescale (RescaleSlope/Intercept) is applied.
* :func:`scan_series`, :func:`select_series` and :func:`read_series` are the same steps on an open
  :class:`~medseg.io.dicom_archive.DicomArchive`, for callers that need several of them without scanning the
  files again (:mod:`medseg.io.dicom_seg`).

Why pydicom reads the series and SimpleITK's ``ImageSeriesReader`` (GDCM) does not, although medseg reads NRRD and
MetaImage with SimpleITK:

* A ``.zip`` is read in memory and never extracted; ``ImageSeriesReader`` reads a list of file names on disk.
* ``meta["sop_instance_uids"]`` keeps the SOP Instance UID of each slice in slice order, and the DICOM SEG code
  needs the pydicom datasets themselves: :func:`medseg.io.dicom_seg.read_dicom_seg` matches SEG frames to slices
  by these UIDs, and :func:`medseg.io.dicom_seg.write_dicom_seg` hands the series' datasets to highdicom as the
  source images the SEG references.
* The tests keep SimpleITK/GDCM as an independent reader to compare geometry and voxels against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medseg.errors import ImageReadError
from medseg.io.dicom_archive import ArchiveMember, DicomArchive
from medseg.io.dicom_volume import (
    PixelExtent,
    SeriesSlice,
    check_consistent_slices,
    check_pixel_extents,
    malformed_attributes,
    pixel_extent,
    series_geometry,
    sop_instance_uid,
    sort_slices,
    stack_pixels,
)
from medseg.io.image import Image
from medseg.io.limits import ReadLimits

__all__ = [
    "DicomSeries",
    "DicomSeriesInfo",
    "image_from_slices",
    "list_dicom_series",
    "read_dicom_series",
    "read_series",
    "read_series_slices",
    "scan_series",
    "select_series",
]

_SERIES_FIX = "pass series_uid (CLI: --series UID) to pick one"


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


@dataclass(frozen=True)
class DicomSeries:
    """A series found by :func:`scan_series`: its description and its files in the archive."""

    info: DicomSeriesInfo
    members: tuple[ArchiveMember, ...] = field(repr=False)
    extents: tuple[PixelExtent, ...] = field(default=(), repr=False)  # from each member's header, in order


# --------------------------------------------------------------------------------------------------
# Listing series
# --------------------------------------------------------------------------------------------------


def list_dicom_series(path: str | Path) -> list[DicomSeriesInfo]:
    """The DICOM image and SEG series in a folder (recursively) or ``.zip`` archive, reading headers only.

    Non-DICOM files, DICOMDIR and DICOM objects without pixels (SR, RTSTRUCT, ...) are skipped. Image series
    come first (by series number, then uid), SEG series last.
    """
    with DicomArchive(path) as archive:
        return [series.info for series in scan_series(archive)]


def scan_series(archive: DicomArchive) -> list[DicomSeries]:
    """Group the DICOM members of ``archive`` by SeriesInstanceUID (headers only), in :func:`list_dicom_series`
    order."""
    groups: dict[str, list[tuple[ArchiveMember, Dataset]]] = {}
    for member in archive.members:
        header = archive.read_dataset(member, headers_only=True)
        if header is None or not _is_image(header, member):
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((member, header))
    with malformed_attributes(archive.path, "DICOM headers"):
        found = [DicomSeries(_series_info(uid, items), tuple(m for m, _ in items),
                             tuple(pixel_extent(h, m.location) for m, h in items)) for uid, items in groups.items()]
    return sorted(found, key=lambda series: _series_sort_key(series.info))


def _is_image(header: Dataset, member: ArchiveMember) -> bool:
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


def _series_info(uid: str, items: list[tuple[ArchiveMember, Dataset]]) -> DicomSeriesInfo:
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
# Choosing and reading one image series
# --------------------------------------------------------------------------------------------------


def read_dicom_series(path: str | Path, series_uid: str | None = None, limits: ReadLimits | None = None) -> Image:
    """Read one DICOM image series from a folder (recursively) or ``.zip`` archive as a (C, Z, Y, X) Image.

    With several image series present (SEG objects do not count) ``series_uid`` must name one. Stored values
    are rescaled with RescaleSlope/RescaleIntercept: the result is float32 when any slope is not 1 or any
    intercept is not whole, a signed integer type (int16 when it fits, else int32) for integer rescales, and
    the stored type when there is no rescale. ``meta`` holds "format", "series_instance_uid",
    "study_instance_uid", "modality", "series_description", "sop_instance_uids" and "source_files" (both in
    slice order). The series' size is checked against ``limits`` from the headers before any pixel is read.
    """
    with DicomArchive(path, limits) as archive:
        return read_series(archive, select_series(scan_series(archive), archive.path, series_uid))


def select_series(found: list[DicomSeries], path: Path, series_uid: str | None = None) -> DicomSeries:
    """The image series named by ``series_uid``, or the only image series of ``found`` (the scan of ``path``)."""
    if series_uid is not None:
        return _find_series(found, path, series_uid)
    images = [series for series in found if not series.info.is_seg]
    if not images:
        what = "holds only DICOM SEG objects, no image series" if found else "holds no DICOM image files"
        raise ImageReadError(what, path, "point at the folder or .zip of the image series")
    if len(images) > 1:
        listing = "; ".join(series.info.summary() for series in images)
        raise ImageReadError(f"holds {len(images)} image series: {listing}", path, _SERIES_FIX)
    return images[0]


def _find_series(found: list[DicomSeries], path: Path, series_uid: str) -> DicomSeries:
    for series in found:
        if series.info.series_instance_uid == series_uid:
            if series.info.is_seg:
                raise ImageReadError(
                    f"series {series_uid} is a DICOM SEG, not an image series",
                    path,
                    "read it with read_dicom_seg",
                )
            return series
    available = "; ".join(series.info.summary() for series in found) or "none"
    raise ImageReadError(f"has no series {series_uid} (series found: {available})", path, _SERIES_FIX)


def read_series(archive: DicomArchive, series: DicomSeries) -> Image:
    """Read a series found in ``archive`` as :func:`read_dicom_series` does."""
    return image_from_slices(read_series_slices(archive, series), series, archive.path)


def read_series_slices(archive: DicomArchive, series: DicomSeries) -> list[SeriesSlice]:
    """The series' files read in full (pixels not yet decoded), checked for consistency, in slice order.

    Multi-frame images (enhanced CT/MR, one file per volume), and series larger than ``archive.limits`` allow,
    are refused before any pixels are read.
    """
    info = series.info
    if info.num_slices != info.num_files:
        raise ImageReadError(
            f"series {info.summary()}: multi-frame DICOM ({info.num_slices} frames in {info.num_files} "
            "file(s), e.g. enhanced CT/MR) is not supported yet",
            archive.path,
            "convert it to single-frame DICOM or NIfTI (e.g. with dcm2niix) first",
        )
    if series.extents:
        files = [(m.location, m.size, e) for m, e in zip(series.members, series.extents, strict=True)]
        check_pixel_extents(files, f"series {info.summary()}", archive.path, archive.limits)
    datasets = [archive.read_dataset(member, headers_only=False) for member in series.members]
    slices = [(m, ds) for m, ds in zip(series.members, datasets, strict=True) if ds is not None]
    if not slices:
        raise ImageReadError(f"series {info.summary()}: no file is DICOM any more", archive.path, "read it again")
    with malformed_attributes(archive.path, f"series {info.summary()}"):
        check_consistent_slices(slices, f"series {info.summary()}")
        return sort_slices(slices)


def image_from_slices(slices: list[SeriesSlice], series: DicomSeries, path: Path) -> Image:
    """The Image of sorted slices from :func:`read_series_slices`: geometry, decoded and rescaled pixels, meta."""
    info = series.info
    with malformed_attributes(path, f"series {info.summary()}"):
        spacing, origin, direction = series_geometry([ds for _, ds in slices], f"series {info.summary()}", path)
    meta = {
        "format": "dicom",
        "series_instance_uid": info.series_instance_uid,
        "study_instance_uid": str(slices[0][1].get("StudyInstanceUID", "")),
        "modality": info.modality,
        "series_description": info.description,
        "sop_instance_uids": [sop_instance_uid(ds) for _, ds in slices],
        "source_files": [member.location for member, _ in slices],
    }
    return Image(stack_pixels(slices), spacing, origin, direction, meta)
