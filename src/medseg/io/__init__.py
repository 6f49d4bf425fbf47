"""Reading and writing images of every common medical format, geometry included.

``read_image(path)`` picks the reader from the path: a folder or ``.zip`` is a DICOM series; ``.dcm`` is a
DICOM file (a SEG becomes a label map); ``.nii``/``.nii.gz`` NIfTI; ``.nrrd``/``.mha``/``.mhd`` ITK;
``.png``/``.jpg``/``.tif``/``.bmp`` 2D rasters. ``write_image`` writes atomically. See :mod:`medseg.io.image`
for the geometry convention (channels-first arrays, LPS physical geometry).

Every reader checks the size its file's header declares against a :class:`ReadLimits` before it decodes pixels
(``read_image(path, limits=ReadLimits(max_voxels=...))`` to change them; see :mod:`medseg.io.limits`), and a file
that still exhausts memory or trips a decoder is an :class:`ImageReadError` naming it, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ImageReadError
from medseg.io.image import Image
from medseg.io.itk import ITK_SUFFIXES, read_itk, write_itk
from medseg.io.limits import ReadLimits, decode_errors
from medseg.io.nifti import NIFTI_SUFFIXES, read_nifti, write_nifti
from medseg.io.paths import CHANNEL_FILE, image_stem, image_suffix
from medseg.io.raster import RASTER_SUFFIXES, read_raster, write_raster

__all__ = ["Image", "ImageReadError", "ReadLimits", "read_image", "write_image", "image_suffix", "IMAGE_SUFFIXES",
           "CHANNEL_FILE", "image_stem"]

IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + RASTER_SUFFIXES + (".dcm", ".zip")


def read_image(path: str | Path, series_uid: str | None = None, limits: ReadLimits | None = None) -> Image:
    """Read any supported image; ``series_uid`` picks one series from a DICOM folder holding several.

    ``limits`` (default ``ReadLimits()``) bounds what the file may decode to; it is checked from the header.
    """
    path = Path(path)
    limits = limits or ReadLimits()
    if not path.exists():
        raise ImageReadError("does not exist", path, "check the path")
    with decode_errors(path, "image"):
        return _read_by_format(path, series_uid, limits)


def _read_by_format(path: Path, series_uid: str | None, limits: ReadLimits) -> Image:
    suffix = image_suffix(path)
    if path.is_dir() or suffix == ".zip":
        from medseg.io.dicom_series import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid, limits=limits)
    if path.stat().st_size == 0:
        raise ImageReadError("is empty (0 bytes)", path, "re-export or re-copy the file")
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path, limits)
    if suffix in ITK_SUFFIXES:
        return read_itk(path, limits)
    if suffix in RASTER_SUFFIXES:
        return read_raster(path, limits)
    if suffix == ".dcm" or _looks_like_dicom(path):
        return _read_dicom_file(path, series_uid, limits)
    raise ImageReadError(
        f"unknown image format '{suffix or '(no extension)'}'",
        path,
        f"use one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder",
    )


def write_image(image: Image, path: str | Path) -> Path:
    """Write atomically, the format chosen by the extension; returns the path written."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        write_nifti(image, path)
    elif suffix in ITK_SUFFIXES:
        write_itk(image, path)
    elif suffix in RASTER_SUFFIXES:
        write_raster(image, path)
    else:
        raise ImageReadError(
            f"cannot write format '{suffix or '(no extension)'}'",
            path,
            f"use one of {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES + RASTER_SUFFIXES)}",
        )
    return path


def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_dicom_file(path: Path, series_uid: str | None, limits: ReadLimits) -> Image:
    """A single DICOM file: a SEG becomes a label map; an image file reads its whole series from its folder."""
    import pydicom

    from medseg.io.dicom_archive import convert_elements
    from medseg.io.dicom_seg import read_dicom_seg
    from medseg.io.dicom_series import read_dicom_series

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        convert_elements(header)
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise ImageReadError(f"not a readable DICOM file ({exc})", path, "check the file is complete") from None
    if getattr(header, "Modality", "") == "SEG":
        return read_dicom_seg(path)
    uid = series_uid or getattr(header, "SeriesInstanceUID", None)
    return read_dicom_series(path.parent, series_uid=uid, limits=limits)
