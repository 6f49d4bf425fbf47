"""Time-to-Dice: train on a data set's split.json train list within a budget, score its test list.

Usage: python benchmarks/train_budget.py --dataset msd_hippocampus --budget 15m [--keep DIR]
       (msd_hippocampus, jsrt_scr, drive, ircadb_ct or brats_2ch; DRIVE is scored inside its FOV masks)
       --regions FILE trains and scores regions (e.g. ../examples/brats_regions.json for brats_2ch)
Ablations: --epochs N trains a fixed number of steps instead of a budget (N epochs of at most 50 steps), so that
runs compare on a machine whose speed varies; --set KEY=JSON changes a field of the plan medseg makes (dotted
for nested fields), e.g. --set 'augment.mirror_axes=[0,1,2]'; --seed N repeats a run with other random weights,
patches and augmentations (the spread between seeds is what a single run's figure is worth).
Trains fold 'none' (every training case, no validation fold: the whole budget goes to training; --fold K trains
fold K of 5 instead, with validation and calibration), then runs the
real pipeline on the test cases: `predict` (original geometry, default TTA) and `evaluate` (Dice, HD95, ...).
The test cases are never seen in training: training reads a folder of links to the train list only.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from _common import data_set, emit

from medseg.bundle import POSTPROCESS_FILE, Bundle, load_bundle
from medseg.cli import parse_duration
from medseg.data import check_dataset, discover_dataset
from medseg.evaluate import evaluate_folders
from medseg.infer.cohort import PredictInput, predict_paths
from medseg.infer.predict import PredictOptions
from medseg.plan import Machine, Plan, fingerprint_from_report, make_plan
from medseg.postprocess import load_postprocessing
from medseg.train import TrainConfig, TrainRequest, train


def link_view(root: Path, cases: list, out: Path, layout: str, with_labels: bool = True) -> Path:
    image_dir, label_dir = ("imagesTr", "labelsTr") if layout == "decathlon" else ("images", "masks")
    (out / image_dir).mkdir(parents=True)
    (out / label_dir).mkdir(parents=True)
    for case in cases:
        for f in case.image_files:
            (out / image_dir / f.name).symlink_to(f.resolve())
        if with_labels and case.label_file:
            (out / label_dir / case.label_file.name).symlink_to(case.label_file.resolve())
    meta_file = root / "dataset.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        meta.pop("training", None)
        meta.pop("test", None)
        meta["numTraining"] = len(cases)
        (out / "dataset.json").write_text(json.dumps(meta))
    return out


def score_on_test_list(bundle: Bundle, root: Path, test_cases: list, work: Path, regions: Path | None = None,
                       postprocess: bool = True) -> tuple[dict, dict]:
    """The real pipeline on the test cases: `predict` (original geometry, the bundle's default TTA and, unless
    ``postprocess`` is off, its post-processing) and `evaluate` (inside DRIVE's FOV masks where the set has them);
    the evaluation summary and predictions.json."""
    references = work / "references"
    references.mkdir(parents=True)
    for case in test_cases:
        (references / case.label_file.name).symlink_to(case.label_file.resolve())
    inputs = [PredictInput(c.case_id, list(c.image_files)) for c in test_cases]
    manifest = predict_paths(bundle, inputs, work / "predictions", PredictOptions(postprocess=postprocess))
    region = root / "fov" if (root / "fov").is_dir() else None
    result = evaluate_folders(work / "predictions", references, labels=dict(bundle.plan.labels), region_dir=region,
                              regions_file=regions)
    return result.summary(), manifest


def plan_with_changes(view: Path, changes: list[str], out: Path, regions: Path | None = None) -> Path:
    """medseg's own plan for ``view`` with ``KEY=JSON`` changes (dotted keys reach into nested fields)."""
    fingerprint = fingerprint_from_report(check_dataset(discover_dataset(view, regions_file=regions)))
    data = make_plan(fingerprint, machine=Machine.detect()).to_dict()
    for change in changes:
        key, _, value = change.partition("=")
        *parents, leaf = key.split(".")
        target = data
        for name in parents:
            target = target[name]
        if leaf not in target:
            raise SystemExit(f"--set {change}: the plan has no field {key!r}")
        target[leaf] = json.loads(value)
    return Plan.from_dict(data).save(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="msd_hippocampus")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--keep", type=Path, help="copy the bundle here (for the prediction benchmarks)")
    parser.add_argument("--epochs", type=int, help="train this many epochs (<= 50 steps each) instead of a budget")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="change a plan field")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, sampling, augmentation)")
    parser.add_argument("--regions", type=Path, help="train and score the regions of this JSON file")
    parser.add_argument("--fold", default="none",
                        help="none (all training cases, no validation) or K of 5 folds (a validation fold: "
                             "the bundle then has calibration temperatures, for uncertainty_ranking.py)")
    parser.add_argument("--reverse", action="store_true", help="swap split.json's train and test lists")
    parser.add_argument("--no-measure", action="store_true",
                        help="keep the planner's table widths (no timing of candidate networks at plan time)")
    args = parser.parse_args()
    root = data_set(args.dataset)
    dataset = discover_dataset(root)
    split = json.loads((root / "split.json").read_text())
    by_id = {c.case_id: c for c in dataset.cases}
    train_cases, test_cases = [by_id[c] for c in split["train"]], [by_id[c] for c in split["test"]]
    if args.reverse:
        train_cases, test_cases = test_cases, train_cases
    work = Path(tempfile.mkdtemp(prefix="medseg_bench_"))
    view = link_view(root, train_cases, work / "train_only", dataset.layout)
    plan_path = plan_with_changes(view, args.set, work / "plan.json", args.regions) if args.set else None
    length = {"epochs": args.epochs} if args.epochs else {"budget_s": parse_duration(args.budget)}
    config = TrainConfig(seed=args.seed, **length)
    start = time.perf_counter()
    bundle_dir = train(TrainRequest(data=view, run_dir=work / "run", fold=args.fold, cache_root=work / "cache",
                                    plan_path=plan_path, progress_bar=False, regions_file=args.regions,
                                    measure=not args.no_measure), config)
    train_seconds = time.perf_counter() - start
    train_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB, training and caching
    bundle = load_bundle(bundle_dir)
    summary, manifest = score_on_test_list(bundle, root, test_cases, work / "scored", args.regions)
    dice = {name: round(stats["dice"]["mean"], 4) for name, stats in summary["per_class"].items()}
    post_file = bundle.folder / POSTPROCESS_FILE
    chosen = load_postprocessing(post_file) if post_file.is_file() else None
    raw = {}
    if chosen is not None and not chosen.is_noop():  # the same bundle without it: what post-processing adds
        raw_summary, _ = score_on_test_list(bundle, root, test_cases, work / "scored_raw", args.regions, False)
        raw = {"dice_without_postprocess": {name: round(stats["dice"]["mean"], 4)
                                            for name, stats in raw_summary["per_class"].items()},
               "mean_dice_without_postprocess": round(raw_summary["mean_dice"], 4)}
    hd95 = {name: stats["hd95_mm"]["mean"] for name, stats in summary["per_class"].items()}
    emit(f"train_{args.dataset}", {
        "budget": f"{args.epochs} epochs" if args.epochs else args.budget, "plan_changes": args.set, "seed": args.seed,
        "regions": [r.name for r in bundle.plan.regions],
        "train_seconds": round(train_seconds, 1), "trained_on": [c.case_id for c in train_cases],
        "train_peak_rss_mib": round(train_peak_rss),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "fold": args.fold, "steps": bundle.metrics["folds"][args.fold]["steps"], "test_cases": len(test_cases),
        "dice": dice, "mean_dice": round(summary["mean_dice"], 4), "hd95_mm": hd95,
        "scored_inside": "FOV" if (root / "fov").is_dir() else "whole image",
        "predict_seconds_per_case": round(sum(c["seconds"] for c in manifest["cases"]) / len(test_cases), 3),
        "tta": manifest["tta"],
        "postprocess": None if chosen is None else {
            "keep_largest_foreground": chosen.keep_largest_foreground,
            "keep_largest": [bundle.plan.labels[v] for v in chosen.labels_with("keep_largest")],
            "basis": sorted({d.get("basis", "validation Dice") for d in chosen.decisions})},
        **raw,
        "plan": {"dim": bundle.plan.dim, "patch": bundle.plan.patch_size, "batch": bundle.plan.batch_size,
                 "features": bundle.plan.features, "precision": bundle.plan.precision,
                 "memory_format": bundle.plan.memory_format, "spacing": bundle.plan.target_spacing,
                 "measured_seconds": bundle.plan.measurements.get("seconds"),
                 "measured_choice": bundle.plan.measurements.get("reason")},
        "trained_precision": bundle.metrics["folds"][args.fold].get("precision"),
    })
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(bundle_dir, args.keep)
    shutil.rmtree(work, ignore_errors=True)
