"""One job shared by every PACS transport: the slice datasets of one series in, a DICOM SEG dataset out.

    seg = segment_series(datasets, Predictor(load_bundle("run/bundle")))   # pydicom Datasets, e.g. from C-STORE
    seg.save_as("seg.dcm")                                                 # or C-STORE / STOW-RS it

The datasets are read in memory, as :func:`~medseg.io.dicom_series.read_dicom_series` reads files: the same
consistency checks, slice order and LPS geometry, and its refusal of duplicate positions and non-uniform slice
gaps. On top of that a series a model cannot be trusted on, or a SEG cannot describe, is refused: a gantry-tilted
series (slices shifted in their own plane from one to the next, or a non-zero GantryDetectorTilt), slices without
position or orientation, multi-frame images, and SOP classes that are not images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medseg.errors import MedsegError
from medseg.io.dicom_archive import ArchiveMember
from medseg.io.dicom_seg import dicom_seg_dataset
from medseg.io.dicom_series import DicomSeries, DicomSeriesInfo, image_from_slices
from medseg.io.dicom_volume import (
    check_consistent_slices,
    check_pixel_extents,
    malformed_attributes,
    pixel_extent,
    sort_slices,
)
from medseg.io.image import Image
from medseg.io.limits import ReadLimits

if TYPE_CHECKING:
    from medseg.infer.predict import Predictor
    from medseg.io.dicom_seg import LabelCodes

__all__ = ["OUTPUT_FORMATS", "check_untilted", "is_image_sop_class", "segment_series", "segment_series_objects",
           "series_image", "short_hash"]

_TILT_TOLERANCE_MM = 0.01  # in-plane drift of a slice position allowed, per mm along the normal (0.6 degree)


def short_hash(uid: str) -> str:
    """8 hex digits standing for a UID in logs and messages (no patient data, still traceable)."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:8]


def is_image_sop_class(uid: str) -> bool:
    """True for single-frame image storage SOP classes (CT, MR, PET, ...); False for SR, SEG, RTSTRUCT, etc."""
    name = pydicom.uid.UID(str(uid)).name
    return name.endswith("Image Storage") and not name.startswith(("Enhanced", "Legacy Converted"))


def series_image(datasets: Sequence[Dataset], limits: ReadLimits | None = None) -> tuple[Image, list[Dataset]]:
    """The series of ``datasets`` as :func:`~medseg.io.dicom_series.read_dicom_series` would read it from files,
    and the datasets in its slice order. Refuses mixed series, non-images and tilted or irregular series."""
    if not datasets:
        raise MedsegError("no instances received for the series", None, "send the series again")
    where = f"series {short_hash(datasets[0].get('SeriesInstanceUID', ''))}"
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) > 1:
        raise MedsegError(f"the instances belong to {len(series_uids)} series", where, "send one series at a time")
    for ds in datasets:
        _check_instance(ds, where)
    root = Path(where)
    members = [ArchiveMember(f"instance {k}", root, False, len(ds.PixelData)) for k, ds in enumerate(datasets)]
    slices = list(zip(members, datasets, strict=True))
    with malformed_attributes(where, "received instances"):
        extents = tuple(pixel_extent(ds, m.location) for m, ds in slices)
        check_pixel_extents([(m.location, m.size, e) for m, e in zip(members, extents, strict=True)], where, root,
                            limits or ReadLimits())
        check_consistent_slices(slices, where)
        slices = sort_slices(slices)
        check_untilted([ds for _, ds in slices], where)
        first = slices[0][1]
        info = DicomSeriesInfo(str(first.get("SeriesInstanceUID", "")), str(first.get("Modality", "")),
                               str(first.get("SeriesDescription", "")), len(slices), len(slices), int(first.Rows),
                               int(first.Columns), tuple(m.name for m, _ in slices))
        image = image_from_slices(slices, DicomSeries(info, tuple(m for m, _ in slices), extents), root)
    return image, [ds for _, ds in slices]


