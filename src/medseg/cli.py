"""The ``medseg`` command line: each command a thin call into the Python API."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="Medical image segmentation: check data, train, predict, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()
_state = {"debug": False}


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Data set folder (2D images/ + masks/, or Decathlon imagesTr/).")],
    labels: Annotated[str | None, typer.Option(help="Label names, e.g. '0:background,1:liver'.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[int, typer.Option(help="Processes reading cases (0: automatic).")] = 0,
) -> None:
    """Validate a data set: every problem with its file and fix, and a summary. Exit 1 when problems exist.

    Example: medseg check data/Task04_Hippocampus
    """
    from medseg.data import check_dataset, discover_dataset, parse_labels

    start = time.perf_counter()
    dataset = discover_dataset(data, labels=parse_labels(labels) if labels else None)
    report = check_dataset(dataset, workers=workers or None)
    seconds = time.perf_counter() - start
    if json_output:
        payload = report.to_dict() | {"seconds": round(seconds, 2)}
        out.print_json(json.dumps(payload))
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
    if summary.get("split"):
        table.add_row("split.json", str(summary["split"]))
    out.print(table)
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
    sizes = ", ".join(f"fold {k}: {len(s['train'])} train / {len(s['val'])} val" for k, s in
                      enumerate(splits["splits"]))
    out.print(f"wrote {path}: {sizes}; {len(splits['test'])} test cases held out")


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


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h`` or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise MedsegError(f"cannot read duration {text!r}", "--budget", "write e.g. 90s, 15m or 1.5h") from None


def _dim(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lower() not in ("2d", "3d"):
        raise MedsegError(f"unknown dimension {value!r}", "--dim", "use 2d or 3d")
    return int(value[0])


@app.command()
def plan(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Plan file to write.")] = Path("plan.json"),
    dim: Annotated[str | None, typer.Option(help="2d or 3d (default: the data's).")] = None,
    model: Annotated[str, typer.Option(help="unet, resunet, fcn or resnet_unet.")] = "unet",
) -> None:
    """Fingerprint a data set and write the plan sized for this machine.

    Example: medseg plan data/Task04_Hippocampus -o plan.json
    """
    from medseg.data import check_dataset, discover_dataset
    from medseg.plan import fingerprint_from_report, make_plan

    report = check_dataset(discover_dataset(data))
    report.raise_if_failed()
    the_plan = make_plan(fingerprint_from_report(report), dim=_dim(dim), model=model)
    the_plan.save(output)
    out.print(f"wrote {output}: {the_plan.dim}D {the_plan.model}, patch {the_plan.patch_size}, batch "
              f"{the_plan.batch_size}, widths {the_plan.features}, spacing {the_plan.target_spacing}, "
              f"precision {the_plan.precision}")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (the bundle goes to RUN/bundle).")],
    dim: Annotated[str | None, typer.Option(help="2d or 3d (default: the data's).")] = None,
    fold: Annotated[str, typer.Option(help="Fold K, 'all' folds, or 'none' (all cases, no validation).")] = "0",
    folds: Annotated[int, typer.Option(help="Number of cross-validation folds.")] = 5,
    budget: Annotated[str | None, typer.Option(help="Wall-clock budget per fold, e.g. 15m.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (passes over the training cases).")] = None,
    model: Annotated[str, typer.Option(help="unet, resunet, fcn or resnet_unet.")] = "unet",
    loss: Annotated[str, typer.Option(help="dice_ce, ce, dice, focal or tversky.")] = "dice_ce",
    optimizer: Annotated[str | None, typer.Option(help="sgd (poly LR) or adamw (cosine LR); default: AdamW on a "
                                                       "CPU, SGD on a GPU.")] = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Use this plan instead of planning.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N validations without improvement.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    deterministic: Annotated[bool, typer.Option(help="Deterministic algorithms (slower).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-data cache folder.")] = None,
    workers: Annotated[int, typer.Option(help="Processes for checking and preprocessing (0: automatic).")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Train a model: check, plan, preprocess (cached), train, write RUN/bundle.

    Example: medseg train data/Task04_Hippocampus -o runs/hippo --budget 15m
    """
    from medseg.train import TrainConfig, TrainRequest
    from medseg.train import train as run_training

    if budget is None and epochs is None:
        raise MedsegError("say how long to train", "medseg train", "add --budget 15m or --epochs N")
    request = TrainRequest(data=data, run_dir=output, dim=_dim(dim), fold=fold, folds=folds, model=model, loss=loss,
                           optimizer=optimizer, plan_path=plan_file, cache_root=cache, workers=workers or None,
                           progress_bar=not no_progress)
    config = TrainConfig(epochs=epochs, budget_s=parse_duration(budget) if budget else None, seed=seed,
                         patience=patience, deterministic=deterministic, resume=resume)
    bundle = run_training(request, config)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        metrics = json.loads((bundle / "metrics.json").read_text())
        for name, m in metrics.get("folds", {}).items():
            dice = ", ".join(f"{k}: {v:.4f}" for k, v in m.get("val_dice", {}).items())
            out.print(f"fold {name}: {m.get('steps')} steps in {m.get('elapsed_s')} s; validation Dice {dice or 'n/a'}")
        out.print(f"bundle written to {bundle}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (RUN/bundle).")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders of them or of DICOM series, or a data "
                                                      "set folder (its split.json test list).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Mirror test-time augmentation (default: on "
                                                                    "where the bundle measured it pays).")] = None,
    step: Annotated[float | None, typer.Option(help="Sliding-window step as a fraction of the patch (default: "
                                                    "the plan's, 0.5).")] = None,
    postprocess: Annotated[bool, typer.Option("--postprocess/--no-postprocess",
                                              help="Apply the bundle's postprocess.json.")] = True,
    postprocess_file: Annotated[Path | None, typer.Option(help="A postprocess.json to apply instead of the "
                                                               "bundle's.")] = None,
    keep_largest: Annotated[str | None, typer.Option(help="Instead of the bundle's choice: keep the largest "
                                                          "connected component of 'foreground' (all classes "
                                                          "together), of 'all' classes, of the listed label "
                                                          "values (1,2), or 'none'.")] = None,
    fill_holes: Annotated[str | None, typer.Option(help="Instead of the bundle's choice: fill holes in 'all', "
                                                        "'none' or the listed classes.")] = None,
    min_size: Annotated[float | None, typer.Option(help="Remove components smaller than this (mm^3 in 3D, mm^2 "
                                                        "in 2D) from every class.")] = None,
    probabilities: Annotated[bool, typer.Option(help="Also save per-class probabilities.")] = False,
    uncertainty: Annotated[bool, typer.Option(help="Also save a voxel-wise uncertainty map (entropy).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="same (the input's; PNG for JPEG, NIfTI for DICOM), nii.gz, "
                                                      "png, nrrd, mha, or dicom-seg (DICOM inputs: a DICOM SEG "
                                                      "referencing the source series).")] = "same",
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (needs `medseg export BUNDLE` first).")] = "torch",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Segment scans with a bundle; masks keep each input's format, size and geometry.

    Example: medseg predict runs/hippo/bundle scans/ -o predictions/
    Writes one mask per case and predictions.json (inputs, outputs, timings, versions). Exit 1 when a case failed.
    """
    from rich.progress import Progress

    from medseg.bundle import load_bundle
    from medseg.infer.predict import PredictOptions, predict_paths
    from medseg.postprocess import PostprocessConfig, load_postprocessing, with_overrides

    loaded = load_bundle(bundle)
    chosen: bool | PostprocessConfig = postprocess
    if postprocess and (postprocess_file or keep_largest or fill_holes or min_size is not None):
        base = load_postprocessing(postprocess_file) if postprocess_file else None
        chosen = with_overrides(base, loaded.plan.labels, keep_largest, fill_holes, min_size)
    options = PredictOptions(tta=tta, overlap=None if step is None else 1.0 - step, postprocess=chosen,
                             probabilities=probabilities, uncertainty=uncertainty, backend=backend)
    with Progress(console=console, disable=no_progress, transient=True) as bar:
        task = bar.add_task("predicting", total=None)

        def advance(done: int, total: int, case: str) -> None:
            bar.update(task, completed=done, total=total, description=f"predicting {case}")

        manifest = predict_paths(loaded, inputs, output, options, fmt=fmt, progress=advance)
    done = manifest["cases"]
    seconds = sum(c["seconds"] for c in done) / max(len(done), 1)
    tta_state = "on" if manifest["tta"] else "off"
    out.print(f"{len(done)} case(s) predicted into {output} ({seconds:.2f} s a case, TTA {tta_state})")
    for failure in manifest["failed"]:
        console.print(f"[red]failed[/red] {failure['case']}: {failure['error']}", soft_wrap=True)
    if manifest["failed"]:
        raise typer.Exit(1)


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (RUN/bundle).")],
    onnx: Annotated[Path | None, typer.Option("--onnx", "-o", help="ONNX file to write (OUT_fold_K.onnx when the "
                                                                   "bundle has several folds; default: "
                                                                   "BUNDLE/fold_K.onnx, which --backend onnxruntime "
                                                                   "uses).")] = None,
    fold: Annotated[list[str] | None, typer.Option("--fold", help="Export only this fold (repeatable).")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare ONNX with torch logits.")] = True,
    sample: Annotated[Path | None, typer.Option(help="Image to run the parity check on (default: random data).")]
    = None,
) -> None:
    """Export each fold's network to ONNX (dynamic batch and spatial axes) and check it against torch.

    Example: medseg export runs/hippo/bundle            (then: medseg predict ... --backend onnxruntime)
    Example: medseg export runs/hippo/bundle --onnx hippo.onnx
    """
    from medseg.bundle import load_bundle
    from medseg.export.onnx import export_onnx, parity_check

    loaded = load_bundle(bundle)
    paths = export_onnx(loaded, onnx, folds=fold or None)
    for name, path in paths.items():
        out.print(f"fold {name}: wrote {path}", markup=False, highlight=False, soft_wrap=True)
    if check:
        data = None
        if sample is not None:
            from medseg.io import read_image
            from medseg.preprocess import preprocess_image

            data = preprocess_image(read_image(sample), loaded.plan)[0]
        for result in parity_check(loaded, paths, data):
            out.print(f"parity {result.line()}", markup=False, highlight=False)


@app.command()
def serve(
    bundles: Annotated[list[Path], typer.Argument(help="One or more model bundle folders.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="File holding the API token (else MEDSEG_API_TOKEN).")]
    = None,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (after `medseg export`).")] = "torch",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted (413 beyond).")] = 256,
    timeout: Annotated[float, typer.Option(help="Seconds one case may take (504 beyond).")] = 300,
    concurrency: Annotated[int, typer.Option(help="Cases segmented at once.")] = 1,
    queue: Annotated[int, typer.Option(help="Cases allowed to wait (503 + Retry-After beyond).")] = 4,
    examples: Annotated[Path | None, typer.Option(help="Folder of scans the web viewer offers by name.")] = None,
) -> None:
    """Serve bundles over HTTP: upload a scan, get its mask (OpenAPI docs at /docs, metrics at /metrics).

    Example: MEDSEG_API_TOKEN=secret medseg serve runs/hippo/bundle --host 0.0.0.0 --port 8000
    Then: curl -H "Authorization: Bearer secret" -F file=@scan.nii.gz localhost:8000/v1/models/hippo/segment -o m.nii.gz
    Without a token it listens on loopback addresses only.
    """
    import uvicorn

    from medseg.serve import ServeConfig, check_bind, create_app, load_token

    token = load_token(token_file)
    check_bind(host, token)
    config = ServeConfig(token=token, max_upload_bytes=int(max_upload_mb * 2**20), request_timeout_s=timeout,
                         max_concurrency=concurrency, max_queue=queue, backend=backend, examples=examples)
    api = create_app(bundles, config)
    out.print(f"serving {', '.join(api.state.models)} on http://{host}:{port} (viewer at /, docs at /docs)"
              f"{'' if token else '; no API token: loopback only'}", markup=False, highlight=False)
    uvicorn.run(api, host=host, port=port, log_level="info")


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
) -> None:
    """Score predictions against references per case and class: Dice, IoU, HD95, ASSD, surface Dice, volumes.

    Example: medseg evaluate runs/hippo/predictions data/Task04_Hippocampus/labelsTr -o runs/hippo/evaluation
    """
    from medseg.evaluate import evaluate_folders, write_evaluation

    start = time.perf_counter()
    result = evaluate_folders(prediction, reference, labels=labels, region_dir=region, workers=workers or None,
                              tolerance_mm=tolerance)
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


DEFAULT_CACHE = Path.home() / ".cache" / "medseg"


@app.command()
def demo(
    data: Annotated[Path | None, typer.Option(help="MSD Hippocampus folder (default: $MEDSEG_DATA/msd_hippocampus, "
                                                   "../shared/data/msd_hippocampus, else downloaded).")] = None,
    budget: Annotated[str, typer.Option(help="Training budget.")] = "5m",
    epochs: Annotated[int | None, typer.Option(help="Train this many epochs instead of a budget.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path("runs/demo"),
    cache: Annotated[Path, typer.Option(help="Where a downloaded data set is kept.")] = DEFAULT_CACHE,
    mirror: Annotated[str | None, typer.Option(help="Local folder or URL holding Task04_Hippocampus.tar.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """The job end to end on MSD Hippocampus: check, train within a budget, predict the test list, evaluate, report.

    Example: medseg demo --budget 5m
    """
    from medseg.demo import result_lines, run_demo

    result = run_demo(data, output, parse_duration(budget), cache, mirror, say=out.print, progress_bar=not no_progress,
                      epochs=epochs)
    for line in result_lines(result):
        out.print(line)


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


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1 (tracebacks with --debug)."""
    try:
        result = app(standalone_mode=False)  # returns the exit code of a typer.Exit raised by a command
        sys.exit(result if isinstance(result, int) else 0)
    except MedsegError as exc:
        if _state["debug"]:
            raise
        console.print(f"error: {exc.message}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (typer's own, or click's in older typer) carry an exit code and a message.
        if hasattr(exc, "exit_code") and hasattr(exc, "format_message"):
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                console.print(f"error: {exc.format_message()}", style="red", markup=False, highlight=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
