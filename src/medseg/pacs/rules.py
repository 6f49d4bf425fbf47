"""Which model segments which series: rules on a series' Modality, BodyPartExamined and SeriesDescription.

    {"rules": [{"model": "liver", "Modality": "CT", "BodyPartExamined": "ABDOMEN|LIVER"},
               {"model": "hippo", "Modality": "MR", "SeriesDescription": "t1"}],
     "default": null}

Each rule names a model (a bundle given to the node, by its folder name, or the data set's name when the folder is
called ``bundle``) and any of the three attributes as a regular expression, searched case-insensitively in the
series' value (``"^CT$"`` to match exactly); a rule applies when all its attributes match. The first rule that
applies wins; when none does, ``default`` (a model name, or null to skip the series). Without a rules file every
image series goes to the first bundle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medseg.errors import MedsegError

__all__ = ["ATTRIBUTES", "Rule", "RuleSet", "load_rules", "model_name"]

ATTRIBUTES = ("Modality", "BodyPartExamined", "SeriesDescription")


@dataclass(frozen=True)
class Rule:
    model: str
    patterns: dict[str, re.Pattern] = field(default_factory=dict)

    def matches(self, header: Dataset) -> bool:
        return all(pattern.search(str(header.get(keyword, "") or "")) for keyword, pattern in self.patterns.items())


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    default: str | None

    def choose(self, header: Dataset) -> str | None:
        """The model for the series of ``header`` (any of its instances), or None to skip it."""
        return next((rule.model for rule in self.rules if rule.matches(header)), self.default)

    @classmethod
    def everything_to(cls, model: str) -> RuleSet:
        return cls((), model)


def model_name(folder: Path, dataset_name: str, taken: set[str]) -> str:
    """A bundle's name in rules and logs: its folder's name, or the data set's when the folder is just ``bundle``
    (as ``medseg serve`` names models); made unique."""
    name = folder.name if folder.name not in ("bundle", "") else dataset_name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def load_rules(path: str | Path | None, models: Sequence[str]) -> RuleSet:
    """The rules of ``path`` (see the module docstring), checked against the model names; None: all to the first."""
    if path is None:
        return RuleSet.everything_to(models[0])
    path = Path(path)
    fix = f"see `medseg dicom-node --help`; models: {', '.join(models)}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedsegError(f"cannot read the rules ({type(exc).__name__}: {exc})", path, fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise MedsegError('rules must be a JSON object {"rules": [...], "default": ...}', path, fix)
    rules = tuple(_rule(entry, k, models, path, fix) for k, entry in enumerate(data.get("rules", [])))
    default = data.get("default")
    if default is not None and default not in models:
        raise MedsegError(f"default model {default!r} is not one of the bundles", path, fix)
    return RuleSet(rules, default)


def _rule(entry: object, index: int, models: Sequence[str], path: Path, fix: str) -> Rule:
    if not isinstance(entry, dict) or entry.get("model") not in models:
        raise MedsegError(f"rule {index + 1} names no model of the node ({entry!r})", path, fix)
    unknown = sorted(set(entry) - {"model", *ATTRIBUTES})
    if unknown:
        raise MedsegError(f"rule {index + 1} has unknown keys {unknown} (allowed: {', '.join(ATTRIBUTES)})", path, fix)
    patterns = {}
    for keyword in ATTRIBUTES:
        if keyword in entry:
            try:
                patterns[keyword] = re.compile(str(entry[keyword]), re.IGNORECASE)
            except re.error as exc:
                raise MedsegError(f"rule {index + 1}: {keyword} is not a regular expression ({exc})", path,
                                  fix) from None
    return Rule(str(entry["model"]), patterns)
