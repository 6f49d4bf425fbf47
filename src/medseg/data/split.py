"""Reproducible k-fold splits that never train on the data set's own test list.

``splits.json`` holds ``{"folds": K, "seed": S, "stratified": bool, "test": [...], "splits": [{"train": [...],
"val": [...]}, ...]}``; :class:`Splits` is that file as a dataclass, and writes it back in the same form.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.dataset import Dataset
from medseg.errors import DatasetError, MedsegError
from medseg.io.atomic import write_text_atomic

TRAILING_NUMBER = re.compile(r"[_\-]?\d+$")


def case_prefix(case_id: str) -> str:
    """The stratification group of a case id: the id without its trailing number (``JPCLN012`` -> ``JPCLN``)."""
    return TRAILING_NUMBER.sub("", case_id) or case_id


@dataclass
class Fold:
    """One cross-validation fold: the case ids it trains on and those it validates on."""

    train: list[str]
    val: list[str]


@dataclass
class Splits:
    """K folds over the training cases, the held-out test list, and how they were drawn."""

    folds: list[Fold]
    test: list[str] = field(default_factory=list)
    seed: int = 0
    stratified: bool = False
    notes: list[str] = field(default_factory=list)  # what was changed from the request, and why

    def to_dict(self) -> dict[str, Any]:
        """``splits.json``'s form (``folds`` there is the fold count; the folds themselves are ``splits``)."""
        data = {"folds": len(self.folds), "seed": self.seed, "stratified": self.stratified, "test": list(self.test),
                "splits": [{"train": list(f.train), "val": list(f.val)} for f in self.folds]}
        return data | ({"notes": list(self.notes)} if self.notes else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> Splits:
        """Inverse of :meth:`to_dict`; ``seed``, ``stratified`` and ``test`` may be missing (older files)."""
        if not isinstance(data, dict) or not isinstance(data.get("splits"), list):
            raise DatasetError("is not a medseg splits file", source, "regenerate it with `medseg split`")
        try:
            folds = [Fold([str(c) for c in s["train"]], [str(c) for c in s["val"]]) for s in data["splits"]]
            return cls(folds, [str(c) for c in data.get("test", [])], int(data.get("seed", 0)),
                       bool(data.get("stratified", False)), [str(n) for n in data.get("notes", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"is not a medseg splits file ({exc})", source,
                               "regenerate it with `medseg split`") from None

    def fold_names(self, selection: str) -> list[str]:
        """The folds ``selection`` names: ``"K"``, ``"all"`` (every fold in turn) or ``"none"`` (no validation)."""
        if selection == "all":
            return [str(k) for k in range(len(self.folds))]
        if selection == "none":
            return ["none"]
        if not selection.isdigit() or int(selection) >= len(self.folds):
            raise MedsegError(f"fold {selection!r} does not exist",
                              fix=f"use 0..{len(self.folds) - 1}, all or none")
        return [selection]

    def cases(self, fold: str) -> tuple[list[str], list[str]]:
        """(train, val) case ids of fold ``"K"``; fold ``"none"`` trains on every training case, validates on none."""
        if fold == "none":
            first = self.folds[0]
            return sorted(first.train + first.val), []
        entry = self.folds[int(fold)]
        return entry.train, entry.val


def make_splits(dataset: Dataset, folds: int = 5, seed: int = 0, stratify: bool = False) -> Splits:
    """K folds over the training cases (those not in ``split.json``'s test list).

    Deterministic for a given seed and case set. With ``stratify`` the cases of each id prefix are dealt
    round-robin across the folds, so every fold gets its share of each group.

    A small data set still trains: with fewer training cases than ``folds``, there are as many folds as cases (each
    validating on one), and with one case, or ``folds=1``, one fold trains on every case and validates on none.
    ``notes`` says when the fold count was lowered.
    """
    test = list(dataset.split["test"]) if dataset.split else []
    test_set = set(test)
    pool = sorted(cid for cid in dataset.case_ids if cid not in test_set)
    if folds < 1:
        raise DatasetError(f"--folds {folds} is too few", dataset.root, "use 1 (no validation) or more folds")
    if not pool:
        raise DatasetError("has no training case outside split.json's test list", dataset.root,
                           "add labelled cases, or move some out of the test list")
    notes = []
    if len(pool) < folds:
        notes.append(f"{len(pool)} training case(s) cannot make {folds} folds: made {len(pool)} instead"
                     + (" (trains on it, without validation)" if len(pool) == 1 else " (one case validates each)"))
        folds = len(pool)
    if folds == 1:
        return Splits([Fold(pool, [])], sorted(test), seed, stratify, notes)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for cid in pool:
        groups[case_prefix(cid) if stratify else ""].append(cid)
    members: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for key in sorted(groups):
        ids = groups[key]
        order = rng.permutation(len(ids))
        for rank, index in enumerate(order):
            members[(offset + rank) % folds].append(ids[index])
        offset += len(ids)
    splits = []
    for k in range(folds):
        val = sorted(members[k])
        train = sorted(cid for j, m in enumerate(members) if j != k for cid in m)
        splits.append(Fold(train, val))
    return Splits(splits, sorted(test), seed, stratify, notes)


def write_splits(splits: Splits, path: str | Path) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(splits.to_dict(), indent=1) + "\n")
    return path


def load_splits(path: str | Path) -> Splits:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read splits ({exc})", path, "regenerate it with `medseg split`") from None
    return Splits.from_dict(data, path)
