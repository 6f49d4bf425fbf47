"""Time-to-Dice: train on split.json's train list of MSD Hippocampus within a budget, score the test list.

Usage: python benchmarks/train_hippocampus.py [--budget 15m]
Trains fold 'none' (all 208 training cases, no validation fold) and scores the 52 test cases by sliding-window
prediction on the preprocessed grid (spacing is 1 mm isotropic, so only the crop differs from the original
grid), mean foreground Dice over anterior and posterior.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import data_set, emit

from medseg.bundle import load_bundle
from medseg.cli import parse_duration
from medseg.data import discover_dataset
from medseg.data.dataset import Case
from medseg.evaluate import dice_per_class
from medseg.infer import predict_logits
from medseg.preprocess import load_cached, prepare_cache
from medseg.train import TrainConfig, TrainRequest, train

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", default="15m")
    args = parser.parse_args()
    root = data_set("msd_hippocampus")
    split = json.loads((root / "split.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="medseg_bench_"))
    # A view of the data set holding only the training list: the test cases are never seen in training.
    view = work / "train_only"
    for sub in ("imagesTr", "labelsTr"):
        (view / sub).mkdir(parents=True)
        for case in split["train"]:
            (view / sub / f"{case}.nii.gz").symlink_to(root / sub / f"{case}.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop("training", None)
    meta["numTraining"] = len(split["train"])
    (view / "dataset.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    bundle_dir = train(TrainRequest(data=view, run_dir=work / "run", fold="none", cache_root=work / "cache"),
                       TrainConfig(budget_s=parse_duration(args.budget)))
    train_seconds = time.perf_counter() - start
    bundle = load_bundle(bundle_dir)
    model = bundle.load_models()[0]
    dataset = discover_dataset(root)
    test_cases = [c for c in dataset.cases if c.case_id in set(split["test"])]
    test_view = type(dataset)(root, dataset.layout, [Case(c.case_id, c.image_files, c.label_file)
                                                      for c in test_cases], labels=dataset.labels)
    cache = prepare_cache(test_view, bundle.plan, work / "cache_test")
    scores = {v: [] for v in bundle.plan.foreground_labels}
    predict_start = time.perf_counter()
    for case in test_cases:
        cached = load_cached(cache, case.case_id)
        logits = predict_logits(model, torch.from_numpy(np.array(cached.data)), bundle.plan.patch_size,
                                precision=bundle.plan.precision)
        for value, score in dice_per_class(logits.argmax(0), torch.from_numpy(np.array(cached.seg, np.int64)),
                                           bundle.plan.foreground_labels).items():
            scores[value].append(score)
    per_class = {bundle.plan.labels[v]: round(float(np.mean(s)), 4) for v, s in scores.items()}
    emit("train_hippocampus", {
        "budget": args.budget, "train_seconds": round(train_seconds, 1),
        "steps": bundle.metrics["folds"]["none"]["steps"], "test_cases": len(test_cases),
        "dice": per_class, "mean_dice": round(float(np.mean(list(per_class.values()))), 4),
        "predict_seconds_per_case": round((time.perf_counter() - predict_start) / len(test_cases), 3),
        "plan": {"patch": bundle.plan.patch_size, "batch": bundle.plan.batch_size, "features": bundle.plan.features,
                 "precision": bundle.plan.precision},
    })
    shutil.rmtree(work, ignore_errors=True)
