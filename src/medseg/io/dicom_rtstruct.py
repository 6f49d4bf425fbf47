"""DICOM RT Structure Set (RTSTRUCT): writing a label map as one, and reading one back into a label map.

* :func:`write_rtstruct` writes a predicted label map as an RTSTRUCT that references its source series:

      write_rtstruct(labels, "ct_series/", "case.rtstruct.dcm", {1: "liver", 2: "liver tumour"})

  One ROI per foreground label (ROI number = label value, named by the label names, coloured from medseg's
  palette, RTROIInterpretedType GTV for names with tumour/tumor/lesion/neoplasm, else ORGAN, generated
  AUTOMATIC). Each slice's mask becomes CLOSED_PLANAR contours in patient (LPS) millimetres, every contour linked
  to its slice's SOP Instance UID. Same study and frame of reference as the source; the
  ReferencedFrameOfReferenceSequence lists every source instance.
* :func:`read_rtstruct` rasterises the contours back onto the grid of the series.

Contours follow the pixel edges (the "cracks" between foreground and background pixels, straight runs merged),
so a contour encloses exactly the centres of its pixels: holes are separate contours (inner boundaries) and a
slice's contours combine by the even-odd rule, as most RTSTRUCT readers do. Rasterising with pixel centres
inside the polygons (:func:`read_rtstruct`) gives the label map back unchanged. Overlaps on reading: the highest
ROI number wins, as in :func:`~medseg.io.dicom_seg.read_dicom_seg`.

Only pydicom and numpy are needed: no optional extra.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from medseg import __version__
from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.io import dicom_encoding as encode
from medseg.io.atomic import atomic_path
from medseg.io.dicom_archive import DicomArchive, read_dicom_object
from medseg.io.dicom_seg import source_datasets
from medseg.io.dicom_series import image_from_slices, read_series_slices, scan_series, select_series
from medseg.io.dicom_volume import sop_instance_uid
from medseg.io.image import Image

__all__ = ["label_contours", "read_rtstruct", "rtstruct_dataset", "write_rtstruct"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # the conventional ReferencedSOPClassUID of RTReferencedStudySequence
_GTV_WORDS = ("tumour", "tumor", "lesion", "neoplasm")
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")

# --------------------------------------------------------------------------------------------------
# Contours of a 2D mask
# --------------------------------------------------------------------------------------------------

# Directed pixel edges with the foreground on their right (rows down, columns right): (row step, column step)
_EAST, _SOUTH, _WEST, _NORTH = (0, 1), (1, 0), (0, -1), (-1, 0)


def label_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundaries of a 2D boolean mask as ``(N, 2)`` float arrays of (row, column) pixel coordinates
    (pixel centres at whole numbers, so vertices lie on half-integers). Outer boundaries run clockwise on screen,
    holes anticlockwise; foreground is 4-connected (pixels touching at a corner get separate contours). The
    even-odd fill of all contours is ``mask`` exactly."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    inner = padded[1:-1, 1:-1]
    # corner (r, c) of the padded grid is the top-left corner of padded pixel (r, c)
    for (dr, dc), start, neighbour in (
        (_EAST, (0, 0), padded[:-2, 1:-1]), (_SOUTH, (0, 1), padded[1:-1, 2:]),
        (_WEST, (1, 1), padded[2:, 1:-1]), (_NORTH, (1, 0), padded[1:-1, :-2]),
    ):
        rows, cols = np.nonzero(inner & ~neighbour)
        for r, c in zip((rows + 1 + start[0]).tolist(), (cols + 1 + start[1]).tolist(), strict=True):
            outgoing.setdefault((r, c), []).append((dr, dc))
    contours = []
    while outgoing:
        start = next(iter(outgoing))
        contours.append(_trace(outgoing, start) - 1.5)  # padded corner -> pixel coordinate of the unpadded mask
    return contours


def _trace(outgoing: dict[tuple[int, int], list[tuple[int, int]]], start: tuple[int, int]) -> np.ndarray:
    """Follow (and remove) edges from ``start`` until the loop closes; the corners where the direction turns.

    At a pinch corner (two outgoing edges) the path turns right, so pixels touching only at a corner get separate
    loops; the loop closes at ``start`` when that rule would take its first edge again."""
    first = _step(outgoing, start, None)
    point, heading, corners = (start[0] + first[0], start[1] + first[1]), first, [start]
    while True:
        if point == start and _turn(outgoing.get(point, []) + [first], heading) == first:
            break
        step = _step(outgoing, point, heading)
        if step != heading:
            corners.append(point)
        heading = step
        point = (point[0] + step[0], point[1] + step[1])
    if heading == first and len(corners) > 1:
        corners = corners[1:]  # the start lay on a straight run: it is not a corner
    return np.asarray(corners, dtype=float)


def _turn(choices: list[tuple[int, int]], heading: tuple[int, int] | None) -> tuple[int, int]:
    right = None if heading is None else (heading[1], -heading[0])
    return right if right in choices else choices[0]


def _step(outgoing: dict[tuple[int, int], list[tuple[int, int]]], point: tuple[int, int],
          heading: tuple[int, int] | None) -> tuple[int, int]:
    choices = outgoing[point]
    step = _turn(choices, heading)
    choices.remove(step)
    if not choices:
        del outgoing[point]
    return step


def fill_contours(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The even-odd fill of (row, column) polygons on a ``shape`` grid: pixels whose centre is inside an odd number
    of polygons."""
    filled = np.zeros(shape, dtype=bool)
    columns = np.arange(shape[1], dtype=float)
    for polygon in contours:
        if len(polygon) < 3:
            continue
        start, end = polygon, np.roll(polygon, -1, axis=0)
        low = max(int(np.ceil(polygon[:, 0].min())), 0)
        high = min(int(np.floor(polygon[:, 0].max())), shape[0] - 1)
        for row in range(low, high + 1):
            crossing = (start[:, 0] <= row) != (end[:, 0] <= row)
            if not crossing.any():
                continue
            r0, c0, r1, c1 = start[crossing, 0], start[crossing, 1], end[crossing, 0], end[crossing, 1]
            xs = np.sort(c0 + (row - r0) * (c1 - c0) / (r1 - r0))
            filled[row] ^= np.searchsorted(xs, columns) % 2 == 1
    return filled


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_rtstruct(labels: np.ndarray, series: str | Path, path: str | Path, names: Mapping[int, str],
                   sop_instance_uids: list[str] | None = None, series_uid: str | None = None,
                   series_description: str = "medseg segmentation") -> Path:
    """Write ``labels`` ``(Z, Y, X)`` (or ``(1, Z, Y, X)``), on the grid of the DICOM series ``series`` (a folder
    or .zip), as an RTSTRUCT at ``path`` (see :func:`rtstruct_dataset`). ``sop_instance_uids`` gives the source
    slice of each ``Z`` index (``Image.meta["sop_instance_uids"]``); by default the order of
    :func:`~medseg.io.dicom_series.read_dicom_series` is used."""
    dataset = rtstruct_dataset(labels, source_datasets(series, sop_instance_uids, series_uid), names,
                               series_description, where=series)
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return Path(path)


