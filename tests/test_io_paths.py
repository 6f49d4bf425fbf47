"""medseg.io.paths: the one rule for a file's case id and nnU-Net's channel files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.io import CHANNEL_FILE, image_stem, image_suffix


@pytest.mark.parametrize(("name", "suffix", "stem"), [
    ("case_001.nii.gz", ".nii.gz", "case_001"),
    ("Case_001.NII.GZ", ".nii.gz", "Case_001"),  # suffix lower case, the case id as written
    ("img.v2.png", ".png", "img.v2"),
    ("scan.nii", ".nii", "scan"),
    ("series", "", "series"),  # a DICOM folder: no suffix, the whole name
])
def test_suffix_and_stem(name, suffix, stem):
    assert image_suffix(name) == suffix and image_stem(Path("/data") / name) == stem


def test_channel_file_names():
    match = CHANNEL_FILE.match(image_stem("liver_7_0001.nii.gz"))
    assert match is not None and (match["case"], match["channel"]) == ("liver_7", "0001")
    assert CHANNEL_FILE.match("liver_7") is None and CHANNEL_FILE.match("liver_001") is None
