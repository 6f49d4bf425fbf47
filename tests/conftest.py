"""Session fixtures: the real hippocampus set, and tiny trained bundles shared by the predict, export, serve and
viewer tests (builders live in ``builders.py``)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from builders import make_2d_dataset, make_3d_dataset, shared, train_tiny_bundle


def pytest_unconfigure(config: pytest.Config) -> None:
    """Let the interpreter exit without a last full garbage collection over everything the session built.

    That collection walks every object torch, SciPy, FastAPI and the fixtures made; where the host has paged a
    process's cold memory out, the walk faults it all back in and can take minutes. Frozen objects are skipped,
    and the OS frees the memory at exit anyway.
    """
    gc.freeze()


@pytest.fixture
def hippocampus() -> Path:
    return shared("msd_hippocampus")


@pytest.fixture(scope="module")
def liver_dir() -> Path:
    """The real CT series with its DICOM SEG (dcmqi sample)."""
    return shared("dicom_ct_liver_seg")


@pytest.fixture(scope="module")
def liver_ct(liver_dir: Path):
    from medseg.io.dicom_series import read_dicom_series

    return read_dicom_series(liver_dir / "ct")


# Trained once per test session and shared read-only (a test that changes a bundle copies it first).
@pytest.fixture(scope="session")
def bundle_3d(tmp_path_factory) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("bundle3d"), make_3d_dataset)


@pytest.fixture(scope="session")
def bundle_2d(tmp_path_factory) -> Path:
    # 128-pixel images give a 128-pixel patch: a 512x512 X-ray is then 49 windows (961 with 32 pixels)
    return train_tiny_bundle(tmp_path_factory.mktemp("bundle2d"),
                             lambda folder: make_2d_dataset(folder, shape=(128, 128)))
