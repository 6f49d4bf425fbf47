"""`medseg dicom-node`, `dicom-pull` and `dicomweb`: medseg as a DICOM node next to a PACS, pulling from it, or on
its DICOMweb server."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medseg.cli.app import LabelCodesOption, app, console, out

if TYPE_CHECKING:
    from medseg.pacs import Destination

RtstructOption = Annotated[bool, typer.Option(
    "--rtstruct", help="Also store an RT Structure Set of the same prediction beside the SEG (for radiotherapy "
                       "planning systems).")]


BundlesArgument = Annotated[list[Path], typer.Argument(
    help="One or more model bundle folders (the first is the default model).")]
BackendOption = Annotated[str, typer.Option(help="torch, or onnxruntime (after `medseg export`).")]
StudyOption = Annotated[list[str] | None, typer.Option(help="StudyInstanceUID to segment (repeatable).")]
SinceOption = Annotated[str | None, typer.Option(help="Segment every study on or after this date (YYYYMMDD).")]
RulesOption = Annotated[Path | None, typer.Option(help="Which model runs on which series (as `medseg dicom-node "
                                                       "--rules`).")]


def _formats(rtstruct: bool) -> tuple[str, ...]:
    return ("seg", "rtstruct") if rtstruct else ("seg",)


@app.command("dicom-node")
def dicom_node(
    bundles: BundlesArgument,
    send_to: Annotated[str, typer.Option("--send-to", help="Where SEGs go: AET@host:port of the PACS, e.g. "
                                                           "ORTHANC@pacs:4242.")],
    aet: Annotated[str, typer.Option(help="This node's AE title.")] = "MEDSEG",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    allow: Annotated[list[str] | None, typer.Option("--allow", help="Calling AE title allowed to connect "
                                                                    "(repeatable); others are rejected. Default: "
                                                                    "any.")] = None,
    idle_timeout: Annotated[float, typer.Option(help="Seconds without a new instance after which a series counts "
                                                     "as complete (it also is when its association is "
                                                     "released).")] = 30.0,
    rules: Annotated[Path | None, typer.Option(help='Which model runs on which series: JSON {"rules": [{"model": '
                                                    'NAME, "Modality": "CT", "BodyPartExamined": "LIVER|ABDOMEN", '
                                                    '"SeriesDescription": "portal"}], "default": NAME or null} '
                                                    '(regular expressions, any case). Default: the first bundle '
                                                    'for every image series.')] = None,
    label_codes: LabelCodesOption = None,
    rtstruct: RtstructOption = False,
    outbox: Annotated[Path, typer.Option(help="Folder keeping SEGs that could not be delivered after the retries; "
                                              "they are sent again later.")] = Path("medseg-outbox"),
    retries: Annotated[int, typer.Option(help="Tries per SEG before it goes to the outbox.")] = 3,
    backend: BackendOption = "torch",
) -> None:
    """Receive series from a PACS (C-STORE), segment each, and C-STORE the DICOM SEG back.

    Example: medseg dicom-node runs/liver/bundle --aet MEDSEG --port 11112 --send-to ORTHANC@pacs:4242 --allow ORTHANC
    Then, in the PACS, declare the modality MEDSEG at this host and port and send it a series. C-ECHO works;
    non-image objects (SR, SEG, ...) are refused with status 0x0122. Logs carry no patient data. Ctrl-C stops.
    """
    from medseg.pacs import DicomNode, load_label_codes, load_rules, parse_destination

    destination = parse_destination(send_to)
    codes = load_label_codes(label_codes)
    models = _predictors(bundles, backend)
    chosen = load_rules(rules, list(models))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not allow:
        console.print("warning: no --allow list: any calling AE title may send series", style="yellow")
    node = DicomNode(models, aet, destination, chosen, allow or (), idle_timeout, codes, outbox, retries,
                     _formats(rtstruct))
    out.print(f"DICOM node {aet} on {host}:{port} with {', '.join(models)}; SEGs to {destination}", markup=False,
              highlight=False)
    node.serve_forever(host, port)


def _predictors(bundles: list[Path], backend: str) -> dict:
    """Name -> Predictor for each bundle, named as rules name them."""
    from medseg.bundle import load_bundle
    from medseg.infer.predict import PredictOptions, Predictor
    from medseg.pacs.rules import model_name

    models: dict = {}
    for folder in bundles:
        bundle = load_bundle(folder)
        models[model_name(bundle.folder, bundle.plan.dataset_name, set(models))] = Predictor(
            bundle, PredictOptions(backend=backend))
    return models


def _require_studies(study: list[str] | None, since: str | None) -> None:
    from medseg.errors import MedsegError

    if not study and since is None:
        raise MedsegError("no study to segment", "--study", "give --study UID (repeatable) or --since YYYYMMDD")


def _report(outcomes_per_study: Iterable[Iterable]) -> int:
    """Print one JSON line a series outcome (no patient data) as it comes; the number that failed."""
    import json

    failed = 0
    for outcomes in outcomes_per_study:
        for outcome in outcomes:
            failed += outcome.status == "failed"
            out.print(json.dumps(outcome.to_dict()), markup=False, highlight=False, soft_wrap=True)
    return failed


def _destination(text: str, option: str) -> Destination:
    """``AET@host:port`` given to ``option``, its errors naming that option."""
    from medseg.errors import MedsegError
    from medseg.pacs import parse_destination

    try:
        return parse_destination(text)
    except MedsegError as error:
        raise MedsegError(error.what, option, error.fix) from None


@app.command("dicomweb")
def dicomweb(
    bundles: BundlesArgument,
    url: Annotated[str, typer.Option(help="The DICOMweb root, e.g. http://pacs:8042/dicom-web.")],
    study: StudyOption = None,
    since: SinceOption = None,
    rules: RulesOption = None,
    label_codes: LabelCodesOption = None,
    rtstruct: RtstructOption = False,
    token_file: Annotated[Path | None, typer.Option(help="File holding a bearer token for the server.")] = None,
    backend: BackendOption = "torch",
) -> None:
    """Segment studies on a DICOMweb server: QIDO-RS finds the series, WADO-RS fetches them, STOW-RS stores each
    SEG into the same study, and QIDO-RS confirms it. Series that a medseg SEG references already are skipped.

    Example: medseg dicomweb runs/liver/bundle --url http://pacs:8042/dicom-web --study 1.2.840.113619...
    Prints one JSON line a series (no patient data); exit 1 when a series failed.
    """

    from dicomweb_client.api import DICOMwebClient

    from medseg.pacs import DicomWebWorker, load_label_codes, load_rules
    from medseg.serve import load_token

    _require_studies(study, since)
    token = load_token(token_file) if token_file else None
    client = DICOMwebClient(url, headers={"Authorization": f"Bearer {token}"} if token else None)
    models = _predictors(bundles, backend)
    worker = DicomWebWorker(client, models, load_rules(rules, list(models)), load_label_codes(label_codes),
                            _formats(rtstruct))
    studies = list(study or []) + (worker.studies_since(since) if since else [])
    if _report(worker.run_study(uid) for uid in studies):
        raise typer.Exit(1)


@app.command("dicom-pull")
def dicom_pull(
    bundles: BundlesArgument,
    pacs: Annotated[str, typer.Option("--pacs", help="The PACS to query and retrieve from: AET@host:port, e.g. "
                                                     "ORTHANC@pacs:4242.")],
    study: StudyOption = None,
    since: SinceOption = None,
    modality: Annotated[str | None, typer.Option(help="Only series of this modality (e.g. CT).")] = None,
    aet: Annotated[str, typer.Option(help="This node's AE title: the C-MOVE destination, as the PACS knows it.")]
    = "MEDSEG",
    host: Annotated[str, typer.Option(help="Address to listen on for the moved series.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="DICOM port to listen on for the moved series.")] = 11112,
    send_to: Annotated[str | None, typer.Option("--send-to", help="Where SEGs go: AET@host:port. Default: the "
                                                                  "--pacs.")] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", help="Calling AE title allowed to send the moved "
                                                                    "series (repeatable). Default: any.")] = None,
    rules: RulesOption = None,
    label_codes: LabelCodesOption = None,
    rtstruct: RtstructOption = False,
    outbox: Annotated[Path, typer.Option(help="Folder keeping SEGs that could not be delivered after the retries; "
                                              "`medseg dicom-node` or a later pull sends them.")]
    = Path("medseg-outbox"),
    timeout: Annotated[float, typer.Option(help="Seconds one series may take: moved, segmented and stored.")]
    = 600.0,
    backend: BackendOption = "torch",
) -> None:
    """Pull series from a PACS: C-FIND finds them, C-MOVE sends each to this node, which segments it and C-STOREs
    the SEG, then C-FIND confirms it is there. Non-image series, series no rule gives a model, and series a medseg
    SEG references already (read by C-GET of the study's SEGs) are skipped.

    Example: medseg dicom-pull runs/liver/bundle --pacs ORTHANC@pacs:4242 --since 20240101 --modality CT

    The PACS must know this node (--aet at this host and --port) as a DICOM modality: it is the C-MOVE destination.
    Prints one JSON line a series (no patient data); exit 1 when a series failed.
    """

    from medseg.pacs import DicomNode, DicomPuller, load_label_codes, load_rules
    from medseg.pacs.pull import check_date

    _require_studies(study, since)
    if since is not None:
        check_date(since)
    source = _destination(pacs, "--pacs")
    destination = _destination(send_to, "--send-to") if send_to else source
    codes = load_label_codes(label_codes)
    models = _predictors(bundles, backend)
    node = DicomNode(models, aet, destination, load_rules(rules, list(models)), allow or (), label_codes=codes,
                     outbox=outbox, formats=_formats(rtstruct))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node.start(host, port)
    try:
        where = f"{host}:{port}" if host not in ("0.0.0.0", "::", "") else f"this machine's address, port {port}"
        puller = DicomPuller(node, source, where, timeout)
        studies = list(study or []) + (puller.studies_since(since) if since else [])
        failed = _report(puller.run_study(uid, modality) for uid in studies)
    finally:
        node.stop()
    if failed:
        raise typer.Exit(1)
