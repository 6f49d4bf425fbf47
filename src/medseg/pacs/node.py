"""A DICOM node (pynetdicom): the PACS sends a series, medseg segments it and stores the SEG back.

    node = DicomNode({"liver": Predictor(load_bundle("run/bundle"))}, "MEDSEG", parse_destination("ORTHANC@pacs:4242"))
    node.start("0.0.0.0", 11112)      # returns at once; node.stop() ends it (serve_forever() blocks)

* Verification (C-ECHO) and Storage (C-STORE) SCP for every storage SOP class, in every transfer syntax pydicom
  can decode. Image instances are kept in memory, grouped by SeriesInstanceUID; other objects (SR, SEG,
  RTSTRUCT, multi-frame images, ...) are answered ``0x0122`` (Refused: SOP Class not supported) and dropped.
* With an allow-list, associations from other calling AE titles are rejected (A-ASSOCIATE-RJ, "calling AE title
  not recognised"); associations not addressed to the node's AE title are rejected too.
* A series is complete when the association that brought it is released, or when no instance of it came for
  ``idle_timeout`` seconds (an aborted association, a sender that spreads a series over several).
* One worker segments complete series one at a time: :class:`~medseg.pacs.rules.RuleSet` picks the model (or
  none: the series is skipped), :func:`~medseg.pacs.segment.segment_series_objects` makes the SEG (and, with
  ``formats=("seg", "rtstruct")``, an RTSTRUCT of the same prediction), and each is C-STOREd to the destination.
  A refused or failed send is retried (``retries`` times, waiting 1, 2, 4 ... s), then the object is saved in
  ``outbox`` and sent again when the node starts and after its next successful send: never lost.
* A failure on one series is logged and the node goes on. Logs carry no patient data: series appear as a short
  hash of their UID (:func:`~medseg.pacs.segment.short_hash`), with modality, instance count, model and timings.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.pacs.rules import RuleSet
from medseg.pacs.segment import is_image_sop_class, segment_series_objects, short_hash

__all__ = ["Destination", "DicomNode", "parse_destination"]

log = logging.getLogger("medseg.pacs")

SUCCESS, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xC000


@dataclass(frozen=True)
class Destination:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` (e.g. ``ORTHANC@10.0.0.5:4242``) as a :class:`Destination`."""
    aet, _, address = text.partition("@")
    host, _, port = address.rpartition(":")
    if not (aet and host and port.isdigit() and 0 < int(port) < 65536 and len(aet) <= 16):
        raise MedsegError(f"{text!r} is not AET@host:port", "--send-to",
                          "give the PACS' AE title (16 characters at most), host and DICOM port: ORTHANC@pacs:4242")
    return Destination(aet, host.strip("[]"), int(port))


@dataclass
class _Series:
    instances: dict[str, Dataset] = field(default_factory=dict)  # SOP Instance UID -> dataset (duplicates replace)
    last_seen: float = field(default_factory=time.monotonic)


