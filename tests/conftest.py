"""Shared fixtures: the real data sets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import gc
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """Let the interpreter exit without walking every object of the session once more.

    At exit CPython runs a full garbage collection over everything the session imported and built (torch,
    SciPy, FastAPI, fixtures). On the shared VM this suite runs on, the host reclaims a process's cold pages, so
    that walk faults them all back in: py-spy showed pytest's main thread in ``gc_collect_main`` for several
    minutes after the last report line (2026-11-26). Frozen objects are skipped; the OS frees the memory anyway.
    """
    gc.freeze()


@pytest.fixture
def hippocampus() -> Path:
    return shared("msd_hippocampus")


# Tiny trained bundles, trained once per test session and shared read-only by the predict, export, serve and
# viewer tests (a test that changes a bundle copies it first). Training one costs tens of seconds here.
@pytest.fixture(scope="session")
def bundle_3d(tmp_path_factory) -> Path:
    from synthetic import make_3d_dataset
    from test_predict import _bundle

    return _bundle(tmp_path_factory.mktemp("bundle3d"), make_3d_dataset)


@pytest.fixture(scope="session")
def bundle_2d(tmp_path_factory) -> Path:
    from synthetic import make_2d_dataset
    from test_predict import _bundle

    # 128-pixel images give a 128-pixel patch: a 512x512 X-ray is then 49 windows (961 with 32 pixels)
    return _bundle(tmp_path_factory.mktemp("bundle2d"), lambda folder: make_2d_dataset(folder, shape=(128, 128)))
