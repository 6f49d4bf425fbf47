"""Pull from a PACS (DIMSE query/retrieve): C-FIND the series, C-MOVE each to a running :class:`DicomNode`, which
segments it and C-STOREs the SEG; each SEG is then found again by C-FIND (a success status alone is not proof).

    node = DicomNode({"liver": predictor}, "MEDSEG", parse_destination("ORTHANC@pacs:4242"))
    node.start("0.0.0.0", 11112)                       # the PACS must know MEDSEG at this host and port
    puller = DicomPuller(node, parse_destination("ORTHANC@pacs:4242"))
    outcomes = puller.run_study("1.2.840...")          # one SeriesOutcome a series: segmented, skipped or failed
    node.stop()

Queries use the Study Root model: SERIES-level C-FIND of a study, or STUDY-level C-FIND on a StudyDate range for
:meth:`DicomPuller.studies_since`. The puller calls the PACS with the node's AE title, the one the PACS knows the
node by (Orthanc, for one, refuses queries and retrieves from AE titles missing from its ``DicomModalities``).

A series is skipped when it is not an image series (SEG, SR, RTSTRUCT, PR, KO, RTPLAN, RTDOSE), when its modality
is not the one asked for, when the node's rules give its C-FIND identifier no model, or when a SEG made by medseg
already references it. That last check needs the SEG's content (its SegmentSequence and ReferencedSeriesSequence),
which C-FIND does not give: the study's SEG series are fetched by C-GET on a separate association that takes the
Storage SCP role for Segmentation Storage only, kept in memory, and never sent to the node (the node would refuse
them with 0x0122). A study whose SEGs cannot be fetched that way fails its image series (closed, not open: no
duplicate SEG is stored), with a detail saying so.

Each C-MOVE waits for the node to finish the series (:meth:`DicomNode.wait_idle`); the SEG SOP Instance UIDs the
node added to ``node.sent`` meanwhile are that series' result, and must then be found by C-FIND at the node's
destination. So the node must receive nothing else while it pulls (``medseg dicom-pull`` starts its own). A C-MOVE
the PACS refuses, or one that moves no instance, is a ``failed`` outcome saying what to configure in the PACS; a
PACS that cannot be reached is a :class:`~medseg.errors.MedsegError`. Logs and outcomes name series only by
:func:`~medseg.pacs.segment.short_hash`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from medseg.errors import MedsegError
from medseg.pacs.dicomweb import SEG_ALGORITHM, SeriesOutcome
from medseg.pacs.node import Destination, DicomNode
from medseg.pacs.segment import short_hash

__all__ = ["NON_IMAGE_MODALITIES", "DicomPuller", "MoveResult", "check_date"]

log = logging.getLogger("medseg.pacs")

NON_IMAGE_MODALITIES = ("SEG", "SR", "RTSTRUCT", "PR", "KO", "RTPLAN", "RTDOSE")
_RESULT_MODALITIES = ("SEG", "RTSTRUCT")  # what the node stores: looked for when confirming
_PENDING = (0xFF00, 0xFF01)
_SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
                "NumberOfSeriesRelatedInstances")


@dataclass
class MoveResult:
    """The final answer to one C-MOVE: its status and sub-operation counts (None where the PACS gave none)."""

    status: int | None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


class DicomPuller:
    """Pulls series from ``pacs`` (a query/retrieve SCP) into ``node`` (started; see the module docstring).

    ``node_address`` (``host:port`` the node listens on) only makes messages say where the PACS must find it;
    ``timeout`` bounds the wait for one series (moved, segmented and stored), in seconds."""

    def __init__(self, node: DicomNode, pacs: Destination, node_address: str = "", timeout: float = 600.0) -> None:
        self.node, self.pacs, self.timeout = node, pacs, float(timeout)
        self.node_address = node_address or "its host and port"
        for name in ("pynetdicom", "highdicom"):  # their INFO/DEBUG lines name UIDs or dump whole datasets
            logging.getLogger(name).setLevel(logging.WARNING)

    # --- queries -------------------------------------------------------------------------------------------
    def studies_since(self, date: str) -> list[str]:
        """StudyInstanceUIDs of the studies on or after ``date`` (YYYYMMDD), by a STUDY-level C-FIND."""
        check_date(date)
        query = _identifier("STUDY", StudyDate=f"{date}-", StudyInstanceUID="")
        return [str(s.StudyInstanceUID) for s in self.find(self.pacs, query) if s.get("StudyInstanceUID")]

    def find_series(self, study: str, where: Destination | None = None) -> list[Dataset]:
        """The C-FIND identifiers of the series of ``study`` (at ``where``, default the PACS)."""
        query = _identifier("SERIES", StudyInstanceUID=study, **dict.fromkeys(_SERIES_KEYS, ""))
        return [s for s in self.find(where or self.pacs, query) if s.get("SeriesInstanceUID")]

    def find(self, where: Destination, query: Dataset) -> list[Dataset]:
        """The matches of one Study Root C-FIND at ``where``."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        matches = []
        with self._association(where, [Find]) as assoc:
            for status, identifier in assoc.send_c_find(query, Find):
                code = _status(status)
                if code in _PENDING:
                    if identifier is not None:
                        matches.append(identifier)
                elif code == 0x0000:
                    break
                else:
                    raise MedsegError(self._query_problem(where, "C-FIND", code), f"PACS {where}",
                                      self._declare_fix(where))
        return matches

    # --- one study -----------------------------------------------------------------------------------------
    def run_study(self, study: str, modality: str | None = None) -> list[SeriesOutcome]:
        """Segment every image series of ``study`` (of ``modality``, when given) that needs it; one outcome a
        series."""
        series = self.find_series(study)
        done, problem = self.segmented_series(study, series)
        return [self._run_series(study, header, done, problem, modality) for header in series]

    def segmented_series(self, study: str, series: Iterable[Dataset]) -> tuple[set[str], str | None]:
        """SeriesInstanceUIDs that a medseg SEG in ``study`` references already, by C-GET of the study's SEG
        series; and what went wrong when they could not be fetched (None when they could, or there are none)."""
        seg_series = [str(h.SeriesInstanceUID) for h in series if str(h.get("Modality", "")) == "SEG"]
        if not seg_series:
            return set(), None
        try:
            segs = self._get_segs(study, seg_series)
        except MedsegError as error:
            log.warning("study %s: cannot fetch its SEGs by C-GET: %s", short_hash(study), error.what)
            return set(), error.message
        referenced: set[str] = set()
        for seg in segs:
            algorithms = {str(s.get("SegmentAlgorithmName", "")) for s in seg.get("SegmentSequence", [])}
            if SEG_ALGORITHM in algorithms:
                referenced |= {str(r.SeriesInstanceUID) for r in seg.get("ReferencedSeriesSequence", [])}
        return referenced, None

    def _run_series(self, study: str, header: Dataset, done: set[str], problem: str | None,
                    modality: str | None) -> SeriesOutcome:
        uid, kind = str(header.SeriesInstanceUID), str(header.get("Modality", "") or "")
        outcome = SeriesOutcome(short_hash(uid), "skipped")
        if kind in NON_IMAGE_MODALITIES:
            outcome.detail = f"not an image series ({kind})"
        elif modality and kind.upper() != modality.upper():
            outcome.detail = f"modality {kind or '?'}, not {modality}"
        elif uid in done:
            outcome.detail = "a medseg SEG references it already"
        elif (model := self.node.rules.choose(header)) is None:
            outcome.detail = "no rule gives it a model"
        elif problem is not None:
            outcome.status, outcome.model = "failed", model
            outcome.detail = (f"cannot tell whether a medseg SEG references it ({problem}); not segmented, so that "
                              "no SEG is stored twice: let the PACS answer C-GET of SEG series from this AE title")
        else:
            outcome.model = model
            self._pull(study, uid, outcome)
        log.info("series %s: %s (%s)", outcome.series, outcome.status, outcome.detail)
        return outcome

    # --- one series ----------------------------------------------------------------------------------------
    def _pull(self, study: str, uid: str, outcome: SeriesOutcome) -> None:
        """C-MOVE the series to the node, wait for its SEG, and confirm it by C-FIND; sets ``outcome``."""
        sent_before, failed_before = len(self.node.sent), len(self.node.failed)
        moved: MoveResult | None = None
        try:
            moved = self.move(study, uid)
            refused = self._move_problem(moved)
        except MedsegError as error:
            refused = error.message
        # wait even after a refused move: what did come is segmented first, so that node.sent[sent_before:] is
        # this series' and no other's
        finished = self.node.wait_idle(self.timeout)
        made = self.node.sent[sent_before:]
        outcome.status = "failed"
        if refused:
            outcome.detail = refused + (f" (yet the node stored {len(made)} object(s) from what came)" if made else "")
        elif not finished:
            outcome.detail = f"the node did not finish the series within {self.timeout:g} s (it goes on)"
        elif outcome.series in self.node.failed[failed_before:]:
            outcome.detail = ("not segmented, or its SEG not delivered to "
                              f"{self.node.destination} (see the log; an undelivered SEG waits in the outbox)")
        elif not made:
            outcome.detail = "the node received the series but stored nothing (see the log)"
        else:
            self._confirm(study, made, outcome)
            if moved is not None and moved.failed:
                outcome.detail += f"; {moved.failed} instance(s) of the series did not reach the node"

    def move(self, study: str, series: str) -> MoveResult:
        """One SERIES-level C-MOVE of ``series`` to the node's AE title; the PACS' final answer."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

        query = _identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series)
        final = MoveResult(None)
        with self._association(self.pacs, [Move]) as assoc:
            for status, _ in assoc.send_c_move(query, self.node.aet, Move):
                code = _status(status)
                final = MoveResult(code, *(_count(status, k) for k in ("Completed", "Failed", "Warning")))
                if code not in _PENDING:
                    break
        return final

    def _move_problem(self, moved: MoveResult) -> str | None:
        """Why a C-MOVE brought the node nothing to segment (None when it did)."""
        declare = self._declare_fix(self.pacs)
        if moved.status is None:
            return f"the PACS gave no final answer to the C-MOVE (connection lost or timed out; {declare})"
        if moved.status == 0xA801:
            return f"the PACS does not know the move destination {self.node.aet}: {declare}"
        if moved.status in (0xA701, 0xA702):
            return f"the PACS is out of resources for the C-MOVE (status 0x{moved.status:04X}); try again later"
        if moved.status not in (0x0000, 0xB000):
            return (f"the PACS refused or could not carry out the C-MOVE (status 0x{moved.status:04X}): {declare}, "
                    "and check that it can reach the node there")
        if moved.completed == 0 or (moved.completed is None and moved.failed):
            return (f"the PACS moved no instance to the node ({moved.failed or 0} sub-operation(s) failed): check "
                    f"that the PACS reaches {self.node.aet} at {self.node_address} and that the node accepts it "
                    "(its --allow list)")
        return None

    def _confirm(self, study: str, made: Sequence[str], outcome: SeriesOutcome) -> None:
        """The node's SEGs (or RTSTRUCTs) for the series, found again by C-FIND at its destination."""
        where = self.node.destination
        try:
            found = self._result_instances(study, where)
        except MedsegError as error:
            if where == self.pacs:
                outcome.status, outcome.detail = "failed", f"stored, but the C-FIND to confirm it failed: {error.what}"
            else:  # a store-only destination need not answer C-FIND
                outcome.status = "segmented"
                outcome.detail = f"{len(made)} object(s) stored at {where}, not confirmed ({error.what})"
            return
        missing = [uid for uid in made if uid not in found]
        if missing:
            outcome.status = "failed"
            outcome.detail = (f"{where} accepted the store but C-FIND does not find {len(missing)} of the "
                              f"{len(made)} object(s); check its storage and logs")
            return
        outcome.status = "segmented"
        outcome.detail = f"{len(made)} object(s) stored at {where} and found by C-FIND in the study"

    def _result_instances(self, study: str, where: Destination) -> set[str]:
        """SOP Instance UIDs of the SEG and RTSTRUCT instances of ``study`` at ``where`` (hierarchical C-FIND:
        SERIES, then IMAGE level)."""
        uids: set[str] = set()
        for header in self.find_series(study, where):
            if str(header.get("Modality", "")) in _RESULT_MODALITIES:
                query = _identifier("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=str(header.SeriesInstanceUID),
                                    SOPInstanceUID="")
                uids |= {str(i.SOPInstanceUID) for i in self.find(where, query) if i.get("SOPInstanceUID")}
        return uids

    # --- the SEGs of a study, by C-GET ---------------------------------------------------------------------
    def _get_segs(self, study: str, series: Sequence[str]) -> list[Dataset]:
        """The SEG instances of ``series`` (of ``study``), by C-GET on one association, in memory only."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role, evt
        from pynetdicom.sop_class import SegmentationStorage
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

        received: list[Dataset] = []

        def on_store(event: Any) -> int:
            received.append(event.dataset)
            return 0x0000

        roles = [build_role(SegmentationStorage, scp_role=True)]
        contexts = [Get, (SegmentationStorage, ALL_TRANSFER_SYNTAXES)]
        with self._association(self.pacs, contexts, roles, [(evt.EVT_C_STORE, on_store)]) as assoc:
            for uid in series:
                query = _identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=uid)
                code = None
                for status, _ in assoc.send_c_get(query, Get):
                    code = _status(status)
                    if code not in _PENDING:
                        break
                if code not in (0x0000, 0xB000):
                    shown = "no answer" if code is None else f"status 0x{code:04X}"
                    raise MedsegError(f"the PACS did not give the SEG series by C-GET ({shown})", f"PACS {self.pacs}")
        return received

    # --- associations --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _association(self, where: Destination, contexts: Sequence[str | tuple[str, Sequence[str]]],
                     roles: Sequence[Any] = (), handlers: Sequence[tuple[Any, Callable]] = ()) -> Iterator[Any]:
        """An association from the node's AE title to ``where``, offering ``contexts``; released on exit."""
        from pynetdicom import AE

        ae = AE(ae_title=self.node.aet)
        ae.dimse_timeout = self.timeout  # a C-MOVE's final answer comes once the whole series is sent
        for context in contexts:
            uid, syntaxes = context if isinstance(context, tuple) else (context, None)
            ae.add_requested_context(uid, list(syntaxes) if syntaxes else None)
        try:
            assoc = ae.associate(where.host, where.port, ae_title=where.aet, ext_neg=list(roles) or None,
                                 evt_handlers=list(handlers) or None)
        except OSError as exc:  # a host name that does not resolve, for one
            raise MedsegError(f"cannot connect to the PACS ({exc})", f"PACS {where}", self._reach_fix()) from None
        if assoc.is_rejected:
            raise MedsegError(f"the PACS rejected the association from {self.node.aet}", f"PACS {where}",
                              f"check its AE title, and {self._declare_fix(where)}")
        if not assoc.is_established:
            raise MedsegError("cannot connect to the PACS (connection refused, or no answer)", f"PACS {where}",
                              self._reach_fix())
        try:
            if not assoc.accepted_contexts:
                raise MedsegError("the PACS accepts none of the query/retrieve services asked for", f"PACS {where}",
                                  "check that it is a query/retrieve SCP (Study Root C-FIND, C-MOVE, C-GET)")
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _declare_fix(self, where: Destination) -> str:
        return (f"declare {self.node.aet} at {self.node_address} as a DICOM modality in the PACS {where.aet}, "
                "in Orthanc under DicomModalities")

    def _reach_fix(self) -> str:
        return "check that the PACS runs, and the AE title, host and DICOM port given as --pacs AET@host:port"

    def _query_problem(self, where: Destination, service: str, code: int | None) -> str:
        if code is None:  # Orthanc, for one, aborts the association of a caller it does not know
            return (f"no answer to the {service} (the PACS may refuse queries from the AE title {self.node.aet} "
                    "it does not know)")
        return f"the PACS answered the {service} with status 0x{code:04X}"


def check_date(date: str) -> None:
    """Refuse what is not a DICOM date YYYYMMDD (a ``--since``)."""
    if not re.fullmatch(r"(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])", date):
        raise MedsegError(f"{date!r} is not a date YYYYMMDD", "--since", "write e.g. --since 20240131")


def _identifier(level: str, **keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def _status(status: Dataset | None) -> int | None:
    """The status code of a DIMSE answer; None when there was none (connection lost, timed out, aborted)."""
    return int(status.Status) if status is not None and "Status" in status else None


def _count(status: Dataset | None, kind: str) -> int | None:
    value = status.get(f"NumberOf{kind}Suboperations") if status is not None else None
    return int(value) if value is not None else None
