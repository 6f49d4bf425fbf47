"""NRRD, MetaImage (MHA/MHD) and other ITK formats via SimpleITK (LPS natively)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import ImageReadError
from medseg.io.atomic import atomic_path
from medseg.io.image import Image

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def read_itk(path: Path) -> Image:
    try:
        itk = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ImageReadError(
            f"cannot read image ({first_line})", path, "the file is truncated or not in this format"
        ) from None
    return from_sitk(itk, {"format": path.suffix.lower().lstrip(".")})


def from_sitk(itk: sitk.Image, meta: dict | None = None) -> Image:
    array = sitk.GetArrayFromImage(itk)
    channels = itk.GetNumberOfComponentsPerPixel()
    array = np.moveaxis(array, -1, 0) if channels > 1 else array[None]
    return Image(
        np.ascontiguousarray(array), itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection(), dict(meta or {})
    )


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
