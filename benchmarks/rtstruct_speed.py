"""Seconds to write (and read back) an RTSTRUCT of a speckled prediction on the real 20x512x512 CT series.

A tiny or early model predicts many small specks; each is a contour, and RTSTRUCT writing once took 29 s for the
29,328 contours such a model gave on this series (issue 21). The label map here is seeded noise: 0.3 % of the
voxels label 1 everywhere and 5 % of a 200x200 square label 2, about 50,000 contours in all. ``identical`` says
whether reading the RTSTRUCT back onto the series gives the label map unchanged.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from _common import data_set, emit

if __name__ == "__main__":
    from medseg.io.dicom_rtstruct import read_rtstruct, write_rtstruct
    from medseg.io.dicom_series import read_dicom_series

    series = data_set("dicom_ct_series_totalseg") / "dicom"
    depth, rows, columns = read_dicom_series(series).array.shape[-3:]
    rng = np.random.default_rng(0)
    labels = (rng.random((depth, rows, columns)) < 0.003).astype(np.uint8)
    labels[:, 100:300, 100:300][rng.random((depth, 200, 200)) < 0.05] = 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speckled.rtstruct.dcm"
        start = time.perf_counter()
        write_rtstruct(labels, series, path, {1: "liver", 2: "spleen"})
        write_seconds = time.perf_counter() - start
        start = time.perf_counter()
        back = read_rtstruct(path, series).array[0]
        read_seconds = time.perf_counter() - start
        size = path.stat().st_size
    from medseg.io.dicom_rtstruct import label_contours

    contours = sum(len(label_contours(labels[z] == value)) for z in range(depth) for value in (1, 2))
    emit("rtstruct_speed", {"shape": [int(depth), int(rows), int(columns)], "contours": contours,
                            "write_seconds": round(write_seconds, 2), "read_seconds": round(read_seconds, 2),
                            "file_mib": round(size / 2**20, 1), "identical": bool((back == labels).all())})
