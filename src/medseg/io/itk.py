"""NRRD, MetaImage (MHA/MHD) and other ITK formats via SimpleITK (LPS natively)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import ImageReadError
from medseg.io.atomic import atomic_path
from medseg.io.image import Image
from medseg.io.limits import ReadLimits, check_decoded, decode_errors

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_HEADER_PEEK = 64 * 1024  # NRRD and MetaImage headers are text lines ahead of the data (or of nothing)
_FIELD = re.compile(r"^\s*([A-Za-z][\w ]*?)\s*(?::=|=|:)\s*(.*?)\s*$")
_RAW_NRRD_ENCODINGS = ("raw",)


def read_itk(path: Path, limits: ReadLimits | None = None) -> Image:
    """Read with SimpleITK after checking the header's size against ``limits`` (no pixel read before that)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _itk_errors(path):
        reader.ReadImageInformation()
        _check_size(path, reader, limits or ReadLimits())
    with _itk_errors(path), decode_errors(path, "image"):
        itk = reader.Execute()
        return from_sitk(itk, {"format": path.suffix.lower().lstrip(".")})


@contextmanager
def _itk_errors(path: Path) -> Iterator[None]:
    """SimpleITK raises RuntimeError with a multi-line ITK message: keep its last line."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc).strip()
        last_line = text.splitlines()[-1] if text else "unknown error"
        raise ImageReadError(
            f"cannot read image ({last_line})", path, "the file is truncated or not in this format"
        ) from None


def _check_size(path: Path, reader: sitk.ImageFileReader, limits: ReadLimits) -> None:
    """Size x components x sample size from the header; the data file is the detached one when there is one."""
    components = reader.GetNumberOfComponents()
    size = reader.GetSize()
    probe = sitk.Image([1] * len(size), reader.GetPixelID(), components)
    itemsize = probe.GetSizeOfPixelComponent()
    data_file, compressed = _data_layout(path)
    if data_file is not None and not data_file.is_file():
        raise ImageReadError(
            f"its header names the data file {data_file}, which does not exist", path, "copy the data file next to it"
        )
    file_bytes = data_file.stat().st_size if data_file is not None else None
    shape = (*reversed(size), components) if components > 1 else tuple(reversed(size))
    data_name = "the file" if data_file in (None, path) else f"its data file {data_file.name}"
    check_decoded(path, shape, itemsize, file_bytes, compressed, limits,
                  kind=sitk.GetPixelIDValueAsString(reader.GetPixelID()), data_file=data_name)


def _data_layout(path: Path) -> tuple[Path | None, bool]:
    """(the file holding the pixel data, whether it is compressed), from the NRRD or MetaImage header text.

    The data file is None when the header spreads the data over several files (a list or a file name pattern).
    SimpleITK does not report these header fields, hence this small peek.
    """
    fields = _header_fields(path)
    if "elementdatafile" in fields:  # MetaImage
        compressed = fields.get("compresseddata", "false").lower() == "true"
        name = fields["elementdatafile"]
        return (path if name.upper() == "LOCAL" else _single_file(path, name)), compressed
    compressed = fields.get("encoding", "raw").lower() not in _RAW_NRRD_ENCODINGS  # NRRD: gzip, bzip2, text, hex
    name = fields.get("data file") or fields.get("datafile")
    return (path if name is None else _single_file(path, name)), compressed


def _header_fields(path: Path) -> dict[str, str]:
    """Lower-cased ``key: value`` (NRRD) or ``Key = Value`` (MetaImage) fields up to the end of the header."""
    with open(path, "rb") as handle:
        text = handle.read(_HEADER_PEEK).decode("latin-1")
    nrrd = text.startswith("NRRD")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if nrrd and not line.strip():
            break  # NRRD: a blank line ends the header
        match = _FIELD.match(line)
        if match is None or line.startswith("#"):
            continue
        key = match.group(1).strip().lower()
        fields.setdefault(key, match.group(2))
        if key == "elementdatafile":
            break  # MetaImage: the last header line
    return fields


def _single_file(header: Path, name: str) -> Path | None:
    """A detached data file relative to the header; None for LIST or 'pattern first last step' forms."""
    if name.upper().startswith("LIST") or len(name.split()) > 1 or "%" in name:
        return None
    return header.parent / name


def from_sitk(itk: sitk.Image, meta: dict | None = None) -> Image:
    """An Image of a SimpleITK image; the pixels are copied once (a view of the ITK buffer is the source)."""
    view = sitk.GetArrayViewFromImage(itk)
    channels = itk.GetNumberOfComponentsPerPixel()
    array = np.ascontiguousarray(np.moveaxis(view, -1, 0)) if channels > 1 else np.array(view)[None]
    return Image(array, itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection(), dict(meta or {}))


def to_sitk(image: Image) -> sitk.Image:
    array = image.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if image.channels == 1:
        itk = sitk.GetImageFromArray(array[0])
    else:
        itk = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    itk.SetSpacing(image.spacing)
    itk.SetOrigin(image.origin)
    itk.SetDirection(image.direction)
    return itk


def write_itk(image: Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(image), str(tmp), useCompression=True)
