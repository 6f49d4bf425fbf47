"""Every reader, fed mutated and truncated copies of small valid files, either reads an Image whose array agrees
with its geometry or raises a MedsegError naming the file: never another exception, never a traceback.

Hypothesis overwrites bytes (biased towards the header, where sizes and offsets live), writes large integers over
header fields and cuts files short, and the default ReadLimits apply: a header inflated by a mutation must be
refused from the header (what is refused and why is tested in ``test_io_limits.py``). 100 examples per reader run
in a few seconds; ``--hypothesis-seed=N`` with a larger ``max_examples`` digs deeper (600 x 3 seeds pass).
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import write_small_images
from medseg.errors import MedsegError
from medseg.io import Image, ReadLimits, read_image

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom, tifffile and nibabel warn about every odd value

KINDS = ("nii", "nii.gz", "nrrd", "mha", "png", "tif", "dcm", "zip")
HEADER_BYTES = 400  # mutations land here half of the time: NIfTI's 348-byte header, NRRD/MHA text, PNG IHDR
LIMITS = ReadLimits()
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Originals(dict):
    """The bytes of each small valid file, by kind (short repr: hypothesis prints the test's arguments)."""

    def __repr__(self) -> str:
        return f"Originals({', '.join(self)})"


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Originals:
    files = write_small_images(tmp_path_factory.mktemp("originals"))
    return Originals({kind: path.read_bytes() for kind, path in files.items()})


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes overwritten, a large integer written over a field, and maybe cut short."""
    out = bytearray(data)
    position = st.one_of(st.integers(0, min(len(out), HEADER_BYTES) - 1), st.integers(0, len(out) - 1))
    for _ in range(draw(st.integers(0, 6))):
        out[draw(position)] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = min(draw(position), len(out) - 4)
        value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
        out[at:at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def read_mutated(kind: str, data: bytes) -> Image | MedsegError:
    """Write ``data`` as a file of ``kind`` alone in a fresh folder and read it."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz_"))
    try:
        path = folder / f"fuzzed.{kind}"
        path.write_bytes(data)
        try:
            return read_image(path, limits=LIMITS)
        except MedsegError as error:
            assert str(path) in str(error) or str(folder) in str(error), f"the error does not name the file: {error}"
            return error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def assert_consistent(image: Image) -> None:
    assert image.array.ndim == image.ndim + 1
    assert len(image.origin) == image.ndim and len(image.direction) == image.ndim ** 2
    assert image.array.size <= LIMITS.max_voxels
    assert np.all(np.isfinite(image.spacing)) or image.meta.get("format") == "nifti"  # NIfTI keeps odd affines


@pytest.mark.parametrize("kind", KINDS)
def test_original_reads(kind: str, originals: Originals) -> None:
    assert isinstance(read_mutated(kind, originals[kind]), Image)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_mutated_file_reads_or_is_refused(kind: str, originals: Originals, data: st.DataObject) -> None:
    outcome = read_mutated(kind, data.draw(mutations(originals[kind]), label="bytes"))
    if isinstance(outcome, Image):
        assert_consistent(outcome)