class DicomNode:
    """The DICOM node: ``models`` by name (:class:`~medseg.infer.predict.Predictor` or served models holding one),
    ``rules`` choosing among them (default: the first for every series). See the module docstring."""

    def __init__(self, models: Mapping[str, Any], aet: str, destination: Destination, rules: RuleSet | None = None,
                 allow: Sequence[str] = (), idle_timeout: float = 30.0, label_codes: Mapping | None = None,
                 outbox: str | Path | None = None, retries: int = 3, formats: Sequence[str] = ("seg",)) -> None:
        if not models:
            raise MedsegError("no model to run", None, "give at least one bundle")
        self.models, self.aet, self.destination = dict(models), aet, destination
        self.rules = rules or RuleSet.everything_to(next(iter(self.models)))
        self.allow, self.idle_timeout, self.label_codes = list(allow), float(idle_timeout), label_codes
        self.outbox = Path(outbox) if outbox else None
        self.retries = max(int(retries), 1)
        self.formats = tuple(formats)  # what each series gives: "seg" and/or "rtstruct"
        self.retry_wait = 1.0  # seconds before the first retry, doubled each time
        self.sent: list[str] = []  # SOP Instance UIDs of the SEGs (and RTSTRUCTs) stored at the destination
        self.failed: list[str] = []  # short hashes of series that could not be segmented or delivered
        self._pending: dict[str, _Series] = {}
        self._by_association: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, list[Dataset]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    # --- serving -------------------------------------------------------------------------------------------
    def start(self, host: str = "0.0.0.0", port: int = 11112) -> None:
        """Listen on ``host:port`` and start the worker; returns at once."""
        from pynetdicom import AE, evt

        for name in ("pynetdicom", "highdicom"):  # their INFO/DEBUG lines name UIDs or dump whole datasets
            logging.getLogger(name).setLevel(logging.WARNING)
        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        if self.allow:
            ae.require_calling_aet = self.allow
        for uid, syntaxes in _supported_contexts():
            ae.add_supported_context(uid, syntaxes)
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_ABORTED, self._on_aborted)]
        try:
            self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise MedsegError(f"cannot listen on {host}:{port} ({exc})", "--port", "choose a free port") from None
        self._stop.clear()
        self._threads = [threading.Thread(target=target, name=f"medseg-node-{name}", daemon=True)
                         for name, target in (("worker", self._worker), ("idle", self._idle_watch))]
        for thread in self._threads:
            thread.start()
        allowed = ", ".join(self.allow) if self.allow else "any calling AE title"
        log.info("DICOM node %s listening on %s:%d (accepts %s), SEGs go to %s", self.aet, host, port, allowed,
                 self.destination)
        self._work.put(("", []))  # first job: send what an earlier run left in the outbox

    def stop(self) -> None:
        """Stop listening, finish the series being segmented, and stop the worker (pending series are dropped)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=60)

    def serve_forever(self, host: str = "0.0.0.0", port: int = 11112) -> None:
        """:meth:`start`, then block until interrupted (Ctrl-C, or SIGTERM as from systemd or docker stop)."""
        import signal

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.start(host, port)
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            log.info("stopping")
            self.stop()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is pending or queued (for tests and scripts); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._pending) or self._work.unfinished_tasks > 0
            if not busy:
                return True
            time.sleep(0.05)
        return False

    # --- receiving -----------------------------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if not is_image_sop_class(sop_class):
            log.warning("refused a %s instance from %s: not an image (0x0122)", pydicom.uid.UID(sop_class).name,
                        event.assoc.requestor.ae_title)
            return SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series_uid, instance_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except Exception as exc:  # a dataset that does not decode, or lacks its UIDs
            log.warning("refused an instance that cannot be read (%s, 0xC000)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        if int(ds.get("NumberOfFrames") or 1) != 1:
            log.warning("refused a multi-frame image (not supported yet, 0x0122)")
            return SOP_CLASS_NOT_SUPPORTED
        with self._lock:
            series = self._pending.setdefault(series_uid, _Series())
            series.instances[instance_uid] = ds
            series.last_seen = time.monotonic()
            self._by_association.setdefault(id(event.assoc), set()).add(series_uid)
        return SUCCESS

    def _on_released(self, event: Any) -> None:
        with self._lock:
            uids = self._by_association.pop(id(event.assoc), set())
            for uid in uids:
                self._complete(uid, "association released")

    def _on_aborted(self, event: Any) -> None:
        with self._lock:  # what came stays pending: the idle timeout completes it (or more instances follow)
            uids = self._by_association.pop(id(event.assoc), set())
        if uids:
            log.warning("association aborted during %d series; they complete after the idle timeout", len(uids))

    def _complete(self, uid: str, why: str) -> None:
        """Queue a pending series for segmentation (the lock is held)."""
        series = self._pending.pop(uid, None)
        if series is not None:
            log.info("series %s complete (%s): %d instance(s)", short_hash(uid), why, len(series.instances))
            self._work.put((uid, list(series.instances.values())))

    def _idle_watch(self) -> None:
        while not self._stop.wait(min(1.0, max(self.idle_timeout / 4, 0.05))):
            now = time.monotonic()
            with self._lock:
                for uid in [u for u, s in self._pending.items() if now - s.last_seen >= self.idle_timeout]:
                    self._complete(uid, f"idle for {self.idle_timeout:g} s")

    # --- segmenting and sending ----------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self._work.get()
            try:
                if job is None:
                    return
                uid, datasets = job
                if datasets:
                    self.process(uid, datasets)
                else:
                    self.flush_outbox()
            except Exception:  # one series never stops the node
                log.exception("series %s: unexpected failure", short_hash(job[0]) if job else "-")
                if job:
                    self.failed.append(short_hash(job[0]))
            finally:
                self._work.task_done()

    def process(self, uid: str, datasets: list[Dataset]) -> bool:
        """Segment one series and send its SEG; False when it was skipped or failed (the reason is logged)."""
        tag, first = short_hash(uid), datasets[0]
        model = self.rules.choose(first)
        if model is None:
            log.info("series %s (%s, %d instances): no rule picks a model, skipped", tag, first.get("Modality", "?"),
                     len(datasets))
            return False
        start = time.perf_counter()
        try:
            objects = segment_series_objects(datasets, self.models[model], self.formats, self.label_codes)
        except MedsegError as error:
            log.warning("series %s (%s, %d instances): not segmented by %s: %s", tag, first.get("Modality", "?"),
                        len(datasets), model, error.message)
            self.failed.append(tag)
            return False
        log.info("series %s (%s, %d instances): segmented by %s in %.1f s, %s", tag, first.get("Modality", "?"),
                 len(datasets), model, time.perf_counter() - start,
                 " and ".join(f"{len(o.get('SegmentSequence', o.get('StructureSetROISequence', [])))} "
                              f"{o.Modality} segment(s)" for o in objects))
        delivered = [self.deliver(o, tag) for o in objects]  # each one tried, kept in the outbox when it fails
        if all(delivered):
            self.flush_outbox()
            return True
        self.failed.append(tag)
        return False

    def deliver(self, result: Dataset, tag: str) -> bool:
        """C-STORE ``result`` (a SEG or RTSTRUCT) to the destination, retrying; saved in the outbox when every
        try fails."""
        wait, kind = self.retry_wait, str(result.get("Modality", "SEG"))
        for attempt in range(1, self.retries + 1):
            problem = self._store(result)
            if problem is None:
                log.info("series %s: %s stored at %s", tag, kind, self.destination)
                self.sent.append(str(result.SOPInstanceUID))
                return True
            log.warning("series %s: storing the %s at %s failed (try %d of %d): %s", tag, kind, self.destination,
                        attempt, self.retries, problem)
            if attempt < self.retries and not self._stop.wait(wait):
                wait *= 2
        if self.outbox is None:
            log.error("series %s: %s not delivered and no outbox to keep it (give --outbox)", tag, kind)
            return False
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{short_hash(result.SOPInstanceUID)}.{kind.lower()}.dcm"
        with atomic_path(path) as partial:  # a crash mid-write leaves no half file for flush_outbox to send
            result.save_as(partial, enforce_file_format=True)
        log.error("series %s: %s not delivered; kept as %s, sent again later", tag, kind, path)
        return False

    def flush_outbox(self) -> None:
        """Send what earlier failures left in the outbox (each file removed once stored)."""
        kept = sorted(self.outbox.glob("*.dcm")) if self.outbox and self.outbox.is_dir() else []
        for path in [p for p in kept if not p.name.startswith(".")]:  # not a write still in progress
            if self._store(pydicom.dcmread(path)) is None:
                log.info("outbox: %s stored at %s", path.name, self.destination)
                path.unlink()

    def _store(self, seg: Dataset) -> str | None:
        """One C-STORE of ``seg`` (or another object); None on success, else what went wrong."""
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.add_requested_context(str(seg.SOPClassUID), [str(seg.file_meta.TransferSyntaxUID)])
        try:
            assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.aet)
        except OSError as exc:
            return f"cannot connect ({exc})"
        if not assoc.is_established:
            return "association rejected or the destination is not reachable"
        try:
            status = assoc.send_c_store(seg)
        finally:
            assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            return "no answer to the C-STORE (connection lost or timed out)"
        return None if code in (0x0000, 0xB000, 0xB007, 0xB006) else f"status 0x{code:04X}"


def _supported_contexts() -> list[tuple[str, list[str]]]:
    """Verification, and every storage SOP class in the transfer syntaxes pydicom can decode here."""
    from pydicom.pixels import get_decoder
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    syntaxes = []
    for syntax in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(syntax).is_available:
                syntaxes.append(syntax)
        except NotImplementedError:  # no decoder for this syntax in pydicom
            continue
    return [(Verification, [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian]),
            *((context.abstract_syntax, syntaxes) for context in AllStoragePresentationContexts)]
