"""Image file names: the format suffix, the case id a file name gives, and nnU-Net's channel-file naming.

One place for these rules, so that data discovery (:mod:`medseg.data.dataset`), prediction inputs
(:mod:`medseg.infer.predict`) and ``medseg evaluate``'s matching (:mod:`medseg.evaluate.folders`) name a file's
case the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

# nnU-Net's channel files: <case>_0000.nii.gz, <case>_0001.nii.gz, ... (four digits, one file a channel)
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def image_suffix(path: str | Path) -> str:
    """The format suffix of a path, lower case, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def image_stem(path: str | Path) -> str:
    """A file's name without its image suffix, case kept (``Case_001.NII.GZ`` -> ``Case_001``)."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name
