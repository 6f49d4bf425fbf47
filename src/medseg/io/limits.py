"""How much a reader may decode, checked from the file's header before any pixel data is allocated.

A few bytes of header can claim a 32767³ volume, and a 2 MB gzip stream can inflate to gigabytes. Every reader in
:mod:`medseg.io` therefore reads the header first (shape, sample type, compression) and calls the checks here
before it decodes pixels; :func:`decode_errors` turns what a decoder still raises (``MemoryError``, ``zlib.error``,
...) into an :class:`~medseg.errors.ImageReadError` naming the file.

The defaults are generous for real scans and tight for crafted files. Compression ratios (decoded bytes / file
bytes) measured on every file of the real data in ``shared/data`` (see its SOURCES.md):

* images: CT ``.nii.gz`` 2.1-2.3 (ircadb, 512x512x129/151), MRI ``.nii.gz`` 1.2-3.5 (hippocampus) and 10-16
  (BraTS, skull-stripped), PNG photographs and X-rays 1.2-15, JPEG 2000 DICOM CT 3.3, DICOM folders zipped 1.0-2.0
  (per member and in all);
* label maps: ``.nii.gz`` 24-1023 (ircadb per-structure masks: 33.8 MB decoded from 33 KB), NRRD 300-536, PNG
  masks 21-439; the largest real label map there decodes to 38 MiB.

So images stay well below ``max_expansion`` = 32:1, and only label maps go beyond it. The ratio is enforced only
above ``expansion_floor_bytes`` = 256 MiB (a 512x512x1024 uint8 mask), so every mask up to that size reads
whatever its ratio. Together they let a file under 10 MB decode to at most 320 MB (305 MiB). Decoded bytes are
counted as the reader holds them (Pillow keeps colour pixels in 4 bytes, scaled NIfTI becomes float64, rescaled
DICOM is counted at 4 bytes a sample), and each reader keeps at most about one extra copy while decoding; the
measured peak RSS of reading such a 305 MiB worst case is 780 MiB for NIfTI, MHA, 16-bit PNG and a DICOM zip, and
916 MiB for 8-bit RGB, RGBA and palette PNGs (190 MiB of it is the imported libraries): under 1 GiB.
Raise a limit with ``read_image(path, limits=ReadLimits(max_expansion=2000))`` for a genuine file it refuses.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from medseg.errors import ImageReadError

__all__ = [
    "DECODER_ERRORS",
    "ReadLimits",
    "check_decoded",
    "check_expansion",
    "check_size",
    "check_truncated",
    "decode_errors",
]

_MIB = 1 << 20
_GIB = 1 << 30

# What decoders raise for corrupt or hostile data (besides MemoryError): a reader turns these into ImageReadError.
DECODER_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error, EOFError, struct.error, OverflowError, ValueError, OSError,
)


@dataclass(frozen=True)
class ReadLimits:
    """The largest image a reader decodes; each limit is checked from the header before pixels are read."""

    max_voxels: int = 1 << 31  # all channels together: 2**31 is e.g. 512x512x8192 or 4 channels of 512x512x2048
    max_bytes: int = 8 * _GIB  # decoded bytes, as the reader holds them (e.g. 2**31 float32 voxels)
    max_expansion: float = 32.0  # decoded bytes / file bytes of compressed data: gzip, zlib, JPEG 2000, zip, ...
    expansion_floor_bytes: int = 256 * _MIB  # max_expansion applies only when more than this is decoded
    max_zip_members: int = 100_000
    max_zip_bytes: int = 16 * _GIB  # uncompressed size of all members of a zip archive together

    def __post_init__(self) -> None:
        for item in fields(self):
            if not getattr(self, item.name) > 0:
                raise ValueError(f"ReadLimits.{item.name} must be positive, not {getattr(self, item.name)!r}")


def _fix(name: str) -> str:
    return f"if the file is genuine, pass a larger ReadLimits({name}=...) to read_image; otherwise re-export it"


def check_size(path: str | Path, voxels: int, nbytes: int, limits: ReadLimits, what: str) -> None:
    """Refuse ``what`` (e.g. "header declares 512x512x100 uint8") when it has too many voxels or bytes."""
    if voxels > limits.max_voxels:
        raise ImageReadError(
            f"{what}: {voxels:,} voxels, over the limit of {limits.max_voxels:,} (ReadLimits.max_voxels)",
            path, _fix("max_voxels"),
        )
    if nbytes > limits.max_bytes:
        raise ImageReadError(
            f"{what}: {nbytes:,} bytes decoded, over the limit of {limits.max_bytes:,} (ReadLimits.max_bytes)",
            path, _fix("max_bytes"),
        )


def check_expansion(path: str | Path, decoded: int, stored: int, limits: ReadLimits, what: str) -> None:
    """Refuse compressed data that would inflate by more than ``max_expansion`` (above the floor): a bomb."""
    if decoded <= limits.expansion_floor_bytes or decoded <= limits.max_expansion * max(stored, 1):
        return
    raise ImageReadError(
        f"{what}: {decoded:,} bytes decoded from {stored:,} compressed bytes, an expansion of "
        f"{decoded / max(stored, 1):,.0f}:1, over the limit of {limits.max_expansion:g}:1 (ReadLimits.max_expansion, "
        f"applied above {limits.expansion_floor_bytes:,} bytes; a decompression bomb or a corrupt header)",
        path, _fix("max_expansion"),
    )


def check_truncated(path: str | Path, needed: int, file_bytes: int, what: str, data_file: str = "the file") -> None:
    """Refuse uncompressed data whose header declares more bytes than the file holds, before allocating them."""
    if needed > file_bytes:
        raise ImageReadError(
            f"{what}: needs {needed:,} bytes but {data_file} holds only {file_bytes:,} "
            "(truncated, or a corrupt header)",
            path, "re-export or re-copy the file",
        )


def check_decoded(
    path: str | Path,
    shape: Sequence[int],
    itemsize: int,
    file_bytes: int | None,
    compressed: bool,
    limits: ReadLimits,
    offset: int = 0,
    kind: str = "",
    data_file: str = "the file",
    decoded_itemsize: int | None = None,
) -> None:
    """All checks for an array of ``shape`` x ``itemsize`` bytes that a file of ``file_bytes`` declares.

    Uncompressed data must fit in the file (``data_file`` in messages) after ``offset`` (the header); compressed
    data must not expand beyond ``limits.max_expansion``. ``file_bytes`` None (data spread over several files)
    skips both. ``decoded_itemsize``: the bytes per sample in memory when the reader widens the stored type (NIfTI
    scaling gives float64); the size and expansion limits count those.
    """
    dims = [int(s) for s in shape]
    what = f"header declares {'x'.join(map(str, dims))}{f' {kind}' if kind else ''}"
    if any(d < 0 for d in dims):
        raise ImageReadError(f"{what}: a negative size", path, "the header is corrupt; re-export the file")
    voxels = math.prod(dims)
    decoded = voxels * int(decoded_itemsize or itemsize)
    check_size(path, voxels, decoded, limits, what)
    if file_bytes is None:
        return
    if compressed:
        check_expansion(path, max(offset, 0) + decoded, file_bytes, limits, what)
    else:
        check_truncated(path, max(offset, 0) + voxels * int(itemsize), file_bytes, what, data_file)


@contextmanager
def decode_errors(path: str | Path, kind: str) -> Iterator[None]:
    """Turn ``MemoryError`` and decoder errors raised inside the block into an ImageReadError naming ``path``."""
    try:
        yield
    except MemoryError:
        raise ImageReadError(
            f"ran out of memory reading {kind}", path,
            "free memory or read it on a larger machine; pass a smaller ReadLimits to refuse such files early",
        ) from None
    except DECODER_ERRORS as exc:
        raise ImageReadError(
            f"cannot read {kind} ({type(exc).__name__}: {exc})", path,
            "the file is truncated or corrupt; re-export or re-copy it",
        ) from None