def rtstruct_dataset(labels: np.ndarray, sources: list[Dataset], names: Mapping[int, str],
                     series_description: str = "medseg segmentation", where: str | Path | None = None) -> Dataset:
    """The RTSTRUCT (a pydicom Dataset with file meta) of ``labels`` ``(Z, Y, X)`` drawn on ``sources``, the
    slice datasets in ``Z`` order; one ROI per named foreground label."""
    labels = _checked_labels(labels, sources, names, where)
    first = sources[0]
    frame = str(first.get("FrameOfReferenceUID") or generate_uid())
    refs = [(str(ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID), sop_instance_uid(ds))
            for ds in sources]
    ds = _header(first, frame, series_description)
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(first, frame, refs)]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for value in sorted(int(v) for v in names if int(v) != 0):
        name = str(names[value])
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = value, frame, name[:64]
        roi.ROIGenerationAlgorithm, roi.ROIGenerationDescription = "AUTOMATIC", f"medseg {__version__}"
        ds.StructureSetROISequence.append(roi)
        contour = Dataset()
        contour.ROIDisplayColor = list(bytes.fromhex(label_colour(value)[1:]))
        contour.ReferencedROINumber = value
        contours = _slice_contours(labels == value, sources, refs)
        if contours:  # an empty ROI has no ContourSequence: the module wants 1-n items when it is present
            contour[_CONTOUR_SEQUENCE] = _contour_sequence(contours)
            # the item is written in implicit VR little endian (see _header); saying so lets pydicom copy the
            # encoded sequence as it is instead of decoding it first. "iso8859" is pydicom's name for the default
            # character set, which an item without its own SpecificCharacterSet has
            contour.set_original_encoding(True, True, "iso8859")
        ds.ROIContourSequence.append(contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = value, value
        observation.ROIObservationLabel = name[:16]
        gtv = any(word in name.lower() for word in _GTV_WORDS)
        observation.RTROIInterpretedType, observation.ROIInterpreter = ("GTV" if gtv else "ORGAN"), ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def _checked_labels(labels: np.ndarray, sources: list[Dataset], names: Mapping[int, str],
                    where: str | Path | None) -> np.ndarray:
    labels = np.asarray(labels)
    labels = labels[0] if labels.ndim == 4 and labels.shape[0] == 1 else labels
    if labels.ndim != 3:
        raise MedsegError(f"an RTSTRUCT needs a 3D label map, got shape {labels.shape}", where,
                          "write 2D masks as PNG or NIfTI")
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (len(sources), rows, columns):
        raise MedsegError(f"label map {labels.shape} does not match the series ({len(sources)}, {rows}, {columns})",
                          where, "predict on this series and keep the mask on its grid")
    foreground = {int(v) for v in names if int(v) != 0}
    if not foreground:
        raise MedsegError("has no foreground labels to write", where, "give the label names of the model")
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - foreground)
    if unknown:
        raise MedsegError(f"label map holds values {unknown} without a name", where, "give names for every label")
    return labels


