"""2D raster images (PNG, JPEG, TIFF, BMP) via Pillow, with tifffile for TIFFs Pillow cannot decode."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageMode, UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning

from medseg.errors import ImageReadError
from medseg.io.atomic import atomic_path
from medseg.io.image import Image
from medseg.io.limits import DECODER_ERRORS, ReadLimits, check_decoded, decode_errors

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel (3: palette indices)
_PNG_SAMPLES_PILLOW_CUTS = (2, 4, 6)  # colour types that Pillow decodes to 8 bits when they are 16-bit
# Pillow's plugins raise these for corrupt files too (a TIFF tag of the wrong type is a TypeError, ...)
_PILLOW_ERRORS = (UnidentifiedImageError, SyntaxError, MemoryError, TypeError, KeyError, IndexError, AttributeError,
                  ZeroDivisionError, *DECODER_ERRORS)


def read_raster(path: Path, limits: ReadLimits | None = None) -> Image:
    """Read a 2D raster as ``(C, Y, X)``; its size is checked against ``limits`` before the pixels are decoded.

    16-bit colour PNGs (RGB, RGBA, grey + alpha) are read with SimpleITK: Pillow would cut them to 8 bits.
    """
    limits = limits or ReadLimits()
    png = _png_header(path)
    if png is not None:
        width, height, depth, colour = png
        shape = (height, width, _PNG_SAMPLES.get(colour, 1))
        check_decoded(path, shape, max(1, depth // 8), path.stat().st_size, True, limits, kind=f"{depth}-bit PNG")
    if png is not None and png[2] == 16 and png[3] in _PNG_SAMPLES_PILLOW_CUTS:
        array, mode = _read_png_16(path)
    else:
        array, mode = _read_pillow(path, limits)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise ImageReadError(f"unexpected raster shape {array.shape}", path, "give a 2D grey or RGB image")
    return Image.from_array(np.ascontiguousarray(array), meta={"format": "raster", "mode": mode})


def _png_header(path: Path) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk; None when the file is no PNG.

    Pillow tells the size only once it has opened the file, and cannot tell the bit depth of a colour PNG.
    """
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def _read_pillow(path: Path, limits: ReadLimits) -> tuple[np.ndarray, str]:
    try:
        with PILImage.open(path) as pil:
            _check_pil_size(path, pil, limits)
            pil.load()
            mode = pil.mode
            return _pil_to_array(pil), mode
    except (DecompressionBombError, DecompressionBombWarning) as exc:
        raise ImageReadError(
            f"refused by Pillow's decompression-bomb check ({exc})",
            path,
            "if the image is genuine, convert it to TIFF or NIfTI, or raise PIL.Image.MAX_IMAGE_PIXELS",
        ) from None
    except _PILLOW_ERRORS as exc:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path, limits), "tifffile"
        raise ImageReadError(
            f"not a readable {path.suffix.lstrip('.').upper()} image ({type(exc).__name__}: {exc})",
            path,
            "check the file is a complete image; re-export or replace it",
        ) from None


def _check_pil_size(path: Path, pil: PILImage.Image, limits: ReadLimits) -> None:
    """The size as Pillow's (lazy) open reports it, before ``load()``, at Pillow's bytes per pixel: it keeps
    every multi-band pixel in 4 bytes (RGB too), and palette images may become RGB (:func:`_pil_to_array`)."""
    mode = ImageMode.getmode(pil.mode)
    pixel_bytes = 4 if len(mode.bands) > 1 or pil.mode == "P" else np.dtype(mode.typestr).itemsize
    check_decoded(path, (pil.height, pil.width), pixel_bytes, path.stat().st_size, True, limits,
                  kind=f"{pil.mode} pixels ({pixel_bytes} bytes each decoded)")


def _read_png_16(path: Path) -> tuple[np.ndarray, str]:
    """A 16-bit RGB(A) or grey + alpha PNG at full depth (alpha dropped, as for 8-bit images), via SimpleITK."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("PNGImageIO")
    reader.SetFileName(str(path))
    try:
        with decode_errors(path, "16-bit PNG"):
            array = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        text = str(exc).strip()
        raise ImageReadError(
            f"not a readable PNG image ({text.splitlines()[-1] if text else 'unknown error'})",
            path,
            "check the file is a complete image; re-export or replace it",
        ) from None
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop alpha
    if array.ndim == 3 and array.shape[-1] == 1:
        return array[..., 0], "I;16"
    return array, "RGB;16"


def _pil_to_array(pil: PILImage.Image) -> np.ndarray:
    """The pixels as an array; a converted image replaces (and closes, freeing its memory) the loaded one."""
    converted = None
    if pil.mode == "P":
        # Palette images used as label maps keep their indices; palette photos become RGB.
        palette = pil.getpalette() or []
        greyscale = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))
        converted = pil.convert("L") if greyscale else pil.convert("RGB")
    elif pil.mode in ("RGBA", "LA"):
        converted = pil.convert(pil.mode[:-1])
    elif pil.mode == "1":
        return np.asarray(pil, dtype=np.uint8)
    if converted is not None:
        pil.close()
        pil = converted
    return np.asarray(pil)


def _read_tiff(path: Path, limits: ReadLimits) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_decoded(path, series.shape, series.dtype.itemsize, path.stat().st_size, True, limits,
                          kind=f"{series.dtype} TIFF")
            return np.asarray(tif.asarray())
    except ImageReadError:
        raise
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
