"""A DICOMweb worker: find a study's series (QIDO-RS), fetch them (WADO-RS), segment each with
:func:`~medseg.pacs.segment.segment_series`, store the SEG into the same study (STOW-RS) and confirm it is there.

    worker = DicomWebWorker(DICOMwebClient("http://pacs/dicom-web"), {"liver": predictor})
    outcomes = worker.run_study("1.2.840...")        # one SeriesOutcome a series: segmented, skipped or failed

With ``formats=("seg", "rtstruct")`` an RTSTRUCT of the same prediction is stored (and confirmed) beside the SEG.

A series is skipped when it is not an image series (SEG, SR, ...), when the rules give it no model, or when a SEG
made by medseg (segment algorithm "medseg") already references it, so running the worker again on a study does
nothing twice. A 200 from STOW-RS is not taken as proof: the new SEG must be found by QIDO-RS before the series
counts as segmented. A failure on one series is that series' outcome; the others still run. Outcomes name series
by :func:`~medseg.pacs.segment.short_hash`, never by patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydicom.dataset import Dataset

from medseg.errors import MedsegError
from medseg.pacs.rules import RuleSet
from medseg.pacs.segment import is_image_sop_class, segment_series_objects, short_hash

log = logging.getLogger("medseg.pacs")

SEG_ALGORITHM = "medseg"  # SegmentAlgorithmName of the SEGs medseg stores: how a rerun knows them
# WADO-RS in the stored transfer syntax: medseg decodes JPEG, JPEG-LS and JPEG 2000 itself (pylibjpeg), while the
# default (uncompressed) makes the server transcode, which Debian's Orthanc cannot for JPEG 2000 (HTTP 500)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
_SERIES_FIELDS = ("Modality", "SeriesDescription", "BodyPartExamined", "SeriesInstanceUID")


@dataclass
class SeriesOutcome:
    series: str  # short hash of the SeriesInstanceUID
    status: str  # "segmented", "skipped" or "failed"
    detail: str = ""
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def header_of(qido: Mapping[str, Any]) -> Dataset:
    """A QIDO-RS result (DICOM JSON) as a pydicom header, for the rules and the checks."""
    return Dataset.from_json(dict(qido), bulk_data_uri_handler=_no_bulk_data)


def _no_bulk_data(*_: Any) -> bytes:
    """Headers only: bulk data (pixels) named by URI in a metadata answer is not fetched."""
    return b""


class DicomWebWorker:
    """Segments the series of studies on a DICOMweb server (see the module docstring). ``client`` is a
    ``dicomweb_client.DICOMwebClient``; ``models`` maps names (as the rules use them) to predictors."""

    def __init__(self, client: Any, models: Mapping[str, Any], rules: RuleSet | None = None,
                 label_codes: Mapping | None = None, formats: Sequence[str] = ("seg",)) -> None:
        if not models:
            raise MedsegError("no model to run", fix="give at least one bundle")
        self.client, self.models, self.label_codes = client, dict(models), label_codes
        self.formats = tuple(formats)  # what each series gives: "seg" and/or "rtstruct"
        self.rules = rules or RuleSet.everything_to(next(iter(self.models)))

    def studies_since(self, date: str) -> list[str]:
        """StudyInstanceUIDs of the studies on or after ``date`` (YYYYMMDD)."""
        found = self.client.search_for_studies(search_filters={"StudyDate": f"{date}-"}, get_remaining=True)
        return [str(header_of(s).StudyInstanceUID) for s in found]

    def run_study(self, study: str) -> list[SeriesOutcome]:
        """Segment every image series of ``study`` that needs it; one outcome a series."""
        series = [header_of(s) for s in self.client.search_for_series(study_instance_uid=study, get_remaining=True)]
        done = self.segmented_series(study, series)
        return [self._run_series(study, header, done) for header in series]

    def segmented_series(self, study: str, series: Iterable[Dataset]) -> set[str]:
        """SeriesInstanceUIDs that a medseg SEG in ``study`` references already."""
        referenced: set[str] = set()
        for header in series:
            if str(header.get("Modality", "")) != "SEG":
                continue
            for meta in self.client.retrieve_series_metadata(study, str(header.SeriesInstanceUID)):
                seg = header_of(meta)
                algorithms = {str(s.get("SegmentAlgorithmName", "")) for s in seg.get("SegmentSequence", [])}
                if SEG_ALGORITHM in algorithms:
                    referenced |= {str(r.SeriesInstanceUID) for r in seg.get("ReferencedSeriesSequence", [])}
        return referenced

    def _run_series(self, study: str, header: Dataset, done: set[str]) -> SeriesOutcome:
        uid = str(header.SeriesInstanceUID)
        outcome = SeriesOutcome(short_hash(uid), "skipped")
        if str(header.get("Modality", "")) in ("SEG", "SR", "RTSTRUCT", "PR", "KO", "RTPLAN", "RTDOSE"):
            outcome.detail = f"not an image series ({header.get('Modality')})"
            return outcome
        if uid in done:
            outcome.detail = "a medseg SEG references it already"
            return outcome
        model = self.rules.choose(header)
        if model is None:
            outcome.detail = "no rule gives it a model"
            return outcome
        outcome.model = model
        try:
            datasets = [d for d in self.client.retrieve_series(study, uid, media_types=ANY_TRANSFER_SYNTAX)
                        if is_image_sop_class(str(d.SOPClassUID))]
            if not datasets:
                raise MedsegError("holds no image instances", outcome.series)
            objects = segment_series_objects(datasets, self.models[model], self.formats, self.label_codes)
            self.client.store_instances(objects, study_instance_uid=study)
            for stored in objects:
                self._confirm(study, stored)
        except MedsegError as error:
            outcome.status, outcome.detail = "failed", error.what
        except Exception as error:  # noqa: BLE001 - a server or network error on one series; the others go on
            log.warning("series %s failed: %s", outcome.series, type(error).__name__)
            outcome.status, outcome.detail = "failed", f"{type(error).__name__}: {str(error)[:200]}"
        else:
            outcome.status, outcome.detail = "segmented", " and ".join(
                f"{o.Modality} stored with {len(o.get('SegmentSequence', o.get('StructureSetROISequence', [])))} "
                "segment(s)" for o in objects)
        log.info("series %s: %s (%s)", outcome.series, outcome.status, outcome.detail)
        return outcome

    def _confirm(self, study: str, seg: Dataset) -> None:
        """The stored SEG (or RTSTRUCT), found again by QIDO-RS (a STOW-RS 200 alone is not proof)."""
        found = self.client.search_for_instances(study_instance_uid=study,
                                                 series_instance_uid=str(seg.SeriesInstanceUID),
                                                 search_filters={"SOPInstanceUID": str(seg.SOPInstanceUID)})
        if not found:
            raise MedsegError(f"the server answered the store but QIDO-RS does not find the {seg.Modality}",
                              fix="check the server's STOW-RS and its storage")
