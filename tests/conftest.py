"""Shared fixtures: the real data sets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(name: str) -> Path:
    """Path of a real data set under ../shared/data; skips the test when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {name} not found at {path} (../shared/data is only on developer/CI machines)")
    return path


@pytest.fixture
def hippocampus() -> Path:
    return shared("msd_hippocampus")
