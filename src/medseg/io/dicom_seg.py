"""DICOM SEG: reading one into a label map (or one channel per segment), and writing a label map as one.

* :func:`read_dicom_seg` turns a DICOM SEG into a label map (segment number ``k`` -> label ``k``) on the grid of
  its source series, or on the SEG's own grid; :func:`read_dicom_seg_segments` gives one binary channel per
  segment instead.
* :func:`write_dicom_seg` writes a predicted label map as a DICOM Segmentation that references its source series:

      write_dicom_seg(labels, "ct_series/", "case.seg.dcm", {1: "liver"})

  One segment per foreground label (numbered as the label values, named by the plan's label names), binary frames,
  one frame per source slice (empty frames omitted), same study and frame of reference as the source.
  :func:`read_dicom_seg` with ``source`` = the series gives the label map back. :func:`dicom_seg_dataset` builds
  the same SEG in memory from the source datasets (e.g. received over the network).

Segment terms (:func:`segment_terms`, SNOMED CT codes): label names (any case, ``_``/``-`` as spaces, ``left``/
``right`` as laterality modifier 7771000/24028007) in category Anatomical Structure 91723000 (DICOM CID 7150):
liver 10200004, spleen 78961009, kidney(s) 64033007, pancreas 15776009, lung(s) 39607008, heart 80891009, brain
12738006, hippocampus 5366008, prostate 41216001, bone 272673000, (blood) vessel(s) 59820001; in Morphologically
Abnormal Structure 49755003: tumour/tumor/neoplasm 108369006, lesion 52988006, (o)edema 79654002. Other names:
Tissue/Tissue 85756007, unless ``label_codes`` (the bundle's, or ``--label-codes FILE``: see
:mod:`medseg.io.label_codes`) codes them. Colours: :mod:`medseg.colours`.

Overlap rule: a label map cannot hold overlapping segments, so where segments overlap **the highest segment
number wins**. Use :func:`read_dicom_seg_segments` to keep every segment intact. FRACTIONAL segments are
binarised at 0.5.

highdicom is imported on first use, not with this module: ``python -X importtime -c "import highdicom"`` puts it
at about 2 s, and :func:`medseg.io.read_image` needs it only for SEG files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from medseg import __version__
from medseg.colours import label_colour
from medseg.errors import ImageReadError, MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_archive import DicomArchive, read_dicom_object
from medseg.io.dicom_series import image_from_slices, read_series, read_series_slices, scan_series, select_series
from medseg.io.dicom_volume import check_pixel_extents, pixel_extent, sop_instance_uid
from medseg.io.image import Image
from medseg.io.limits import ReadLimits

if TYPE_CHECKING:
    from highdicom.seg import Segmentation
    from pydicom.sr.coding import Code

    LabelCodes = Mapping[str, tuple[Code, Code, Code | None]]  # as medseg.io.label_codes (which imports this module)

__all__ = ["dicom_seg_dataset", "read_dicom_seg", "read_dicom_seg_segments", "segment_terms", "source_datasets",
           "write_dicom_seg"]

# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_MaskReader = Callable[[int], np.ndarray]  # segment number -> boolean (Z, Y, X) mask on the output grid


def read_dicom_seg(seg_path: str | Path, source: Image | str | Path | None = None) -> Image:
    """Read a DICOM SEG as a ``(1, Z, Y, X)`` label map: segment number ``k`` becomes label ``k``.

    ``source`` is the series the SEG was drawn on: an Image from
    :func:`~medseg.io.dicom_series.read_dicom_series` or the path of its folder/archive (the referenced series is
    picked when that holds several). Frames are matched to source slices by SOP Instance UID (falling back to
    plane positions), and the result has the source's geometry.
    Without ``source`` the SEG's own plane positions define the grid. Overlaps: the highest segment number
    wins (see :func:`read_dicom_seg_segments` to keep them). The dtype is uint8 below 256 segments, else
    uint16. ``meta["segment_labels"]`` maps segment number to segment label.
    """
    seg, grid, read_mask = _open_seg_on_grid(Path(seg_path), source)
    numbers = list(seg.segment_numbers)
    dtype = np.uint8 if max(numbers, default=0) < 256 else np.uint16
    labels = np.zeros(grid.shape, dtype=dtype)
    for number in sorted(numbers):  # ascending: a later (higher) segment overwrites an earlier one
        labels[read_mask(number)] = number
    return Image(labels[None], grid.spacing, grid.origin, grid.direction, _seg_meta(seg, grid, numbers))


def read_dicom_seg_segments(seg_path: str | Path, source: Image | str | Path | None = None) -> Image:
    """Read a DICOM SEG as a (S, Z, Y, X) uint8 binary stack; channel i is ``meta["segment_numbers"][i]``.

    Same grid rules as :func:`read_dicom_seg`; overlapping segments stay intact. ``meta["segment_labels"]``
    maps segment number to label and ``meta["segment_names"]`` lists the labels in channel order.
    """
    seg, grid, read_mask = _open_seg_on_grid(Path(seg_path), source)
    numbers = sorted(seg.segment_numbers)
    stack = np.zeros((len(numbers), *grid.shape), dtype=np.uint8)
    for channel, number in enumerate(numbers):
        stack[channel] = read_mask(number)
    meta = _seg_meta(seg, grid, numbers)
    meta["segment_names"] = [meta["segment_labels"][n] for n in numbers]
    return Image(stack, grid.spacing, grid.origin, grid.direction, meta)


def _open_seg_on_grid(seg_path: Path, source: Image | str | Path | None) -> tuple[Segmentation, Image, _MaskReader]:
    """The SEG, the output grid (an Image whose array is unused) and a per-segment mask reader on it."""
    seg = _load_seg(seg_path)
    if source is None:
        return seg, *_seg_own_grid(seg, seg_path)
    grid = source if isinstance(source, Image) else _read_referenced_series(seg, Path(source))
    read_mask = _masks_by_uid(seg, grid, seg_path) or _masks_by_position(seg, grid, seg_path)
    return seg, grid, read_mask


def _load_seg(path: Path) -> Segmentation:
    """Parse a DICOM SEG with highdicom."""
    import highdicom as hd  # on first use, see the module docstring

    dataset = read_dicom_object(path, "SEG", "a DICOM SEG", "read image series with read_dicom_series")
    extent = pixel_extent(dataset, str(path))  # frames are decoded by highdicom: size them first
    check_pixel_extents([(str(path), path.stat().st_size, extent)], "DICOM SEG", path, ReadLimits())
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:  # highdicom validates many attributes, each with its own error
        raise ImageReadError(
            f"invalid DICOM SEG ({type(exc).__name__}: {exc})", path, "re-export the segmentation"
        ) from None


def _seg_meta(seg: Segmentation, grid: Image, numbers: list[int]) -> dict:
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    referenced = sorted({series for _, series, _ in seg.get_source_image_uids()})
    return {
        "format": "dicom-seg",
        "segment_labels": labels,
        "segment_numbers": list(numbers),
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "referenced_series_instance_uids": referenced,
        "source_series_instance_uid": grid.meta.get("series_instance_uid"),
    }


def _read_referenced_series(seg: Segmentation, source: Path) -> Image:
    """Read the series of ``source`` that the SEG references (or its only image series), scanning it once."""
    referenced = {series for _, series, _ in seg.get_source_image_uids()}
    with DicomArchive(source) as archive:
        found = scan_series(archive)
        chosen = next((s for s in found if not s.info.is_seg and s.info.series_instance_uid in referenced), None)
        return read_series(archive, chosen or select_series(found, archive.path))


def _fractional_to_bool(pixels: np.ndarray) -> np.ndarray:
    """Binary segments are 0/1; fractional ones (rescaled to 0..1) are cut at 0.5."""
    return pixels >= 0.5 if np.issubdtype(pixels.dtype, np.floating) else pixels > 0


def _masks_by_uid(seg: Segmentation, grid: Image, seg_path: Path) -> _MaskReader | None:
    """Map SEG frames to the grid's slices by SOP Instance UID; None when the SEG references none of them."""
    uids = list(grid.meta.get("sop_instance_uids") or [])
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    if len(uids) != grid.shape[0] or not referenced.intersection(uids):
        return None
    if (int(seg.Rows), int(seg.Columns)) != grid.shape[1:]:
        raise ImageReadError(
            f"SEG frames are {seg.Rows}x{seg.Columns} but the source slices are "
            f"{grid.shape[1]}x{grid.shape[2]}",
            seg_path,
            "give the series the segmentation was made on",
        )

    def read_mask(number: int) -> np.ndarray:
        pixels = seg.get_pixels_by_source_instance(
            uids,
            segment_numbers=[number],
            ignore_spatial_locations=True,  # many SEGs omit SpatialLocationsPreserved; sizes checked above
            assert_missing_frames_are_empty=True,  # slices the SEG does not reference are empty
        )
        return _fractional_to_bool(pixels[..., 0])

    return read_mask


