"""A case of a data set and a problem found in one: the records that discovery, checking and training share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set: the file, what is wrong, and what to do."""

    path: str
    what: str
    fix: str
    case_id: str | None = None

    def line(self) -> str:
        return f"{self.path}: {self.what} ({self.fix})"

    def to_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "what": self.what, "fix": self.fix, "case_id": self.case_id}


@dataclass
class Case:
    """One case: its channel files (one file may hold several channels) and its label file, if any."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None = None