def _header(first: Dataset, frame: str, series_description: str) -> Dataset:
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTSTRUCT_SOP_CLASS, generate_uid()
    # Implicit VR: ContourData is DS, whose explicit-VR length field is 16 bits, so a contour of more than ~4,000
    # points (a ragged organ outline on a 512x512 slice) would not fit; implicit VR has 32 bits (and is what
    # treatment planning systems themselves write)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    # a FileDataset (with its preamble) so that any writer, e.g. dicomweb-client's STOW-RS, gives a Part 10 file
    ds = FileDataset("rtstruct", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    # written as it is encoded: pydicom would otherwise re-check every element, decoding the ContourSequences
    # that _slice_contours encodes (see there)
    ds.set_original_encoding(True, True, convert_encodings("ISO_IR 192"))
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in _PATIENT_STUDY:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 9002
    ds.SeriesDescription, ds.OperatorsName = series_description[:64], ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medseg", "medseg", __version__
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
    ds.StructureSetLabel, ds.StructureSetName = "medseg", series_description[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.InstanceNumber = 1
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _referenced_frame(first: Dataset, frame: str, refs: list[tuple[str, str]]) -> Dataset:
    images = []
    for sop_class, sop_instance in refs:
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = sop_class, sop_instance
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = str(first.SeriesInstanceUID), images
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_SOP_CLASS, str(first.StudyInstanceUID)
    study.RTReferencedSeriesSequence = [series]
    item = Dataset()
    item.FrameOfReferenceUID, item.RTReferencedStudySequence = frame, [study]
    return item


def _slice_contours(mask: np.ndarray, sources: list[Dataset], refs: list[tuple[str, str]]) -> bytes:
    """The encoded items (implicit VR little endian) of a ContourSequence: one CLOSED_PLANAR contour item per
    polygon of the (Z, Y, X) mask, in its slice's patient coordinates and linked to its slice; b"" for none."""
    items = []
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist():
        to_patient = _pixel_to_patient(sources[z])
        sop_class, sop_instance = (encode.ui(uid) for uid in refs[z])
        image = encode.item(encode.element(0x0008, 0x1150, sop_class) + encode.element(0x0008, 0x1155, sop_instance))
        image_sequence = encode.element(0x3006, 0x0016, image)
        for polygon in label_contours(mask[z]):
            points = to_patient(polygon)
            data = "\\".join(["%.4f"] * points.size) % tuple(points.ravel().tolist())
            items.append(encode.item(image_sequence
                                     + encode.element(0x3006, 0x0042, encode.text("CLOSED_PLANAR"))
                                     + encode.element(0x3006, 0x0046, encode.text(str(len(points))))
                                     + encode.element(0x3006, 0x0048, encode.text(str(len(items) + 1)))
                                     + encode.element(0x3006, 0x0050, encode.text(data))))
    return b"".join(items)


def _contour_sequence(encoded_items: bytes) -> RawDataElement:
    return RawDataElement(_CONTOUR_SEQUENCE, "SQ", len(encoded_items), encoded_items, 0, True, True)


_CONTOUR_SEQUENCE = Tag(0x3006, 0x0040)


def _pixel_to_patient(ds: Dataset):
    """A function from (row, column) pixel coordinates ``(N, 2)`` to LPS millimetres ``(N, 3)`` on slice ``ds``."""
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    along_row, along_column = cosines[:3] * column_spacing, cosines[3:] * row_spacing
    return lambda rc: origin + rc[:, 1:2] * along_row + rc[:, 0:1] * along_column


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_rtstruct(path: str | Path, series: Image | str | Path) -> Image:
    """Rasterise an RTSTRUCT's closed planar contours onto ``series`` (the path of its folder/archive, or an
    Image from :func:`~medseg.io.dicom_series.read_dicom_series`) as a ``(1, Z, Y, X)`` label map: ROI number
    ``k`` becomes label ``k``, the highest number winning where ROIs overlap, and a slice's contours of one ROI
    combine by the even-odd rule (holes). A contour goes to the slice its ContourImageSequence names, else to the
    slice its plane lies on. Given as a path, each slice's own position maps contours to its pixels (right for a
    gantry-tilted series too); an Image maps them with its regular grid. ``meta["roi_names"]`` maps ROI number
    to name."""
    path = Path(path)
    ds = _load_rtstruct(path)
    grid, planes = _grid_and_planes(series, _referenced_series(ds))
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    slice_of = {uid: z for z, uid in enumerate(grid.meta.get("sop_instance_uids") or [])}
    world_to_index = np.linalg.inv(grid.index_to_world())
    shape = grid.shape
    numbers = sorted({int(item.ReferencedROINumber) for item in ds.get("ROIContourSequence", [])} | set(names))
    labels = np.zeros(shape, dtype=np.uint8 if max(numbers, default=0) < 256 else np.uint16)
    for item in sorted(ds.get("ROIContourSequence", []), key=lambda i: int(i.ReferencedROINumber)):
        polygons: dict[int, list[np.ndarray]] = {}
        for contour in item.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            z = _contour_slice(contour, _apply(world_to_index, points), slice_of)
            if 0 <= z < shape[0]:
                index = _apply(planes[z] if planes else world_to_index, points)  # (column, row, ...)
                polygons.setdefault(z, []).append(index[:, [1, 0]])
        for z, rings in polygons.items():
            labels[z][fill_contours(rings, shape[1:])] = int(item.ReferencedROINumber)
    meta = {"format": "rtstruct", "roi_names": names, "sop_instance_uid": str(ds.SOPInstanceUID),
            "source_series_instance_uid": grid.meta.get("series_instance_uid")}
    return Image(labels[None], grid.spacing, grid.origin, grid.direction, meta)


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def _referenced_series(ds: Dataset) -> set[str]:
    return {str(series.SeriesInstanceUID) for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])}


