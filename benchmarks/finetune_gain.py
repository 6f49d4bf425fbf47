"""What fine-tuning a bundle on a few of a site's cases is worth (issue 22's target).

Usage: python benchmarks/finetune_gain.py [--dataset jsrt_scr] [--parent 5m] [--short 2m] [--full 15m]
       [--site-cases 10] [--seed 0] [--arms parent,finetune,scratch,full]

split.json's train list is cut in two halves by a seeded shuffle: half A stands for the data a bundle was trained
on elsewhere, half B for a hospital's own cases. Four trainings, one after another (never at the same time), all
on fold 'none' (no validation fold, the whole budget trains) and all scored by the real pipeline (`predict` then
`evaluate`) on split.json's test list, which none of them sees:

* ``parent``: medseg's own plan, trained --parent on half A;
* ``finetune``: `medseg train --init PARENT` (the parent's plan and weights, the fine-tuning learning rate) for
  --short on --site-cases cases of half B;
* ``scratch``: medseg's own plan from random weights, --short on the same site cases;
* ``full``: medseg's own plan, --full on the whole train list (the model the fine-tuned one is measured against).

Targets: finetune - scratch >= 0.05 mean Dice, and full - finetune <= 0.02.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from _common import data_set, emit
from train_budget import link_view, score_on_test_list

from medseg.bundle import load_bundle
from medseg.cli import parse_duration
from medseg.data import discover_dataset
from medseg.train import TrainConfig, TrainRequest, train

TARGET_GAIN, TARGET_GAP = 0.05, 0.02


def train_and_score(name: str, root: Path, layout: str, cases: list, test_cases: list, budget: str, seed: int,
                    work: Path, init: Path | None = None) -> tuple[dict, Path]:
    view = link_view(root, cases, work / name / "data", layout)
    start = time.perf_counter()
    bundle_dir = train(TrainRequest(data=view, run_dir=work / name / "run", fold="none", init=init,
                                    cache_root=work / "cache" / name, progress_bar=False),
                       TrainConfig(seed=seed, budget_s=parse_duration(budget)))
    seconds = time.perf_counter() - start
    bundle = load_bundle(bundle_dir)
    summary, _ = score_on_test_list(bundle, root, test_cases, work / name / "scored")
    figures = {"budget": budget, "cases": len(cases), "train_seconds": round(seconds, 1),
               "steps": bundle.metrics["folds"]["none"]["steps"], "mean_dice": round(summary["mean_dice"], 4),
               "dice": {n: round(s["dice"]["mean"], 4) for n, s in summary["per_class"].items()},
               "learning_rate": bundle.plan.learning_rate, "fine_tune": bundle.plan.fine_tune or None}
    print(json.dumps({"arm": name, **figures}), flush=True)
    return figures, bundle_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="jsrt_scr")
    parser.add_argument("--parent", default="5m", help="the parent's budget, on half A")
    parser.add_argument("--short", default="2m", help="fine-tuning and from-scratch budget, on the site cases")
    parser.add_argument("--full", default="15m", help="the full-data model's budget")
    parser.add_argument("--site-cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the halves' shuffle and every training's seed")
    parser.add_argument("--arms", default="parent,finetune,scratch,full")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if "finetune" in arms and "parent" not in arms:
        raise SystemExit("the finetune arm needs the parent arm")
    root = data_set(args.dataset)
    dataset = discover_dataset(root)
    split = json.loads((root / "split.json").read_text())
    by_id = {c.case_id: c for c in dataset.cases}
    train_ids = list(split["train"])
    random.Random(args.seed).shuffle(train_ids)
    half_a, half_b = train_ids[: len(train_ids) // 2], train_ids[len(train_ids) // 2:]
    site = half_b[: args.site_cases]
    test_cases = [by_id[c] for c in split["test"]]
    work = Path(tempfile.mkdtemp(prefix="medseg_bench_"))
    results: dict[str, dict] = {}
    parent_dir = None
    common = {"root": root, "layout": dataset.layout, "test_cases": test_cases, "seed": args.seed, "work": work}
    if "parent" in arms:
        results["parent"], parent_dir = train_and_score("parent", cases=[by_id[c] for c in half_a],
                                                        budget=args.parent, **common)
    if "finetune" in arms:
        results["finetune"], _ = train_and_score("finetune", cases=[by_id[c] for c in site], budget=args.short,
                                                 init=parent_dir, **common)
    if "scratch" in arms:
        results["scratch"], _ = train_and_score("scratch", cases=[by_id[c] for c in site], budget=args.short,
                                                **common)
    if "full" in arms:
        results["full"], _ = train_and_score("full", cases=[by_id[c] for c in split["train"]], budget=args.full,
                                             **common)
    dice = {arm: r["mean_dice"] for arm, r in results.items()}
    verdict = {}
    if {"finetune", "scratch"} <= set(dice):
        verdict["gain_over_scratch"] = round(dice["finetune"] - dice["scratch"], 4)
        verdict["gain_target_met"] = verdict["gain_over_scratch"] >= TARGET_GAIN
    if {"finetune", "full"} <= set(dice):
        verdict["gap_to_full"] = round(dice["full"] - dice["finetune"], 4)
        verdict["gap_target_met"] = verdict["gap_to_full"] <= TARGET_GAP
    emit("finetune_gain", {"dataset": args.dataset, "seed": args.seed, "half_a": len(half_a),
                           "half_b": len(half_b), "site_cases": site, "test_cases": len(test_cases),
                           "arms": results, **verdict})
    shutil.rmtree(work, ignore_errors=True)
