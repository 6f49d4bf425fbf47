"""Image file names: the format suffix, the case id a file name gives, and nnU-Net's channel-file naming.

One place for these rules, so that data discovery (:mod:`medseg.data.dataset`), prediction inputs
(:mod:`medseg.infer.predict`) and ``medseg evaluate``'s matching (:mod:`medseg.evaluate.folders`) name a file's
case the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


def printable(text: str) -> str:
    r"""``text`` as valid Unicode: a file name's undecodable bytes (kept by Python as lone surrogates) written as
    ``\xNN``, so JSON and terminals get valid UTF-8 and the name stays recognisable (``caf\xe9.png``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def json_safe(value: Any) -> Any:
    """A JSON-ready copy of ``value`` whose strings (keys too) are :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
