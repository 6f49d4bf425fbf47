"""DICOM SEG output: a predicted label map written as a DICOM Segmentation that references its source series.

    write_dicom_seg(labels, "ct_series/", "case.seg.dcm", {1: "liver"})

One segment per foreground label (numbered as the label values, named by the plan's label names), binary
frames, one frame per source slice (empty frames omitted), same study and frame of reference as the source.
Read it back with :func:`medseg.io.dicom.read_dicom_seg` (``source`` = the series) to get the label map.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.dicom import _read_dataset, _select_series, _sop_uid


def source_datasets(series: str | Path, sop_instance_uids: list[str] | None = None,
                    series_uid: str | None = None) -> list[Dataset]:
    """The series' datasets (pixels included), in the order of ``sop_instance_uids`` (the slice order of
    :func:`medseg.io.dicom.read_dicom_series`) when given."""
    path = Path(series)
    _, members = _select_series(path, series_uid)
    datasets = [ds for ds in (_read_dataset(m, headers_only=False) for m in members) if ds is not None]
    if sop_instance_uids is None:
        return datasets
    by_uid = {_sop_uid(ds): ds for ds in datasets}
    missing = [uid for uid in sop_instance_uids if uid not in by_uid]
    if missing:
        raise MedsegError(f"lacks {len(missing)} slice(s) of the segmented series", path,
                          "give the same series the labels were predicted on")
    return [by_uid[uid] for uid in sop_instance_uids]


# Type 2 attributes highdicom copies from the source; anonymised or hand-made series often lack them.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
          "ReferringPhysicianName", "StudyDate", "StudyTime")


def _complete_header(ds, frame_of_reference: str):  # noqa: ANN001, ANN202 - pydicom Dataset
    if not ds.get("FrameOfReferenceUID"):
        ds.FrameOfReferenceUID = frame_of_reference
    if not ds.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_dicom_seg(labels: np.ndarray, series: str | Path, path: str | Path, names: Mapping[int, str],
                    sop_instance_uids: list[str] | None = None, series_uid: str | None = None,
                    algorithm: str = "medseg",
                    series_description: str = "medseg segmentation") -> Path:
    """Write ``labels`` ``(Z, Y, X)`` (or ``(1, Z, Y, X)``), on the grid of the DICOM series ``series`` (a folder
    or .zip), as a DICOM SEG at ``path``.

    ``sop_instance_uids`` gives the source slice of each ``Z`` index (``Image.meta["sop_instance_uids"]`` of
    the series as read); by default the order of :func:`medseg.io.dicom.read_dicom_series` is used.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise MedsegError(f"a DICOM SEG needs a 3D label map, got shape {labels.shape}", path,
                          "write 2D masks as PNG or NIfTI")
    if sop_instance_uids is None:
        from medseg.io.dicom import read_dicom_series

        sop_instance_uids = read_dicom_series(series, series_uid=series_uid).meta["sop_instance_uids"]
    frame_of_reference = hd.UID()  # used only where the series has none (one frame for all its slices)
    sources = [_complete_header(ds, frame_of_reference)
               for ds in source_datasets(series, sop_instance_uids, series_uid)]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (len(sources), rows, columns):
        raise MedsegError(f"label map {labels.shape} does not match the series ({len(sources)}, {rows}, {columns})",
                          series, "predict on this series and keep the mask on its grid")
    foreground = sorted(int(v) for v in names if int(v) != 0)
    if not foreground:
        raise MedsegError("has no foreground labels to write", path, "give the label names of the model")
    present = set(np.unique(labels).tolist()) - {0}
    unknown = sorted(present - set(foreground))
    if unknown:
        raise MedsegError(f"label map holds values {unknown} without a name", path, "give names for every label")
    # highdicom wants segment numbers 1..N: label values are renumbered in order and the pixels with them
    number = {value: k + 1 for k, value in enumerate(foreground)}
    lookup = np.zeros(max(max(foreground), int(labels.max())) + 1, dtype=np.uint16)
    for value, k in number.items():
        lookup[value] = k
    pixels = lookup[labels.astype(np.int64)]
    pixels = pixels.astype(np.uint8 if len(foreground) < 256 else np.uint16)
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, version=__version__,
                                                      family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number[value], segment_label=str(names[value])[:64],
            segmented_property_category=codes.cid7150.Tissue, segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm_id,
        )
        for value in foreground
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg", manufacturer_model_name=algorithm,
        software_versions=__version__, device_serial_number="0", series_description=series_description[:64],
        omit_empty_frames=bool(present),  # an all-empty SEG keeps its frames: highdicom needs one
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
