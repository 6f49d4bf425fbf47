"""The DICOM API in one place; the code lives in four modules, lowest first:

* :mod:`medseg.io.dicom_archive`: the files of a folder or ``.zip`` (opened once, read in memory, never
  extracted; unsafe member names refused).
* :mod:`medseg.io.dicom_volume`: the slices of one series to a volume (slice order, LPS geometry, rescaled pixels).
* :mod:`medseg.io.dicom_series`: grouping files into series, choosing one, reading it as an Image (and why
  SimpleITK is not the series reader).
* :mod:`medseg.io.dicom_seg`: DICOM SEG to a label map and back.

``from medseg.io.dicom import read_dicom_series`` keeps working for code written before the split.
"""

from __future__ import annotations

from medseg.io.dicom_seg import read_dicom_seg, read_dicom_seg_segments, write_dicom_seg
from medseg.io.dicom_series import DicomSeriesInfo, list_dicom_series, read_dicom_series

__all__ = [
    "DicomSeriesInfo",
    "list_dicom_series",
    "read_dicom_series",
    "read_dicom_seg",
    "read_dicom_seg_segments",
    "write_dicom_seg",
]
