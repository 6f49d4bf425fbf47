"""2D raster images (PNG, JPEG, TIFF, BMP) via Pillow, with tifffile for TIFFs Pillow cannot decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from medseg.errors import ImageReadError
from medseg.io.atomic import atomic_path
from medseg.io.image import Image

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def read_raster(path: Path) -> Image:
    try:
        with PILImage.open(path) as pil:
            pil.load()
            array = _pil_to_array(pil)
            mode = pil.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if path.suffix.lower() in (".tif", ".tiff"):
            array, mode = _read_tiff(path), "tifffile"
        else:
            raise ImageReadError(
                f"not a readable {path.suffix.lstrip('.').upper()} image ({exc})",
                path,
                "check the file is a complete image; re-export or replace it",
            ) from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise ImageReadError(f"unexpected raster shape {array.shape}", path, "give a 2D grey or RGB image")
    return Image.from_array(np.ascontiguousarray(array), meta={"format": "raster", "mode": mode})


def _pil_to_array(pil: PILImage.Image) -> np.ndarray:
    if pil.mode == "P":
        # Palette images used as label maps keep their indices; palette photos become RGB.
        palette = pil.getpalette() or []
        greyscale = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))
        pil = pil.convert("L") if greyscale else pil.convert("RGB")
    elif pil.mode in ("RGBA", "LA"):
        pil = pil.convert(pil.mode[:-1])
    elif pil.mode == "1":
        return np.asarray(pil, dtype=np.uint8)
    return np.asarray(pil)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageReadError(f"not a readable TIFF ({exc})", path, "check the file is complete") from None


def write_raster(image: Image, path: Path) -> None:
    if image.ndim != 2:
        raise ImageReadError(
            f"cannot write a {image.ndim}D image as {path.suffix}", path, "use .nii.gz, .nrrd or .mha for 3D"
        )
    array = image.array
    if array.shape[0] == 1:
        array = array[0]
    elif array.shape[0] in (3, 4):
        array = np.moveaxis(array, 0, -1)
    else:
        raise ImageReadError(
            f"cannot write {array.shape[0]} channels as {path.suffix}", path, "use .tif or .nii.gz"
        )
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, array)
        return
    array = _to_8_or_16_bit(array, path)
    with atomic_path(path) as tmp:
        PILImage.fromarray(array).save(tmp)


def _to_8_or_16_bit(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype in (np.uint8, bool):
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0:
        if array.max() <= 255:
            return array.astype(np.uint8)
        if array.max() <= 65535 and array.ndim == 2 and path.suffix.lower() == ".png":
            return array.astype(np.uint16)
    raise ImageReadError(
        f"values of type {array.dtype} in [{array.min()}, {array.max()}] do not fit {path.suffix}",
        path,
        "write label maps as integers 0-255, or use .tif/.nii.gz for other data",
    )
