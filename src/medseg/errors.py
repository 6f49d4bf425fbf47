"""The one error type users see.

Every problem a user can fix (a bad file, a wrong option, an inconsistent data set) is raised as a
:class:`MedsegError` naming the file, what is wrong and what to do; the CLI prints it as one line and exits 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """A problem the user can fix: says which file, what is wrong and what to do."""

    def __init__(self, what: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.what = what
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        parts.append(self.what)
        if self.fix:
            parts.append(f" ({self.fix})")
        return "".join(parts)


class ImageReadError(MedsegError):
    """A file could not be read as an image."""


class DatasetError(MedsegError):
    """A data set folder is not laid out as medseg expects."""