def _seg_own_grid(seg: Segmentation, seg_path: Path) -> tuple[Image, _MaskReader]:
    """The SEG's own regular grid from its plane positions, slices ascending along the normal."""
    try:
        template = seg.get_volume(segment_numbers=[seg.segment_numbers[0]])
    except Exception as exc:  # highdicom: ValueError/RuntimeError when frames do not form a regular volume
        raise ImageReadError(f"SEG frames do not form a regular 3D grid ({type(exc).__name__}: {exc})", seg_path,
                             "pass the source series (source=...) to map frames by their referenced slices") from None
    grid, flip = _volume_geometry(template.affine, template.spatial_shape)

    def read_mask(number: int) -> np.ndarray:
        pixels = seg.get_volume(segment_numbers=[number]).array[..., 0]
        return _fractional_to_bool(pixels[::-1] if flip else pixels)

    return grid, read_mask


def _volume_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Image, bool]:
    """A voxel-less Image with the LPS geometry of a highdicom (slice, row, column) affine, and whether z was
    flipped.

    The slice axis is flipped when needed so that z runs along row cosine x column cosine, as in
    :func:`~medseg.io.dicom_series.read_dicom_series`.
    """
    slice_step, row_step, column_step = (affine[:3, axis] for axis in range(3))
    origin = affine[:3, 3].copy()
    flip = float(np.dot(slice_step, np.cross(column_step, row_step))) < 0
    if flip:
        origin = origin + (shape[0] - 1) * slice_step
        slice_step = -slice_step
    steps = np.stack([column_step, row_step, slice_step], axis=1)  # columns: x, y, z
    spacing = np.linalg.norm(steps, axis=0)
    direction = steps / spacing[None, :]
    placeholder = np.broadcast_to(np.uint8(0), (1, *shape))  # a grid only: no voxel memory
    return Image(placeholder, tuple(spacing), tuple(origin), tuple(direction.ravel())), flip


