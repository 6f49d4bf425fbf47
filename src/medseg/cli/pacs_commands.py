"""`medseg dicom-node`: medseg as a DICOM node next to a PACS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.app import LabelCodesOption, app, console, out


@app.command("dicom-node")
def dicom_node(
    bundles: Annotated[list[Path], typer.Argument(help="One or more model bundle folders (the first is the "
                                                       "default model).")],
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
    outbox: Annotated[Path, typer.Option(help="Folder keeping SEGs that could not be delivered after the retries; "
                                              "they are sent again later.")] = Path("medseg-outbox"),
    retries: Annotated[int, typer.Option(help="Tries per SEG before it goes to the outbox.")] = 3,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (after `medseg export`).")] = "torch",
) -> None:
    """Receive series from a PACS (C-STORE), segment each, and C-STORE the DICOM SEG back.

    Example: medseg dicom-node runs/liver/bundle --aet MEDSEG --port 11112 --send-to ORTHANC@pacs:4242 --allow ORTHANC
    Then, in the PACS, declare the modality MEDSEG at this host and port and send it a series. C-ECHO works;
    non-image objects (SR, SEG, ...) are refused with status 0x0122. Logs carry no patient data. Ctrl-C stops.
    """
    from medseg.bundle import load_bundle
    from medseg.infer.predict import PredictOptions, Predictor
    from medseg.pacs import DicomNode, load_label_codes, load_rules, parse_destination
    from medseg.pacs.rules import model_name

    destination = parse_destination(send_to)
    codes = load_label_codes(label_codes)
    models: dict[str, Predictor] = {}
    for folder in bundles:
        bundle = load_bundle(folder)
        models[model_name(bundle.folder, bundle.plan.dataset_name, set(models))] = Predictor(
            bundle, PredictOptions(backend=backend))
    chosen = load_rules(rules, list(models))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not allow:
        console.print("warning: no --allow list: any calling AE title may send series", style="yellow")
    node = DicomNode(models, aet, destination, chosen, allow or (), idle_timeout, codes, outbox, retries)
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


@app.command("dicomweb")
def dicomweb(
    bundles: Annotated[list[Path], typer.Argument(help="One or more model bundle folders (the first is the "
                                                       "default model).")],
    url: Annotated[str, typer.Option(help="The DICOMweb root, e.g. http://pacs:8042/dicom-web.")],
    study: Annotated[list[str] | None, typer.Option(help="StudyInstanceUID to segment (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(help="Segment every study on or after this date (YYYYMMDD).")]
    = None,
    rules: Annotated[Path | None, typer.Option(help="Which model runs on which series (as `medseg dicom-node "
                                                    "--rules`).")] = None,
    label_codes: LabelCodesOption = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding a bearer token for the server.")] = None,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (after `medseg export`).")] = "torch",
) -> None:
    """Segment studies on a DICOMweb server: QIDO-RS finds the series, WADO-RS fetches them, STOW-RS stores each
    SEG into the same study, and QIDO-RS confirms it. Series that a medseg SEG references already are skipped.

    Example: medseg dicomweb runs/liver/bundle --url http://pacs:8042/dicom-web --study 1.2.840.113619...
    Prints one JSON line a series (no patient data); exit 1 when a series failed.
    """
    import json

    from dicomweb_client.api import DICOMwebClient

    from medseg.errors import MedsegError
    from medseg.pacs import DicomWebWorker, load_label_codes, load_rules
    from medseg.serve import load_token

    if not study and since is None:
        raise MedsegError("no study to segment", "--study", "give --study UID (repeatable) or --since YYYYMMDD")
    token = load_token(token_file) if token_file else None
    client = DICOMwebClient(url, headers={"Authorization": f"Bearer {token}"} if token else None)
    models = _predictors(bundles, backend)
    worker = DicomWebWorker(client, models, load_rules(rules, list(models)), load_label_codes(label_codes))
    studies = list(study or []) + (worker.studies_since(since) if since else [])
    failed = 0
    for uid in studies:
        for outcome in worker.run_study(uid):
            failed += outcome.status == "failed"
            out.print(json.dumps(outcome.to_dict()), markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
