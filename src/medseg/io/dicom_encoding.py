"""Implicit VR little endian bytes of DICOM elements and sequence items, for encoders that must be fast.

Written by hand rather than built as pydicom Datasets: an RTSTRUCT of a speckled prediction on a 20-slice CT holds
30,000-50,000 contour items, and pydicom's per-Dataset and per-DSfloat overhead made writing them take 36 s
(`benchmarks/rtstruct_speed.py`: 3.3 s with these). The bytes are the encoding pydicom itself writes and reads
back (tests/test_rtstruct.py round-trips them and runs dciodvfy on them). Values must be ASCII.
"""

from __future__ import annotations

import struct


def element(group: int, number: int, value: bytes) -> bytes:
    """One data element: tag, 32-bit length, value (already of even length)."""
    return struct.pack("<HHI", group, number, len(value)) + value


def item(body: bytes) -> bytes:
    """One sequence item of defined length holding the encoded elements ``body``."""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def ui(uid: str) -> bytes:
    """A UI value, padded with NUL to even length."""
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def text(value: str) -> bytes:
    """A CS, IS or DS value (backslash-separated for several), padded with a space to even length."""
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw
