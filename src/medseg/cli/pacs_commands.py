"""`medseg dicom-node`: medseg as a DICOM node next to a PACS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.app import app, console, out


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
    label_codes: Annotated[Path | None, typer.Option(help="JSON: label name -> {category: [code, scheme, meaning], "
                                                          "type: [...]} for segment terms the built-in SNOMED CT "
                                                          "table lacks.")] = None,
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
