"""Reproducible k-fold splits that never train on the data set's own test list."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.dataset import Dataset
from medseg.errors import DatasetError
from medseg.io.atomic import write_text_atomic

TRAILING_NUMBER = re.compile(r"[_\-]?\d+$")


def case_prefix(case_id: str) -> str:
    """The stratification group of a case id: the id without its trailing number (``JPCLN012`` -> ``JPCLN``)."""
    return TRAILING_NUMBER.sub("", case_id) or case_id


def make_splits(dataset: Dataset, folds: int = 5, seed: int = 0, stratify: bool = False) -> dict[str, Any]:
    """K folds over the training cases (those not in ``split.json``'s test list).

    Deterministic for a given seed and case set. With ``stratify`` the cases of each id prefix are dealt
    round-robin across the folds, so every fold gets its share of each group.
    """
    test = list(dataset.split["test"]) if dataset.split else []
    test_set = set(test)
    pool = sorted(cid for cid in dataset.case_ids if cid not in test_set)
    if folds < 2:
        raise DatasetError(f"--folds {folds} is too few", dataset.root, "use 2 or more folds")
    if len(pool) < folds:
        raise DatasetError(
            f"{len(pool)} training cases cannot make {folds} folds", dataset.root, "use fewer folds or add cases"
        )
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
        splits.append({"train": train, "val": val})
    return {"folds": folds, "seed": seed, "stratified": stratify, "test": sorted(test), "splits": splits}


def write_splits(splits: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(splits, indent=1) + "\n")
    return path


def load_splits(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read splits ({exc})", path, "regenerate it with `medseg split`") from None
    if not isinstance(data, dict) or not isinstance(data.get("splits"), list):
        raise DatasetError("is not a medseg splits file", path, "regenerate it with `medseg split`")
    return data