def _grid_and_planes(series: Image | str | Path, referenced: set[str]) -> tuple[Image, list[np.ndarray]]:
    """The grid, and per slice the world -> (column, row, slice) index affine of that slice's own header (none
    for an Image)."""
    if isinstance(series, Image):
        return series, []
    with DicomArchive(series) as archive:
        found = scan_series(archive)
        chosen = next((s for s in found if not s.info.is_seg and s.info.series_instance_uid in referenced), None)
        chosen = chosen or select_series(found, archive.path)
        slices = read_series_slices(archive, chosen)
        grid = image_from_slices(slices, chosen, archive.path)
    by_uid = {sop_instance_uid(ds): ds for _, ds in slices}
    planes = []
    for uid in grid.meta["sop_instance_uids"]:
        ds = by_uid[uid]
        cosines = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        affine = np.eye(4)
        affine[:3, 0], affine[:3, 1] = cosines[:3] * column_spacing, cosines[3:] * row_spacing
        affine[:3, 2] = np.cross(cosines[:3], cosines[3:]) * grid.spacing[2]
        affine[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=float)
        planes.append(np.linalg.inv(affine))
    return grid, planes


def _contour_slice(contour: Dataset, index: np.ndarray, slice_of: Mapping[str, int]) -> int:
    for image in contour.get("ContourImageSequence", []):
        z = slice_of.get(str(image.get("ReferencedSOPInstanceUID", "")))
        if z is not None:
            return z
    return int(np.round(np.median(index[:, 2])))


def _load_rtstruct(path: Path) -> Dataset:
    return read_dicom_object(path, "RTSTRUCT", "an RTSTRUCT", "read DICOM SEG files with read_dicom_seg")
