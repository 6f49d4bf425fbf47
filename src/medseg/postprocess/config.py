"""The post-processing configuration: what to do to each class, the record of why, and its JSON file."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.evaluate import DICE_EMPTY, DICE_EMPTY_CHOICES, DiceEmpty
from medseg.io.atomic import write_text_atomic

POSTPROCESS_FORMAT = "medseg-postprocess"
POSTPROCESS_VERSION = 1

_FIX = "choose post-processing again, or delete the file to predict without post-processing"
_DECISION_KEYS = ("step", "class", "dice_before", "dice_after", "kept")  # chosen on validation Dice
_ANATOMY_KEYS = ("step", "class", "kept", "basis", "largest_share_min", "cases")  # medseg.postprocess.anatomy


@dataclass
class ClassPostprocess:
    """Options for one class. Defaults do nothing."""

    keep_largest: bool = False
    min_size_mm: float = 0.0  # components smaller than this (mm^3 in 3D, mm^2 in 2D) are removed; 0 = off
    fill_holes: bool = False
    threshold: float | None = None  # probability below which an argmax voxel of this class becomes background

    def is_noop(self) -> bool:
        return not self.keep_largest and not self.min_size_mm and not self.fill_holes and self.threshold is None


@dataclass
class PostprocessConfig:
    """Per-class options keyed by label value (as str, like JSON), one global option, and the selection record.

    ``decisions`` holds one dict a tried step: ``{"step", "class", "dice_before", "dice_after", "kept"}``,
    with ``class`` the label value (int) or ``"foreground"`` for the global step; a step chosen with no
    validation fold has ``{"step", "class", "kept", "basis", "largest_share_min", "cases"}`` instead
    (:mod:`medseg.postprocess.anatomy`). ``dice_empty`` is the Dice
    convention of those scores (:mod:`medseg.evaluate.overlap`); files written before it was recorded used
    ``"one"`` too.
    """

    keep_largest_foreground: bool = False
    classes: dict[str, ClassPostprocess] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dice_empty: DiceEmpty = DICE_EMPTY

    def __post_init__(self) -> None:
        self.classes = {
            str(int(k)): v if isinstance(v, ClassPostprocess) else ClassPostprocess(**v)
            for k, v in self.classes.items()
        }

    def for_class(self, label: int) -> ClassPostprocess:
        """Options of ``label`` (defaults when it has none)."""
        return self.classes.get(str(int(label)), ClassPostprocess())

    def set_class(self, label: int, **options: Any) -> ClassPostprocess:
        """Update (creating if needed) the options of ``label``."""
        current = self.classes.setdefault(str(int(label)), ClassPostprocess())
        for key, value in options.items():
            if not hasattr(current, key):
                raise TypeError(f"unknown post-processing option {key!r}")
            setattr(current, key, value)
        return current

    def labels_with(self, option: str) -> list[int]:
        """Labels whose ``option`` is set (truthy / not None), sorted."""
        return sorted(int(k) for k, v in self.classes.items()
                      if (getattr(v, option) is not None if option == "threshold" else getattr(v, option)))

    @property
    def thresholds(self) -> dict[int, float]:
        return {label: float(self.for_class(label).threshold) for label in self.labels_with("threshold")}

    def is_noop(self) -> bool:
        return not self.keep_largest_foreground and all(v.is_noop() for v in self.classes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POSTPROCESS_FORMAT,
            "version": POSTPROCESS_VERSION,
            "keep_largest_foreground": bool(self.keep_largest_foreground),
            "classes": {
                k: {"keep_largest": bool(v.keep_largest), "min_size_mm": float(v.min_size_mm),
                    "fill_holes": bool(v.fill_holes),
                    "threshold": None if v.threshold is None else float(v.threshold)}
                for k, v in sorted(self.classes.items(), key=lambda item: int(item[0]))
            },
            "dice_empty": self.dice_empty,
            "decisions": [_json_decision(d) for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> PostprocessConfig:
        """Build from :meth:`to_dict` output; raises :class:`MedsegError` naming ``source`` when it is not one."""
        if not isinstance(data, dict) or data.get("format", POSTPROCESS_FORMAT) != POSTPROCESS_FORMAT:
            raise MedsegError("is not a medseg post-processing file", source, _FIX)
        version = data.get("version", POSTPROCESS_VERSION)
        if version != POSTPROCESS_VERSION:
            raise MedsegError(f"post-processing file version {version} is not supported "
                              f"(expects {POSTPROCESS_VERSION})", source, _FIX)
        try:
            unknown = set(data) - {"format", "version", "keep_largest_foreground", "classes", "decisions",
                                   "dice_empty"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            classes = {str(int(k)): _parse_class(v) for k, v in dict(data.get("classes", {})).items()}
            decisions = [_parse_decision(d) for d in data.get("decisions", [])]
            dice_empty = data.get("dice_empty", DICE_EMPTY)  # files from before it was recorded: "one" as well
            if dice_empty not in DICE_EMPTY_CHOICES:
                raise ValueError(f"dice_empty must be one of {list(DICE_EMPTY_CHOICES)}, got {dice_empty!r}")
            return cls(_parse_bool(data.get("keep_largest_foreground", False), "keep_largest_foreground"),
                       classes, decisions, dice_empty)
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsegError(f"is not a valid post-processing file ({exc})", source, _FIX) from None


def save_postprocessing(config: PostprocessConfig, path: str | Path) -> Path:
    """Write ``config`` as JSON to ``path`` atomically (a bundle names it ``postprocess.json``)."""
    write_text_atomic(path, json.dumps(config.to_dict(), indent=1) + "\n")
    return Path(path)


def load_postprocessing(path: str | Path) -> PostprocessConfig:
    """Read a file written by :func:`save_postprocessing`; :class:`MedsegError` if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError("post-processing file not found", path, "choose post-processing first, or give its path")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedsegError(f"cannot read post-processing file ({exc})", path, _FIX) from None
    if not isinstance(data, dict) or data.get("format") != POSTPROCESS_FORMAT:
        raise MedsegError("is not a medseg post-processing file (no \"format\": \"medseg-postprocess\")", path, _FIX)
    return PostprocessConfig.from_dict(data, path)