def _masks_by_position(seg: Segmentation, grid: Image, seg_path: Path) -> _MaskReader:
    """Paste the SEG's own grid into ``grid`` when both share spacing and direction and the voxels line up."""
    own, read_own = _seg_own_grid(seg, seg_path)
    offset = _grid_offset(own, grid)
    if offset is None:
        raise ImageReadError("SEG references none of the source slices and its frames do not lie on the source grid",
                             seg_path, "give the series the segmentation was made on")
    window = tuple(slice(o, o + n) for o, n in zip(offset, own.shape, strict=True))

    def read_mask(number: int) -> np.ndarray:
        mask = np.zeros(grid.shape, dtype=bool)
        mask[window] = read_own(number)
        return mask

    return read_mask


def _grid_offset(inner: Image, outer: Image, tol: float = 1e-2) -> tuple[int, int, int] | None:
    """The (z, y, x) index of ``inner``'s first voxel in ``outer``, when ``inner`` is an aligned sub-grid."""
    compared = slice(0, 2) if inner.shape[0] == 1 else slice(0, 3)  # one slice: its z spacing is arbitrary
    if not (
        np.allclose(inner.spacing[compared], outer.spacing[compared], rtol=1e-3)
        and np.allclose(inner.direction, outer.direction, atol=1e-3)
    ):
        return None
    index_xyz = np.linalg.solve(outer.index_to_world()[:3, :3], np.subtract(inner.origin, outer.origin))
    rounded = np.round(index_xyz)
    if np.abs(index_xyz - rounded).max() > tol:
        return None
    offset = tuple(int(v) for v in rounded[::-1])
    inside = all(o >= 0 and o + n <= m for o, n, m in zip(offset, inner.shape, outer.shape, strict=True))
    return offset if inside else None


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def source_datasets(series: str | Path, sop_instance_uids: list[str] | None = None,
                    series_uid: str | None = None) -> list[Dataset]:
    """The datasets (pixels included) of the image series in the folder or .zip ``series``, in the order of
    ``sop_instance_uids`` when given, else in the slice order of
    :func:`~medseg.io.dicom_series.read_dicom_series` (the series is then checked as that reads it)."""
    with DicomArchive(series) as archive:
        chosen = select_series(scan_series(archive), archive.path, series_uid)
        slices = read_series_slices(archive, chosen)
        if sop_instance_uids is None:
            sop_instance_uids = image_from_slices(slices, chosen, archive.path).meta["sop_instance_uids"]
    by_uid = {sop_instance_uid(ds): ds for _, ds in slices}
    missing = [uid for uid in sop_instance_uids if uid not in by_uid]
    if missing:
        raise MedsegError(f"lacks {len(missing)} slice(s) of the segmented series", Path(series),
                          "give the same series the labels were predicted on")
    return [by_uid[uid] for uid in sop_instance_uids]


