"""The files of a DICOM folder or ``.zip`` archive, and parsing one of them with pydicom.

    with DicomArchive("series.zip") as archive:          # or a folder, searched recursively
        for member in archive.members:
            dataset = archive.read_dataset(member, headers_only=True)   # None for non-DICOM files and DICOMDIR

A zip is opened once for everything read through the :class:`DicomArchive` (its central directory is parsed once,
not again for every member). Members are read into memory, never extracted, and members with absolute names,
drive letters or ``..`` are refused when the archive is opened.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg.errors import ImageReadError
from medseg.io.limits import ReadLimits, check_expansion, check_size

__all__ = ["ArchiveMember", "DicomArchive", "convert_elements"]

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_CORRUPT_FIX = "the file is truncated or corrupt; re-export or re-copy it, or remove it from the folder"


@dataclass(frozen=True)
class ArchiveMember:
    """One file of a DICOM folder or zip archive."""

    name: str  # relative to the folder / the member name in the archive (shown to users)
    root: Path  # the folder or the archive
    in_zip: bool
    size: int = field(default=0, compare=False)  # bytes: the file's, or the zip member's uncompressed size

    @property
    def location(self) -> str:
        """Where the file lies, for messages and ``meta["source_files"]``."""
        return f"{self.root}/{self.name}" if self.in_zip else str(self.root / self.name)


class DicomArchive:
    """A folder (searched recursively) or zip archive of DICOM files, open for reading.

    ``members`` lists every file, sorted by name. Use it as a context manager (or call :meth:`close`) so that a
    zip is closed when done. A zip's member count and sizes are checked against ``limits`` from its central
    directory, before any member is read; ``limits`` also bounds the series read from the archive.
    """

    def __init__(self, path: str | Path, limits: ReadLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ReadLimits()
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise ImageReadError("does not exist", self.path, "check the path")
        if self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.is_file())
            self.members = [ArchiveMember(p.relative_to(self.path).as_posix(), self.path, False, p.stat().st_size)
                            for p in files]
        else:
            self._zip = _open_zip(self.path)
            try:
                self.members = _zip_members(self._zip, self.path, self.limits)
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> DicomArchive:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the zip (nothing to do for a folder); the members cannot be read afterwards."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def open(self, member: ArchiveMember, stream: bool = False) -> BinaryIO:
        """A binary file object: the file itself, or the zip member read into memory (decompressed as it is read
        with ``stream``, for reading a header only). The caller closes it."""
        if member.in_zip:
            if self._zip is None:
                raise ValueError(f"{self.path} is closed")
            return self._zip.open(member.name) if stream else io.BytesIO(self._zip.read(member.name))
        return open(member.root / member.name, "rb")

    def read_dataset(self, member: ArchiveMember, headers_only: bool) -> Dataset | None:
        """Parse one member; None when it is not DICOM (no 'DICM' preamble) or is a DICOMDIR."""
        if PurePosixPath(member.name).name.upper() == "DICOMDIR":
            return None
        try:
            with self.open(member, stream=headers_only) as handle:
                dataset = pydicom.dcmread(handle, stop_before_pixels=headers_only)
                convert_elements(dataset)
        except InvalidDicomError:
            return None
        except Exception as exc:  # pydicom raises many exception types for corrupt or truncated files
            raise ImageReadError(
                f"cannot read DICOM file ({type(exc).__name__}: {exc})", member.location, _CORRUPT_FIX
            ) from None
        sop_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_SOP_CLASS:
            return None
        return dataset


def convert_elements(dataset: Dataset) -> None:
    """Decode every element now: pydicom decodes them on first access, where a corrupt one would raise anywhere."""
    for _ in dataset.iterall():
        pass
    for _ in getattr(dataset, "file_meta", Dataset()).iterall():
        pass


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Open the archive once; a file that is no zip at all gets its own message."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        if not zipfile.is_zipfile(path):  # only on failure: no second read of a good archive
            raise ImageReadError(
                "is neither a folder nor a zip archive of DICOM files", path, "give the series folder or a .zip of it"
            ) from None
        raise ImageReadError(f"cannot open zip archive ({exc})", path, "re-create or re-copy the archive") from None


def _zip_members(archive: zipfile.ZipFile, path: Path, limits: ReadLimits) -> list[ArchiveMember]:
    infos = [info for info in archive.infolist() if not info.is_dir()]
    _check_zip_sizes(infos, path, limits)
    members = []
    for info in infos:
        _check_member_name(info.filename, path)
        members.append(ArchiveMember(info.filename, path, in_zip=True, size=info.file_size))
    return sorted(members, key=lambda m: m.name)


def _check_zip_sizes(infos: list[zipfile.ZipInfo], path: Path, limits: ReadLimits) -> None:
    """Member count, each member's size and compression ratio, and their total, from the central directory.

    zipfile stops decompressing a member at its declared ``file_size``, so these bounds hold whatever the data.
    """
    if len(infos) > limits.max_zip_members:
        raise ImageReadError(
            f"holds {len(infos):,} files, over the limit of {limits.max_zip_members:,} (ReadLimits.max_zip_members)",
            path, "if the archive is genuine, pass a larger ReadLimits(max_zip_members=...) or unpack it",
        )
    for info in infos:
        check_size(f"{path}/{info.filename}", 0, info.file_size, limits, "zip member")
        check_expansion(f"{path}/{info.filename}", info.file_size, info.compress_size, limits, "zip member")
    total = sum(info.file_size for info in infos)
    if total > limits.max_zip_bytes:
        raise ImageReadError(
            f"its members declare {total:,} bytes in all, over the limit of {limits.max_zip_bytes:,} "
            "(ReadLimits.max_zip_bytes)",
            path, "if the archive is genuine, pass a larger ReadLimits(max_zip_bytes=...) or unpack it",
        )
    check_expansion(path, total, path.stat().st_size, limits, "all zip members together")


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse members that would point outside the archive (absolute names, drive letters, ``..``)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and posix.parts[0].endswith(":")):
        raise ImageReadError(
            f"zip member '{name}' has an unsafe path (absolute or containing '..')",
            archive,
            "re-create the archive with relative member names",
        )


def read_dicom_object(path: Path, modality: str, what: str, other: str) -> Dataset:
    """One whole DICOM file that must be of ``modality`` (a SEG, an RTSTRUCT); ``what`` names it in messages and
    ``other`` says how to read files of another modality."""
    if not path.is_file():
        raise ImageReadError("does not exist or is not a file", path, f"give the path of {what} file")
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many exception types for corrupt files
        raise ImageReadError(f"cannot read DICOM file ({type(exc).__name__}: {exc})", path,
                             "the file is truncated or not DICOM") from None
    if dataset.get("Modality") != modality:
        raise ImageReadError(f"is not {what} (Modality {dataset.get('Modality', 'missing')})", path, other)
    return dataset
