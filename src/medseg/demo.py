"""The whole job on MSD Hippocampus in one call: find the data, check, train, predict, evaluate, report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

TASK = "Task04_Hippocampus"


@dataclass
class DemoResult:
    data: Path
    synthetic: bool
    bundle: Path
    predictions: Path
    evaluation: Path
    report: Path
    dice: dict[str, float] = field(default_factory=dict)
    mean_dice: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)


def local_candidates(data: Path | None) -> list[Path]:
    """--data, else $MEDSEG_DATA/msd_hippocampus, else ../shared/data/msd_hippocampus beside the checkout."""
    candidates = [data] if data else []
    if os.environ.get("MEDSEG_DATA"):
        candidates.append(Path(os.environ["MEDSEG_DATA"]) / "msd_hippocampus")
    candidates += [Path.cwd().parent / "shared" / "data" / "msd_hippocampus",
                   Path(__file__).resolve().parents[3] / "shared" / "data" / "msd_hippocampus"]
    return candidates


def find_data(data: Path | None, cache: Path, mirror: str | None, say: Callable[[str], None]) -> tuple[Path, bool]:
    """The hippocampus set (local, else downloaded and verified); else a synthetic phantom set, said plainly."""
    from medseg.data.fetch import fetch_msd_task, make_phantom_dataset

    for candidate in local_candidates(data):
        if candidate and (candidate / "imagesTr").is_dir():
            return candidate, False
    if data is not None:
        raise MedsegError("has no imagesTr/ folder", data, "give a Decathlon Task04_Hippocampus folder")
    say(f"no local copy of MSD Hippocampus; downloading {TASK} into {cache} (checksum-verified)")
    try:
        return fetch_msd_task(TASK, cache, mirror=mirror), False
    except MedsegError as error:
        say(f"download failed: {error.message}")
    phantom = cache / "synthetic_phantom"
    say(f"using a SYNTHETIC phantom data set in {phantom}: figures below are not medical results")
    if not (phantom / "imagesTr").is_dir():
        make_phantom_dataset(phantom)
    return phantom, True


def _test_reference_view(data: Path, test_ids: list[str], folder: Path) -> Path:
    """A folder of links to the test cases' label files, so evaluation scores exactly the test list."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in test_ids:
        source = data / "labelsTr" / f"{case_id}.nii.gz"
        link = folder / source.name
        if source.exists() and not link.exists():
            link.symlink_to(source.resolve())
    return folder


def run_demo(data: Path | None, output: Path, budget_s: float | None, cache: Path, mirror: str | None = None,
             say: Callable[[str], None] = print, progress_bar: bool = True, epochs: int | None = None) -> DemoResult:
    """The whole job; trains for ``budget_s`` seconds of wall clock, or ``epochs`` epochs when given instead."""
    from medseg.bundle import load_bundle
    from medseg.data import check_dataset, discover_dataset
    from medseg.evaluate import evaluate_folders, write_evaluation
    from medseg.infer.cohort import collect_inputs, predict_paths
    from medseg.report import build_report
    from medseg.train import TrainConfig, TrainRequest, train

    seconds: dict[str, float] = {}
    root, synthetic = find_data(data, cache, mirror, say)
    say(f"[1/5] checking {root}")
    start = time.perf_counter()
    report = check_dataset(discover_dataset(root))
    seconds["check"] = round(time.perf_counter() - start, 1)
    report.raise_if_failed()
    say(f"      {report.summary()['readable_cases']} cases, no problems ({seconds['check']} s)")
    length = f"{epochs} epoch(s)" if epochs else f"{(budget_s or 0) / 60:.1f} min"
    say(f"[2/5] training fold 0 for {length} (plan sized for this machine; test cases held out)")
    start = time.perf_counter()
    bundle_dir = train(TrainRequest(data=root, run_dir=output, progress_bar=progress_bar,
                                    cache_root=cache / "preprocessed", check=report),
                       TrainConfig(epochs=epochs, budget_s=None if epochs else budget_s))
    seconds["train"] = round(time.perf_counter() - start, 1)
    bundle = load_bundle(bundle_dir)
    fold = bundle.metrics["folds"]["0"]
    # the step count explains a low Dice on a slow machine better than any figure after it
    say(f"      {fold['steps']} steps, validation Dice {fold['val_dice_mean']:.3f} on {fold['cases']} cases "
        f"({seconds['train']} s with preprocessing)")
    test_ids = (report.dataset.split or {}).get("test", [])  # split.json, as discovery read and checked it
    if not test_ids:
        raise MedsegError("has no test list in split.json", root, "add split.json with a 'test' list of case ids")
    say(f"[3/5] predicting the {len(test_ids)} test cases")
    start = time.perf_counter()
    predictions = output / "predictions"
    manifest = predict_paths(bundle, collect_inputs([root], test_list=True), predictions)
    seconds["predict"] = round(time.perf_counter() - start, 1)
    say(f"      {len(manifest['cases'])} masks in {predictions} ({seconds['predict']} s, TTA "
        f"{'on' if manifest['tta'] else 'off'})")
    say("[4/5] evaluating against the reference masks (Dice, HD95, ASSD, surface Dice, volumes)")
    start = time.perf_counter()
    references = _test_reference_view(root, test_ids, output / "test_references")
    evaluation = output / "evaluation"
    result = evaluate_folders(predictions, references, labels=root / "dataset.json" if (root / "dataset.json").exists()
                              else None)
    write_evaluation(result, evaluation)
    summary = json.loads((evaluation / "summary.json").read_text())
    seconds["evaluate"] = round(time.perf_counter() - start, 1)
    say("[5/5] writing the HTML report")
    html = build_report(output, output / "report.html", evaluation_dir=evaluation)
    dice = {name: float(stats["dice"]["mean"]) for name, stats in summary["per_class"].items()}
    return DemoResult(root, synthetic, bundle_dir, predictions, evaluation, Path(html), dice,
                      float(summary["mean_dice"]), seconds)


def result_lines(result: DemoResult) -> list[str]:
    lines = [f"Dice {name}: {value:.4f}" for name, value in result.dice.items()]
    note = " (SYNTHETIC data)" if result.synthetic else ""
    lines.append(f"mean foreground Dice on the test list: {result.mean_dice:.4f}{note}")
    lines.append(f"report: {result.report}")
    lines.append(f"bundle: {result.bundle}")
    return lines


def as_dict(result: DemoResult) -> dict[str, Any]:
    return {"data": str(result.data), "synthetic": result.synthetic, "dice": result.dice,
            "mean_dice": result.mean_dice, "seconds": result.seconds, "report": str(result.report)}
