"""`medseg check`, `split`, `convert` and `plan`: the data set and its plan."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medseg.cli.app import (
    DeviceOption,
    LabelCodesOption,
    MeasureOption,
    RegionsOption,
    app,
    out,
    parse_dim,
    parse_duration,
)
from medseg.plan.choices import ModelName


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Data set folder (2D images/ + masks/, or Decathlon imagesTr/).")],
    labels: Annotated[str | None, typer.Option(help="Label names, e.g. '0:background,1:liver'.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[int, typer.Option(help="Processes reading cases (0: automatic).")] = 0,
    regions: RegionsOption = None,
) -> None:
    """Validate a data set: every problem with its file and fix, and a summary. Exit 1 when problems exist.

    Example: medseg check data/Task04_Hippocampus
    """
    from medseg.data import check_dataset, discover_dataset, parse_labels

    start = time.perf_counter()
    dataset = discover_dataset(data, labels=parse_labels(labels) if labels else None, regions_file=regions)
    report = check_dataset(dataset, workers=workers or None)
    seconds = time.perf_counter() - start
    if json_output:
        from medseg.io.paths import json_safe

        payload = json_safe(report.to_dict() | {"seconds": round(seconds, 2)})
        out.print_json(json.dumps(payload, ensure_ascii=False))
    else:
        _print_check(report, seconds)
    raise typer.Exit(0 if report.ok else 1)


def _print_check(report, seconds: float) -> None:  # noqa: ANN001 - CheckReport, imported lazily
    summary = report.summary()
    table = Table(title=f"{report.dataset.root} ({report.dataset.layout})", show_header=False)
    for key in ("cases", "readable_cases", "test_images", "dim", "channels", "shape_min", "shape_max",
                "spacing_min", "spacing_max"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    for entry in summary.get("intensity", []):
        table.add_row(f"intensity ch{entry['channel']}", f"{entry['min']:.4g} .. {entry['max']:.4g}")
    for value, entry in summary.get("labels", {}).items():
        size = next(v for k, v in entry.items() if k.startswith("mean_size"))
        unit = "ml" if summary.get("dim") == 3 else "mm2"
        table.add_row(f"label {value}", f"{entry['name']}: in {entry['cases_containing']} cases, "
                                        f"mean {size:.4g} {unit}")
    for name, values in summary.get("regions", {}).items():
        table.add_row(f"region {name}", f"labels {values}")
    if summary.get("split"):
        table.add_row("split.json", str(summary["split"]))
    out.print(table)
    for warning in report.warnings:
        out.print(f"warning: {warning.line()}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if report.problems:
        out.print(f"[red]{len(report.problems)} problem(s):[/red]")
        for problem in report.problems:
            out.print(f"  - {problem.line()}", markup=False, highlight=False, soft_wrap=True)
    else:
        out.print("[green]no problems found[/green]")
    out.print(f"checked {summary.get('readable_cases', 0)} cases in {seconds:.1f} s")


@app.command()
def split(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    stratify: Annotated[bool, typer.Option(help="Balance case-id prefixes (e.g. JPCLN/JPCNN) over folds.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write (DATA/splits.json).")] = None,
) -> None:
    """Write reproducible k-fold splits; split.json's test cases are never put in a fold.

    Example: medseg split data/jsrt --folds 5 --seed 0 --stratify
    """
    from medseg.data import discover_dataset, make_splits, write_splits

    dataset = discover_dataset(data)
    splits = make_splits(dataset, folds=folds, seed=seed, stratify=stratify)
    path = write_splits(splits, output or Path(data) / "splits.json")
    sizes = ", ".join(f"fold {k}: {len(f.train)} train / {len(f.val)} val" for k, f in enumerate(splits.folds))
    out.print(f"wrote {path}: {sizes}; {len(splits.test)} test cases held out")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Image file or DICOM folder/zip.")],
    target: Annotated[Path, typer.Argument(help="Output file; the format follows the extension.")],
    series: Annotated[str | None, typer.Option(help="SeriesInstanceUID when a DICOM folder holds several.")] = None,
) -> None:
    """Convert between formats keeping geometry (e.g. a DICOM series to NIfTI).

    Example: medseg convert dicom_folder/ scan.nii.gz
    """
    from medseg.io import read_image, write_image

    image = read_image(source, series_uid=series)
    write_image(image, target)
    out.print(f"wrote {target}: {image.channels} channel(s), shape {image.shape}, spacing "
              f"{tuple(round(s, 4) for s in image.spacing)}")


@app.command()
def plan(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Plan file to write.")] = Path("plan.json"),
    dim: Annotated[str | None, typer.Option(help="2d or 3d (default: the data's).")] = None,
    model: Annotated[ModelName, typer.Option(help="Network.")] = "unet",
    regions: RegionsOption = None,
    label_codes: LabelCodesOption = None,
    budget: Annotated[str | None, typer.Option(help="The training budget a fold will have, e.g. 15m: candidate "
                                                    "networks are timed here and the best for it kept.")] = None,
    measure: MeasureOption = True,
    device: DeviceOption = "auto",
) -> None:
    """Fingerprint a data set and write the plan sized for this machine (its GPU or CPU, as --device says).

    Example: medseg plan data/Task04_Hippocampus -o plan.json --budget 15m
    """
    from medseg.data import check_dataset, discover_dataset
    from medseg.io.label_codes import load_label_codes
    from medseg.plan import Machine, fingerprint_from_report, make_plan

    codes = load_label_codes(label_codes)
    report = check_dataset(discover_dataset(data, regions_file=regions))
    report.raise_if_failed()
    the_plan = make_plan(fingerprint_from_report(report), dim=parse_dim(dim), machine=Machine.detect(device),
                         model=model, label_codes=codes)
    if budget is not None and measure:
        from medseg.runtime import resolve_device
        from medseg.train.measure import measured_plan

        the_plan = measured_plan(the_plan, parse_duration(budget), resolve_device(device))
    the_plan.save(output)
    out.print(f"wrote {output}: {the_plan.dim}D {the_plan.model}, patch {the_plan.patch_size}, batch "
              f"{the_plan.batch_size}, widths {the_plan.features}, spacing {the_plan.target_spacing}, "
              f"precision {the_plan.precision}, {the_plan.memory_format}")
    if the_plan.measurements:
        out.print(f"measured: {the_plan.measurements['reason']}")

