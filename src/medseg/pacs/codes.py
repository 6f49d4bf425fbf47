"""``--label-codes FILE``: coded terms for label names the built-in table does not know (or codes otherwise).

The file is JSON, label name (matched case-insensitively) -> category and type, each ``[code, scheme, meaning]``:

    {"liver": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["10200004", "SCT", "Liver"]},
     "Anterior": {"category": ["91723000", "SCT", "Anatomical Structure"],
                  "type": ["5366008", "SCT", "Hippocampus"]}}

Names it does not list keep the built-in terms of :func:`medseg.io.dicom_seg.segment_terms` (Tissue otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydicom.sr.coding import Code

from medseg.errors import MedsegError

__all__ = ["load_label_codes"]

_FIX = 'give JSON like {"liver": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["10200004", ' \
       '"SCT", "Liver"]}}'


def load_label_codes(path: str | Path | None) -> dict[str, tuple[Code, Code]]:
    """Label name -> (category, type) codes from a ``--label-codes`` file; ``{}`` for None."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedsegError(f"cannot read label codes ({type(exc).__name__}: {exc})", path, _FIX) from None
    if not isinstance(data, dict):
        raise MedsegError("label codes must be a JSON object of label names", path, _FIX)
    return {str(name): (_code(entry, "category", name, path), _code(entry, "type", name, path))
            for name, entry in data.items()}


def _code(entry: Any, key: str, name: str, path: Path) -> Code:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v.strip() for v in value)):
        raise MedsegError(f"label {name!r}: {key} must be [code, scheme, meaning], three non-empty strings", path,
                          _FIX)
    code, scheme, meaning = (v.strip() for v in value)
    if len(code) > 16 or len(scheme) > 16 or len(meaning) > 64:
        raise MedsegError(f"label {name!r}: {key} is too long for DICOM (code and scheme 16, meaning 64 chars)",
                          path, _FIX)
    return Code(code, scheme, meaning)
