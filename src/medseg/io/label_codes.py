"""Coded terms of label names (SNOMED CT by default) for DICOM SEG segments: what the bundle keeps, and
``--label-codes FILE``.

A SEG segment says what it is by a category and a type code (and, for paired organs, a laterality modifier);
viewers show and group segments by them, so "liver" must not reach the viewer as *Tissue*. Where the codes of a
label come from, first match wins:

1. ``--label-codes FILE`` given to ``predict`` / ``dicom-node`` / ``dicomweb`` (this run only);
2. the bundle's ``plan.json`` ``label_codes``: fixed when the plan is made, from ``--label-codes FILE`` given to
   ``medseg plan`` / ``medseg train`` and otherwise from medseg's table, so a bundle writes the same terms
   whatever medseg version runs it later (a fine-tuned bundle inherits its parent's for the names they share);
3. medseg's table (:func:`medseg.io.dicom_seg.segment_terms`: liver, spleen, kidney, tumour, ... with
   ``left``/``right`` as laterality), for bundles made before plans held codes;
4. the fallback *Tissue* (category 85756007, type 85756007), which the plan's notes and the model card point
   out so that the user can give a file.

The file (and ``plan.json``'s ``label_codes``) is JSON, label name (matched case-insensitively) -> category and
type, each ``[code, scheme, meaning]``, and optionally ``modifier`` (laterality):

    {"liver": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["10200004", "SCT", "Liver"]},
     "left kidney": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["64033007", "SCT", "Kidney"],
                     "modifier": ["7771000", "SCT", "Left"]}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydicom.sr.coding import Code

from medseg.errors import MedsegError

__all__ = ["FALLBACK_TYPE", "LabelCodes", "codes_json", "load_label_codes", "parse_label_codes", "resolve_codes"]

LabelCodes = Mapping[str, tuple[Code, Code, Code | None]]  # label name -> (category, type, modifier or None)
FALLBACK_TYPE = "85756007"  # SCT Tissue: what a name nothing codes becomes
_PARTS = ("category", "type", "modifier")
_FIX = 'give JSON like {"liver": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["10200004", ' \
       '"SCT", "Liver"]}}'


def load_label_codes(path: str | Path | None) -> dict[str, tuple[Code, Code, Code | None]]:
    """Label name -> (category, type, modifier) codes from a ``--label-codes`` file; ``{}`` for None."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedsegError(f"cannot read label codes ({type(exc).__name__}: {exc})", path, _FIX) from None
    return parse_label_codes(data, path)


def parse_label_codes(data: Any, source: str | Path | None) -> dict[str, tuple[Code, Code, Code | None]]:
    """The JSON form (a file's, or ``plan.json``'s ``label_codes``) as codes; a clear error naming ``source``."""
    if not isinstance(data, dict):
        raise MedsegError("label codes must be a JSON object of label names", source, _FIX)
    parsed = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or set(entry) - set(_PARTS):
            raise MedsegError(f"label {name!r}: give an object with category, type and (optionally) modifier",
                              source, _FIX)
        modifier = _code(entry, "modifier", name, source) if entry.get("modifier") is not None else None
        parsed[str(name)] = (_code(entry, "category", name, source), _code(entry, "type", name, source), modifier)
    return parsed


def codes_json(codes: tuple[Code, Code, Code | None]) -> dict[str, list[str]]:
    """One label's codes in the JSON form."""
    return {part: [code.value, code.scheme_designator, code.meaning]
            for part, code in zip(_PARTS, codes, strict=True) if code is not None}


def resolve_codes(names: Iterable[str], given: LabelCodes | None = None,
                  inherited: Mapping[str, Any] | None = None) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """The JSON-form codes of every label in ``names``: ``given`` first, then ``inherited`` (a plan's
    ``label_codes``), then medseg's table; and the names that fell back to *Tissue*."""
    from medseg.io.dicom_seg import segment_terms

    inherited_codes = {k.lower(): v for k, v in parse_label_codes(dict(inherited or {}), "plan.json").items()}
    given_lower = {k.lower(): v for k, v in (given or {}).items()}
    resolved, fallback = {}, []
    for name in names:
        terms = given_lower.get(name.lower()) or inherited_codes.get(name.lower()) or segment_terms(name)
        resolved[name] = codes_json(terms)
        if terms[1].value == FALLBACK_TYPE and name.lower() not in given_lower:
            fallback.append(name)
    return resolved, fallback


def _code(entry: dict, key: str, name: str, source: str | Path | None) -> Code:
    value = entry.get(key)
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v.strip() for v in value)):
        raise MedsegError(f"label {name!r}: {key} must be [code, scheme, meaning], three non-empty strings", source,
                          _FIX)
    code, scheme, meaning = (v.strip() for v in value)
    if len(code) > 16 or len(scheme) > 16 or len(meaning) > 64:
        raise MedsegError(f"label {name!r}: {key} is too long for DICOM (code and scheme 16, meaning 64 chars)",
                          source, _FIX)
    return Code(code, scheme, meaning)
