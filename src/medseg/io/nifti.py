"""NIfTI via nibabel, converting its RAS affine to medseg's LPS geometry and back."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from medseg.errors import ImageReadError
from medseg.io.atomic import atomic_path
from medseg.io.image import Image
from medseg.io.limits import ReadLimits, check_decoded, decode_errors

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_nifti(path: Path, limits: ReadLimits | None = None) -> Image:
    """Read a 3D (one channel) or 4D (channels last in the file) NIfTI as channels-first ``(C, Z, Y, X)``.

    2D NIfTI files (a singleton third axis) stay 3D with one slice, to keep their affine exact. The header is
    checked against ``limits`` before any voxel is read.
    """
    _check_header(path, _read_header(path), limits or ReadLimits())
    try:
        with decode_errors(path, "NIfTI"):
            nii = nib.load(str(path))
            data = np.asanyarray(nii.dataobj)
    except (nib.filebasedimages.ImageFileError, HeaderDataError) as exc:
        raise ImageReadError(
            f"cannot read NIfTI ({type(exc).__name__}: {exc})",
            path,
            "the file is truncated or not NIfTI; re-export or re-copy it",
        ) from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ImageReadError(f"NIfTI with {data.ndim} axes is not supported", path, "give 3D or 4D (channels) data")
    # nibabel index order is (i, j, k, c) = (x, y, z, c); medseg arrays are (c, z, y, x).
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    affine_lps = _RAS_TO_LPS @ nii.affine.astype(np.float64)
    linear = affine_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    spacing[spacing == 0] = 1.0
    direction = linear / spacing[None, :]
    meta = {"format": "nifti", "affine_ras": nii.affine.tolist(), "nifti_dtype": str(nii.get_data_dtype())}
    return Image(array, tuple(spacing), tuple(affine_lps[:3, 3]), tuple(direction.ravel()), meta)


def _read_header(path: Path) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header alone, from the first 540 bytes (nib.load would also read the extensions)."""
    with decode_errors(path, "NIfTI header"):
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            block = handle.read(nib.Nifti2Header.sizeof_hdr)
        for kind in (nib.Nifti1Header, nib.Nifti2Header):
            if kind.may_contain_header(block):
                return kind(block[: kind.sizeof_hdr], check=False)
    raise ImageReadError(
        "cannot read NIfTI (no NIfTI-1 or NIfTI-2 header)", path, "the file is truncated or not NIfTI; re-export it"
    )


def _check_header(path: Path, header: nib.Nifti1Header, limits: ReadLimits) -> None:
    """Refuse unsupported or oversized data from the header: shape, sample type and data offset."""
    try:
        shape = header.get_data_shape()
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        slope, inter = header.get_slope_inter()
    except (HeaderDataError, KeyError, ValueError, OverflowError) as exc:
        raise ImageReadError(f"cannot read NIfTI (corrupt header: {exc})", path, "re-export the file") from None
    if not 2 <= len(shape) <= 4:
        raise ImageReadError(f"NIfTI with {len(shape)} axes is not supported", path, "give 3D or 4D (channels) data")
    compressed = path.name.lower().endswith(".gz")
    scaled = (slope, inter) not in ((None, None), (1.0, 0.0))  # nibabel then returns float64
    kind = f"{dtype} voxels{', scaled to float64' if scaled else ''}"
    check_decoded(path, shape, dtype.itemsize, path.stat().st_size, compressed, limits, offset, kind,
                  decoded_itemsize=8 if scaled else None)


def image_affine_ras(image: Image) -> np.ndarray:
    """The NIfTI (RAS) affine of a 3D image; a 2D image is placed in the z = 0 plane."""
    affine = image.index_to_world()
    if image.ndim == 2:
        full = np.eye(4)
        full[:2, :2] = affine[:2, :2]
        full[:2, 3] = affine[:2, 2]
        affine = full
    return _RAS_TO_LPS @ affine


def write_nifti(image: Image, path: Path) -> None:
    array = image.array
    if image.ndim == 2:
        array = array[:, None]
    data = np.transpose(array, (3, 2, 1, 0))
    if data.shape[-1] == 1:
        data = data[..., 0]
    affine = image_affine_ras(image)
    source_affine = image.meta.get("affine_ras")
    if source_affine is not None and np.allclose(source_affine, affine, atol=1e-5):
        affine = np.asarray(source_affine)  # keep the input's affine bit for bit
    if data.dtype == bool:
        data = data.astype(np.uint8)
    nii = nib.Nifti1Image(data, affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))