# Type 2 attributes highdicom copies from the source; anonymised or hand-made series often lack them.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
          "ReferringPhysicianName", "StudyDate", "StudyTime")


def _complete_header(ds: Dataset, frame_of_reference: str) -> Dataset:
    meta = getattr(ds, "file_meta", None) or Dataset()  # some exports keep the SOP UIDs in the file meta only
    defaults = {"FrameOfReferenceUID": frame_of_reference, "SpecificCharacterSet": "ISO_IR 100",
                "SOPClassUID": meta.get("MediaStorageSOPClassUID"), "SOPInstanceUID": sop_instance_uid(ds)}
    for keyword, value in [*defaults.items(), *((k, "") for k in _TYPE2 if k not in ds)]:
        if not ds.get(keyword) and (value or keyword not in ds):
            setattr(ds, keyword, value)
    return ds


def write_dicom_seg(labels: np.ndarray, series: str | Path, path: str | Path, names: Mapping[int, str],
                    sop_instance_uids: list[str] | None = None, series_uid: str | None = None,
                    algorithm: str = "medseg", series_description: str = "medseg segmentation",
                    label_codes: LabelCodes | None = None) -> Path:
    """Write ``labels`` ``(Z, Y, X)`` (or ``(1, Z, Y, X)``), on the grid of the DICOM series ``series`` (a folder
    or .zip), as a DICOM SEG at ``path`` (see :func:`dicom_seg_dataset`). ``sop_instance_uids`` gives the source
    slice of each ``Z`` index (``Image.meta["sop_instance_uids"]`` of the series as read); by default the order of
    :func:`~medseg.io.dicom_series.read_dicom_series` is used."""
    seg = dicom_seg_dataset(labels, source_datasets(series, sop_instance_uids, series_uid), names, algorithm,
                            series_description, label_codes, where=series)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def dicom_seg_dataset(labels: np.ndarray, sources: list[Dataset], names: Mapping[int, str],
                      algorithm: str = "medseg", series_description: str = "medseg segmentation",
                      label_codes: LabelCodes | None = None, where: str | Path | None = None) -> Segmentation:
    """The DICOM SEG (a pydicom Dataset) of ``labels`` ``(Z, Y, X)`` drawn on ``sources``, the slice datasets in
    ``Z`` order. One segment per named foreground label: coded by :func:`segment_terms` (``label_codes``
    first), coloured from medseg's palette, marked AUTOMATIC by ``algorithm`` at medseg's version. Study, frame
    of reference and patient come from the sources; every source instance is referenced, frame by frame."""
    import highdicom as hd  # on first use, see the module docstring
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    labels = labels[0] if labels.ndim == 4 and labels.shape[0] == 1 else labels
    if labels.ndim != 3:
        raise MedsegError(f"a DICOM SEG needs a 3D label map, got shape {labels.shape}", where,
                          "write 2D masks as PNG or NIfTI")
    frame_of_reference = hd.UID()  # used only where the series has none (one frame for all its slices)
    sources = [_complete_header(ds, frame_of_reference) for ds in sources]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (len(sources), rows, columns):
        raise MedsegError(f"label map {labels.shape} does not match the series ({len(sources)}, {rows}, {columns})",
                          where, "predict on this series and keep the mask on its grid")
    foreground = sorted(int(v) for v in names if int(v) != 0)
    if not foreground:
        raise MedsegError("has no foreground labels to write", where, "give the label names of the model")
    present = set(np.unique(labels).tolist()) - {0}
    unknown = sorted(present - set(foreground))
    if unknown:
        raise MedsegError(f"label map holds values {unknown} without a name", where, "give names for every label")
    # highdicom wants segment numbers 1..N: label values are renumbered in order and the pixels with them
    number = {value: k + 1 for k, value in enumerate(foreground)}
    lookup = np.zeros(max(*foreground, int(labels.max())) + 1, dtype=np.uint8 if len(foreground) < 256 else np.uint16)
    lookup[foreground] = np.arange(1, len(foreground) + 1)
    pixels = lookup[labels.astype(np.int64)]
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, version=__version__,
                                                      family=codes.cid7162.ArtificialIntelligence)
    descriptions = [_segment_description(number[value], value, str(names[value]), algorithm_id, label_codes)
                    for value in foreground]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg", manufacturer_model_name=algorithm,
        software_versions=__version__, device_serial_number="0", series_description=series_description[:64],
        omit_empty_frames=bool(present),  # an all-empty SEG keeps its frames: highdicom needs one
    )


