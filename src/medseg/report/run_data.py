"""Everything the report shows, read once from the run folder (and its evaluation) before any section is drawn.

Every input is optional: what is missing or unreadable is kept as ``None`` (or empty) with the reason beside it,
for the section to print instead of failing. Sections only read a :class:`RunData`; none depends on another
having run first.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.bundle import POSTPROCESS_FILE
from medseg.errors import MedsegError
from medseg.plan import Plan

Record = dict[str, Any]


@dataclass
class FoldLog:
    """One ``fold_K`` folder: its ``log.jsonl`` split into step and validation records, when it could be read."""

    name: str  # "0", "1", ... or "none"
    folder: Path
    steps: list[Record] = field(default_factory=list)
    validations: list[Record] = field(default_factory=list)
    read: bool = False  # log.jsonl exists and was read
    error: str | None = None  # log.jsonl exists but could not be read

    @property
    def curve(self) -> Path:
        return self.folder / "curve.png"


@dataclass
class RunData:
    """The report's inputs, each with the reason it is missing (``*_error``) when it is."""

    run: Path
    evaluation: Path
    check: Any = None
    check_error: str | None = None
    fingerprint: Any = None
    fingerprint_error: str | None = None
    splits: Any = None
    splits_error: str | None = None
    plan: Plan | None = None
    plan_error: str | None = None
    postprocess: Any = None
    postprocess_error: str | None = None
    metrics_rows: list[dict[str, str]] = field(default_factory=list)
    metrics_error: str | None = None
    summary: Any = None
    summary_error: str | None = None
    folds: list[FoldLog] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # foreground label value -> name


def load_run_data(run: Path, evaluation: Path) -> RunData:
    """Read every input of the report from ``run`` and ``evaluation``; never raises for a missing file."""
    data = RunData(run, evaluation)
    data.check, data.check_error = load_json(run / "check.json")
    data.fingerprint, data.fingerprint_error = load_json(run / "fingerprint.json")
    data.splits, data.splits_error = load_json(run / "splits.json")
    data.postprocess, data.postprocess_error = load_json(run / "bundle" / POSTPROCESS_FILE)
    if (run / "plan.json").exists():
        try:
            data.plan = Plan.load(run / "plan.json")
        except MedsegError as exc:
            data.plan_error = exc.message
    else:
        data.plan_error = f"plan.json not found in {run}"
    data.metrics_rows, data.metrics_error = read_metrics_csv(evaluation / "metrics.csv")
    data.summary, data.summary_error = load_json(evaluation / "summary.json")
    data.folds = [read_fold(folder) for folder in sorted((p for p in run.glob("fold_*") if p.is_dir()), key=_natural)]
    data.names = label_names(data.plan, data.check, data.metrics_rows)
    return data


def load_json(path: Path) -> tuple[Any, str | None]:
    """(data, None), or (None, why it is not available)."""
    if not path.exists():
        return None, f"{path.name} not found in {path.parent}"
    try:
        return json.loads(path.read_text()), None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path} ({exc})"


def read_metrics_csv(path: Path) -> tuple[list[dict[str, str]], str | None]:
    """The rows of ``medseg evaluate``'s ``metrics.csv`` (as text), or no rows and why."""
    if not path.exists():
        return [], f"{path.name} not found in {path.parent}"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        return [], f"cannot read {path} ({exc})"
    if rows and not {"case", "dice"} <= set(rows[0]):
        return [], f"{path} lacks the case and dice columns"
    return rows, None if rows else f"{path} has no rows"


def read_fold(folder: Path) -> FoldLog:
    """A fold folder's training log; a line cut short by an interrupted run is skipped."""
    fold = FoldLog(folder.name.removeprefix("fold_"), folder)
    log = folder / "log.jsonl"
    if not log.exists():
        return fold
    try:
        with open(log) as handle:
            lines = list(handle)
    except (OSError, UnicodeDecodeError) as exc:
        fold.error = f"cannot read {log} ({exc})"
        return fold
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") == "step":
            fold.steps.append(record)
        elif record.get("event") == "validation":
            fold.validations.append(record)
    fold.read = True
    return fold


def label_names(plan: Plan | None, check: Any, metrics_rows: list[dict[str, str]]) -> dict[int, str]:
    """Foreground label value -> name, from the plan, else check.json, else metrics.csv."""
    names: dict[int, str] = {}
    for row in metrics_rows:
        try:
            names[int(row.get("label_value", ""))] = row.get("label") or f"label {row['label_value']}"
        except ValueError:
            continue
    summary = check.get("summary") if isinstance(check, dict) else None
    if isinstance(summary, dict) and isinstance(summary.get("labels"), dict):
        for value, entry in summary["labels"].items():
            if str(value).isdigit() and isinstance(entry, dict) and entry.get("name"):
                names[int(value)] = entry["name"]
    if plan is not None:
        names.update(plan.labels)
    names.pop(0, None)
    return names


def num(value: Any) -> float:
    """``value`` as a float; NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def duration(value: Any) -> str:
    """Seconds as ``1h 02m``, ``3m 04s`` or ``5s``."""
    seconds = num(value)
    if not math.isfinite(seconds):
        return "n/a"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s" if minutes else f"{sec}s"


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))