def _check_instance(ds: Dataset, where: str) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if not is_image_sop_class(sop_class):
        raise MedsegError(f"holds a {pydicom.uid.UID(sop_class).name or 'non-image'} object, not a single-frame image",
                          where, "send image series (CT, MR, ...) only")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelData", "Rows") if not ds.get(k)]
    if missing:
        raise MedsegError(f"an instance lacks {', '.join(missing)}", where,
                          "a segmentation needs slices placed in the patient: re-export the series with geometry")
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise MedsegError("multi-frame images are not supported yet", where, "send single-frame images")


def check_untilted(datasets: Sequence[Dataset], where: str = "series") -> None:
    """Refuse a gantry-tilted series: each slice must lie straight along the normal of its plane from the first.

    A tilted CT has slices sheared in their own plane, so a volume built along the normal (what every reader
    and the model assume) would misplace every voxel; DICOM SEG frames would not line up with the source either.
    """
    tilt = datasets[0].get("GantryDetectorTilt")
    if tilt not in (None, "") and abs(float(tilt)) > 1e-3:
        raise MedsegError(f"is gantry-tilted (GantryDetectorTilt {float(tilt):g} degrees)", where,
                          "resample it to an untilted volume first (e.g. dcm2niix's tilt correction)")
    if len(datasets) < 2:
        return
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    offsets = positions - positions[0]
    along = offsets @ normal
    drift = np.linalg.norm(offsets - along[:, None] * normal[None], axis=1)
    if drift.max() > _TILT_TOLERANCE_MM * max(float(np.abs(along).max()), 1.0):
        angle = float(np.degrees(np.arctan2(drift[-1], abs(along[-1]) or 1.0)))
        raise MedsegError(f"is gantry-tilted or sheared (slices drift {drift.max():.3g} mm in plane, about "
                          f"{angle:.1f} degrees)", where,
                          "resample it to an untilted volume first (e.g. dcm2niix's tilt correction)")


def segment_series(datasets: Sequence[Dataset], predictor: Predictor, label_codes: LabelCodes | None = None,
                   algorithm: str = "medseg", limits: ReadLimits | None = None) -> Dataset:
    """Predict the series of ``datasets`` (any order) with ``predictor`` (or a served model holding one) and
    give its DICOM SEG: one segment per label of the model, coded by ``label_codes``, then the bundle's plan,
    then :func:`medseg.io.dicom_seg.segment_terms` (:mod:`medseg.io.label_codes`); same study and frame of
    reference, every source instance referenced."""
    return segment_series_objects(datasets, predictor, ("seg",), label_codes, algorithm, limits)[0]


OUTPUT_FORMATS = ("seg", "rtstruct")


def segment_series_objects(datasets: Sequence[Dataset], predictor: Predictor, formats: Sequence[str] = ("seg",),
                           label_codes: LabelCodes | None = None, algorithm: str = "medseg",
                           limits: ReadLimits | None = None) -> list[Dataset]:
    """One prediction of the series, written as each of ``formats`` in turn: ``"seg"`` (as :func:`segment_series`)
    and ``"rtstruct"`` (an RT Structure Set, :func:`medseg.io.dicom_rtstruct.rtstruct_dataset`, for radiotherapy
    planning systems)."""
    from medseg.io.dicom_rtstruct import rtstruct_dataset

    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown or not formats:
        raise MedsegError(f"unknown output format(s) {unknown or 'none'}", None, f"choose from {OUTPUT_FORMATS}")
    predictor = getattr(predictor, "predictor", predictor)  # medseg.serve's Served wraps one
    image, ordered = series_image(datasets, limits)
    where = f"series {short_hash(image.meta['series_instance_uid'])}"
    labels = predictor.predict(image, where).labels.array
    names = predictor.plan.disk_labels
    description = f"{algorithm} {predictor.plan.dataset_name}"[:64]
    objects = []
    for fmt in formats:
        if fmt == "seg":
            objects.append(dicom_seg_dataset(labels, ordered, names, algorithm=algorithm,
                                             series_description=description,
                                             label_codes=predictor.plan.segment_codes(label_codes), where=where))
        else:
            objects.append(rtstruct_dataset(labels, ordered, names, series_description=description, where=where))
    return objects