def with_overrides(base: PostprocessConfig | None, labels: Iterable[int], keep_largest: str | None = None,
                   fill_holes: str | None = None, min_size_mm: float | None = None) -> PostprocessConfig:
    """``base`` (or no post-processing) with the steps a user asked for on the command line.

    ``keep_largest`` is ``foreground`` (largest component of all foreground together), ``all`` (per class) or
    comma-separated label values; ``fill_holes`` is ``all`` or label values; ``min_size_mm`` (mm^3 in 3D, mm^2 in
    2D) applies to every class. ``none`` turns a step off. The ``decisions`` record is dropped: what runs is the
    user's choice, not the validation's.
    """
    foreground = sorted({int(v) for v in labels} - {0})
    config = copy.deepcopy(base) if base is not None else PostprocessConfig()
    config.decisions = []
    if keep_largest is not None:
        config.keep_largest_foreground = keep_largest.strip().lower() == "foreground"
        chosen = [] if config.keep_largest_foreground else _label_list(keep_largest, foreground, "--keep-largest")
        for value in foreground:
            config.set_class(value, keep_largest=value in chosen)
    if fill_holes is not None:
        chosen = _label_list(fill_holes, foreground, "--fill-holes")
        for value in foreground:
            config.set_class(value, fill_holes=value in chosen)
    if min_size_mm is not None:
        if not math.isfinite(min_size_mm) or min_size_mm < 0:
            raise MedsegError(f"must be a size in mm >= 0, got {min_size_mm}", "--min-size", "e.g. --min-size 50")
        for value in foreground:
            config.set_class(value, min_size_mm=float(min_size_mm))
    return config


def _label_list(spec: str, foreground: list[int], option: str) -> list[int]:
    """``all`` / ``none`` / ``1,3`` as a list of foreground label values, checked against the bundle's labels."""
    text = spec.strip().lower()
    if text == "all":
        return foreground
    if text == "none":
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    unknown = [v for v in values if v not in foreground]
    if not values or unknown:
        raise MedsegError(f"{spec!r} is not a list of this model's foreground labels", option,
                          f"give all, none or label values among {', '.join(map(str, foreground))}")
    return values


def _parse_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def _parse_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _parse_class(raw: Any) -> ClassPostprocess:
    if not isinstance(raw, dict):
        raise TypeError(f"class options must be an object, got {raw!r}")
    unknown = set(raw) - {"keep_largest", "min_size_mm", "fill_holes", "threshold"}
    if unknown:
        raise ValueError(f"unknown class options {sorted(unknown)}")
    min_size = _parse_float(raw.get("min_size_mm", 0.0), "min_size_mm")
    if min_size < 0:
        raise ValueError(f"min_size_mm must be >= 0, got {min_size}")
    threshold = raw.get("threshold")
    if threshold is not None:
        threshold = _parse_float(threshold, "threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    return ClassPostprocess(_parse_bool(raw.get("keep_largest", False), "keep_largest"), min_size,
                            _parse_bool(raw.get("fill_holes", False), "fill_holes"), threshold)


def _parse_decision(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) not in (set(_DECISION_KEYS), set(_ANATOMY_KEYS)):
        raise ValueError(f"a decision must have exactly the keys {list(_DECISION_KEYS)} or {list(_ANATOMY_KEYS)}, "
                         f"got {raw!r}")
    return _json_decision(raw)


def _json_decision(decision: dict[str, Any]) -> dict[str, Any]:
    label = decision["class"]
    out = {"step": str(decision["step"]), "class": label if label == "foreground" else int(label)}
    if "basis" in decision:  # chosen from the training masks' anatomy, with no validation Dice
        share = decision["largest_share_min"]
        return out | {"kept": bool(decision["kept"]), "basis": str(decision["basis"]),
                      "largest_share_min": None if share is None else float(share),
                      "cases": int(decision["cases"])}
    return out | {"dice_before": float(decision["dice_before"]), "dice_after": float(decision["dice_after"]),
                  "kept": bool(decision["kept"])}
