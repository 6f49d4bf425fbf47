"""`medseg train` and `medseg demo`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

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
from medseg.errors import MedsegError
from medseg.plan.choices import LossName, ModelName, OptimizerName


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (the bundle goes to RUN/bundle).")],
    dim: Annotated[str | None, typer.Option(help="2d or 3d (default: the data's).")] = None,
    fold: Annotated[str, typer.Option(help="Fold K, 'all' folds, or 'none' (all cases, no validation).")] = "0",
    folds: Annotated[int, typer.Option(help="Number of cross-validation folds.")] = 5,
    budget: Annotated[str | None, typer.Option(help="Wall-clock budget per fold, e.g. 15m.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (passes over the training cases).")] = None,
    model: Annotated[ModelName, typer.Option(help="Network.")] = "unet",
    loss: Annotated[LossName, typer.Option(help="Training loss.")] = "dice_ce",
    optimizer: Annotated[OptimizerName | None, typer.Option(help="sgd (poly LR) or adamw (cosine LR); default: AdamW "
                                                                 "on a CPU, SGD on a GPU.")] = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Use this plan instead of planning.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N validations without improvement.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    deterministic: Annotated[bool, typer.Option(help="Deterministic algorithms (slower).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-data cache folder.")] = None,
    workers: Annotated[int, typer.Option(help="Processes for checking and preprocessing (0: automatic).")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    regions: RegionsOption = None,
    init: Annotated[Path | None, typer.Option(
        "--init", help="Fine-tune this bundle: its plan (spacing, normalisation, network) and weights, learning rate "
                       "x0.1, and without --budget/--epochs a quarter of its steps.")] = None,
    label_map: Annotated[str | None, typer.Option(
        "--label-map", help="With --init: bundle label value to data label value, e.g. 1:1,2:3; unmapped labels "
                            "get fresh output rows (default: labels of the same name).")] = None,
    label_codes: LabelCodesOption = None,
    measure: MeasureOption = True,
    device: DeviceOption = "auto",
    compile_network: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the network: steps about 10% faster on a 2-core AMX CPU, after about a "
                          "minute of compiling the first time (cached after).")] = False,
) -> None:
    """Train a model: check, plan, preprocess (cached), train, write RUN/bundle.

    Example: medseg train data/Task04_Hippocampus -o runs/hippo --budget 15m

    Fine-tuning: medseg train data/site_b -o runs/site_b --init runs/hippo/bundle
    """
    from medseg.bundle import METRICS_FILE
    from medseg.io.label_codes import load_label_codes
    from medseg.train import TrainConfig, TrainRequest
    from medseg.train import train as run_training
    from medseg.train.finetune import parse_label_map

    if budget is None and epochs is None and init is None:
        raise MedsegError("say how long to train", "medseg train", "add --budget 15m or --epochs N")
    if label_map and init is None:
        raise MedsegError("--label-map maps a bundle's labels", "--label-map", "use it with --init BUNDLE")
    request = TrainRequest(data=data, run_dir=output, dim=parse_dim(dim), fold=fold, folds=folds, model=model,
                           loss=loss, optimizer=optimizer, plan_path=plan_file, cache_root=cache,
                           workers=workers or None, progress_bar=not no_progress, regions_file=regions,
                           init=init, label_map=parse_label_map(label_map),
                           label_codes=load_label_codes(label_codes), measure=measure)
    config = TrainConfig(epochs=epochs, budget_s=parse_duration(budget) if budget else None, seed=seed,
                         patience=patience, deterministic=deterministic, resume=resume, device=device,
                         compile=compile_network)
    bundle = run_training(request, config)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        metrics = json.loads((bundle / METRICS_FILE).read_text())
        for name, m in metrics.get("folds", {}).items():
            dice = ", ".join(f"{k}: {v:.4f}" for k, v in m.get("val_dice", {}).items())
            out.print(f"fold {name}: {m.get('steps')} steps in {m.get('elapsed_s')} s; validation Dice {dice or 'n/a'}")
        out.print(f"bundle written to {bundle}")


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

