"""`medseg predict`, `export` and `serve`: using a trained bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.app import DeviceOption, LabelCodesOption, app, console, out


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
                                                      "png, nrrd, mha, dicom-seg or rtstruct (DICOM inputs: a "
                                                      "DICOM SEG or an RT Structure Set referencing the source "
                                                      "series).")] = "same",
    label_codes: LabelCodesOption = None,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (needs `medseg export BUNDLE` first).")] = "torch",
    device: DeviceOption = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Skip cases already complete in the output folder (after "
                                                           "a crash or a kill), predict the rest.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Segment scans with a bundle; masks keep each input's format, size and geometry.

    Example: medseg predict runs/hippo/bundle scans/ -o predictions/
    Writes one mask per case and predictions.json (inputs, outputs, timings, versions). A case that fails is listed
    there and the others go on; exit 1 when a case failed. Under `torchrun --nproc_per_node N -m medseg predict`
    the inputs are split over the N processes.
    """
    from rich.progress import Progress

    from medseg.bundle import load_bundle
    from medseg.infer.cohort import predict_paths
    from medseg.infer.predict import PredictOptions
    from medseg.io.label_codes import load_label_codes
    from medseg.postprocess import PostprocessConfig, load_postprocessing, with_overrides
    from medseg.runtime import DistributedRanks

    codes = load_label_codes(label_codes)  # checked before the model loads
    loaded = load_bundle(bundle)
    chosen: bool | PostprocessConfig = postprocess
    if postprocess and (postprocess_file or keep_largest or fill_holes or min_size is not None):
        base = load_postprocessing(postprocess_file) if postprocess_file else None
        chosen = with_overrides(base, loaded.plan.labels, keep_largest, fill_holes, min_size)
    options = PredictOptions(tta=tta, overlap=None if step is None else 1.0 - step, postprocess=chosen,
                             probabilities=probabilities, uncertainty=uncertainty, backend=backend,
                             device=device)
    with DistributedRanks() as ranks, Progress(console=console, disable=no_progress or ranks.rank > 0,
                                                transient=True) as bar:
        task = bar.add_task("predicting", total=None)

        def advance(done: int, total: int, case: str) -> None:
            bar.update(task, completed=done, total=total, description=f"predicting {case}")

        manifest = predict_paths(loaded, inputs, output, options, fmt=fmt, progress=advance, resume=resume,
                                 rank=ranks.rank, world_size=ranks.world_size, label_codes=codes)
        if ranks.world_size > 1:
            ranks.barrier()
            if ranks.rank > 0:
                return
            from medseg.infer.cohort import merge_manifests

            manifest = merge_manifests(output, ranks.world_size)
    done = manifest["cases"]
    seconds = sum(c["seconds"] for c in done) / max(len(done), 1)
    tta_state = "on" if manifest["tta"] else "off"
    resumed = f", {manifest['resumed']} already done" if manifest.get("resumed") else ""
    out.print(f"{len(done)} case(s) predicted into {output} ({seconds:.2f} s a case, TTA {tta_state}{resumed})")
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
    device: DeviceOption = "auto",
) -> None:
    """Export each fold's network to ONNX (dynamic batch and spatial axes) and check it against torch.

    Example: medseg export runs/hippo/bundle            (then: medseg predict ... --backend onnxruntime)
    Example: medseg export runs/hippo/bundle --onnx hippo.onnx
    """
    from medseg.bundle import load_bundle
    from medseg.export.onnx import export_onnx, parity_check

    loaded = load_bundle(bundle)
    paths = export_onnx(loaded, onnx, folds=fold or None, device=device)
    for name, path in paths.items():
        out.print(f"fold {name}: wrote {path}", markup=False, highlight=False, soft_wrap=True)
    if check:
        data = None
        if sample is not None:
            from medseg.io import read_image
            from medseg.preprocess import preprocess_image

            data = preprocess_image(read_image(sample), loaded.plan)[0]
        for result in parity_check(loaded, paths, data, device=device):
            out.print(f"parity {result.line()}", markup=False, highlight=False)


@app.command()
def serve(
    bundles: Annotated[list[Path], typer.Argument(help="One or more model bundle folders.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="File holding the API token (else MEDSEG_API_TOKEN).")]
    = None,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime (after `medseg export`).")] = "torch",
    device: DeviceOption = "auto",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted (413 beyond).")] = 256,
    timeout: Annotated[float, typer.Option(help="Seconds one case may take (504 beyond).")] = 300,
    concurrency: Annotated[int, typer.Option(help="Cases segmented at once.")] = 1,
    queue: Annotated[int, typer.Option(help="Cases allowed to wait (503 + Retry-After beyond).")] = 4,
    examples: Annotated[Path | None, typer.Option(help="Folder of scans the web viewer offers by name.")] = None,
    job_timeout: Annotated[float, typer.Option(help="Seconds a background job may take (then it fails).")] = 3600,
    max_jobs: Annotated[int, typer.Option(help="Jobs kept (oldest finished dropped first; 503 when all run).")]
    = 100,
    max_voxels: Annotated[int | None, typer.Option(help="Largest upload in voxels, all channels (default: "
                                                        "2 G, enough for any real CT).")] = None,
    corrections: Annotated[Path | None, typer.Option(help="Save the viewer's corrections here, one labelled data "
                                                          "set per model (needs an API token).")] = None,
) -> None:
    """Serve bundles over HTTP: upload a scan, get its mask (OpenAPI docs at /docs, metrics at /metrics).

    Example: MEDSEG_API_TOKEN=secret medseg serve runs/hippo/bundle --host 0.0.0.0 --port 8000
    Then: curl -H "Authorization: Bearer secret" -F file=@scan.nii.gz localhost:8000/v1/models/hippo/segment -o m.nii.gz
    Without a token it listens on loopback addresses only. With --corrections DIR the viewer's brush and eraser
    corrections are saved as cases of DIR/<model>/ that `medseg train DIR/<model> --init BUNDLE` reads as is.
    """
    import uvicorn

    from medseg.io import ReadLimits
    from medseg.serve import ServeConfig, check_bind, create_app, load_token

    token = load_token(token_file)
    check_bind(host, token)
    limits = ReadLimits() if max_voxels is None else ReadLimits(max_voxels=max_voxels)
    config = ServeConfig(token=token, max_upload_bytes=int(max_upload_mb * 2**20), request_timeout_s=timeout,
                         max_concurrency=concurrency, max_queue=queue, backend=backend, examples=examples,
                         job_timeout_s=job_timeout, max_jobs=max_jobs, read_limits=limits, device=device,
                         corrections=corrections)
    api = create_app(bundles, config)
    out.print(f"serving {', '.join(api.state.models)} on http://{host}:{port} (viewer at /, docs at /docs)"
              f"{'' if token else '; no API token: loopback only'}", markup=False, highlight=False)
    uvicorn.run(api, host=host, port=port, log_level="info")