# Label name -> (CID 7150 category, SCT type), keywords of pydicom's DICOM code dictionary (codes in the module doc).
_ANATOMY, _ABNORMAL = "AnatomicalStructure", "MorphologicallyAbnormalStructure"
_TERMS = {
    **{name: (_ANATOMY, name.title()) for name in ("liver", "spleen", "kidney", "pancreas", "lung", "heart", "brain",
                                                   "hippocampus", "prostate", "bone")},
    "kidneys": (_ANATOMY, "Kidney"), "lungs": (_ANATOMY, "Lung"),
    **{name: (_ANATOMY, "BloodVessel") for name in ("vessel", "vessels", "blood vessel", "blood vessels")},
    **{name: (_ABNORMAL, "Neoplasm") for name in ("tumour", "tumor", "neoplasm", "liver tumour", "liver tumor")},
    "lesion": (_ABNORMAL, "Lesion"), "edema": (_ABNORMAL, "Edema"), "oedema": (_ABNORMAL, "Edema"),
}


def segment_terms(name: str, label_codes: LabelCodes | None = None) -> tuple[Code, Code, Code | None]:
    """(category, type, laterality or None) of a label name: ``label_codes`` (any case) first, then the table
    (where codes come from: :mod:`medseg.io.label_codes`)."""
    from pydicom.sr.codedict import codes

    given = {key.lower(): value for key, value in (label_codes or {}).items()}
    if name.lower() in given:
        return given[name.lower()]
    words = name.lower().replace("_", " ").replace("-", " ").split()
    side = next((word for word in words if word in ("left", "right")), None)
    known = _TERMS.get(" ".join(word for word in words if word not in ("left", "right")))
    if known is None:
        return codes.cid7150.Tissue, codes.SCT.Tissue, None
    modifier = getattr(codes.SCT, side.title()) if side else None
    return getattr(codes.cid7150, known[0]), getattr(codes.SCT, known[1]), modifier


def _segment_description(number: int, value: int, name: str, algorithm: object, codes: LabelCodes | None) -> Dataset:
    import highdicom as hd

    category, kind, modifier = segment_terms(name, codes)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=category,
        segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*bytes.fromhex(label_colour(value)[1:])))
    if modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)]
    return description
