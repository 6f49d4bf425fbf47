"""`medseg evaluate` and `medseg report`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medseg.cli.app import RegionsOption, app, console, out


@app.command()
def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted label maps: a folder, or one file.")],
    reference: Annotated[Path, typer.Argument(help="Reference label maps: a folder, or one file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder (metrics.csv, summary.json).")],
    labels: Annotated[str | None, typer.Option(
        help="A dataset.json, or names like '1:anterior,2:posterior' (default: a dataset.json in or above the "
             "reference folder, else the values present).")] = None,
    region: Annotated[Path | None, typer.Option(
        help="Score only inside these masks (a folder matched by case id, or one file), e.g. DRIVE's FOV.")] = None,
    tolerance: Annotated[float, typer.Option(help="Normalised surface Dice tolerance in mm.")] = 2.0,
    workers: Annotated[int, typer.Option(help="Processes (0: automatic).")] = 0,
    regions: RegionsOption = None,
) -> None:
    """Score predictions against references per case and class: Dice, IoU, HD95, ASSD, surface Dice, volumes.

    Example: medseg evaluate runs/hippo/predictions data/Task04_Hippocampus/labelsTr -o runs/hippo/evaluation
    """
    from medseg.evaluate import evaluate_folders, write_evaluation

    start = time.perf_counter()
    result = evaluate_folders(prediction, reference, labels=labels, region_dir=region, workers=workers or None,
                              tolerance_mm=tolerance, regions_file=regions)
    csv_path, json_path = write_evaluation(result, output)
    summary = result.summary()
    table = Table(title=f"{summary['cases']} case(s), NSD at {tolerance:g} mm")
    for column in ("label", "mean Dice", "mean HD95 (mm)", "mean NSD", "HD95 missing"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, stats in summary["per_class"].items():
        empty = summary["empty"][name]
        table.add_row(name, _fmt(stats["dice"]["mean"]), _fmt(stats["hd95_mm"]["mean"], 3),
                      _fmt(stats["nsd"]["mean"]), str(empty["pred_empty_only"] + empty["ref_empty_only"]))
    out.print(table)
    if summary["mean_dice"] is not None:
        out.print(f"mean Dice over classes {summary['mean_dice']:.4f}")
    for key, what in (("missing_predictions", "reference(s) without a prediction, not scored"),
                      ("extra_predictions", "prediction(s) without a reference, ignored")):
        if summary[key]:
            shown = ", ".join(summary[key][:5]) + (" ..." if len(summary[key]) > 5 else "")
            console.print(f"warning: {len(summary[key])} {what}: {shown}", style="yellow", markup=False,
                          highlight=False)
    out.print(f"wrote {csv_path} and {json_path} in {time.perf_counter() - start:.1f} s", markup=False,
              highlight=False, soft_wrap=True)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `medseg train`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    evaluation: Annotated[Path | None, typer.Option(help="Evaluation folder (default: RUN_DIR/evaluation).")] = None,
) -> None:
    """Write one self-contained HTML report: data, plan, training curves, metrics, best/median/worst cases.

    Example: medseg report runs/hippo -o report.html
    """
    from medseg.report import build_report

    out.print(str(build_report(run_dir, output, evaluation_dir=evaluation)), markup=False, highlight=False,
              soft_wrap=True)



@app.command()
def compare(
    bundle_a: Annotated[Path, typer.Argument(help="The model in use (A).")],
    bundle_b: Annotated[Path, typer.Argument(help="The candidate (B).")],
    data: Annotated[Path, typer.Argument(help="Labelled data set: its split.json test list, else every case.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML report (the JSON goes next to it).")] = Path(
        "compare.html"),
    allow_worse: Annotated[bool, typer.Option("--allow-worse", help="Exit 0 even when B is significantly worse.")]
    = False,
    workers: Annotated[int, typer.Option(help="Evaluation processes (0: automatic).")] = 0,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Score two bundles on the same cases: per class Dice/HD95, B - A with a paired bootstrap 95 % interval, the
    cases where B is worse, side-by-side overlays. Exit code 1 when B is significantly worse on a class.

    Example: medseg compare runs/v1/bundle runs/v2/bundle data/Task04_Hippocampus -o compare.html
    """
    from medseg.report import compare_bundles

    start = time.perf_counter()
    result = compare_bundles(bundle_a, bundle_b, data, output, workers=workers or None, seed=seed)
    table = Table(title=f"B ({result.version_b}) - A ({result.version_a}) on {len(result.cases)} case(s)")
    for column in ("label", "metric", "mean A", "mean B", "B - A", "95% CI"):
        table.add_column(column, justify="left" if column in ("label", "metric") else "right")
    for d in result.differences:
        table.add_row(d.label, d.metric, _fmt(d.mean_a), _fmt(d.mean_b), _fmt(d.difference),
                      f"[{_fmt(d.ci_low)}, {_fmt(d.ci_high)}]")
    out.print(table)
    out.print(f"{len(result.worse_cases)} case(s) worse with B; wrote {output} and {output.with_suffix('.json')} in "
              f"{time.perf_counter() - start:.1f} s", markup=False, highlight=False, soft_wrap=True)
    if result.b_worse:
        console.print(f"B is significantly worse on: {', '.join(result.worse_classes)}", style="red", markup=False,
                      highlight=False)
        if not allow_worse:
            raise typer.Exit(1)
