"""Mirror TTA of one-window images: the case and its mirrored copies in one batch against one pass each.

Usage: python benchmarks/tta_batching.py --bundle DIR [--cases 20]   (a bundle from train_budget.py --keep DIR)
Preprocesses MSD Hippocampus test cases as the bundle's plan says, then times the network part of prediction
(`medseg.infer.sliding.predict_logits` with the plan's mirror axes: one forward of batch 1 + axes) against the
same mirrored passes run one at a time, in the precision this machine runs the plan in. Rounds alternate the two
ways so that drift in the host's speed hits both. Prints the median milliseconds a case of each, and the largest
difference between their logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import data_set, emit

from medseg.bundle import load_bundle
from medseg.infer.sliding import predict_logits
from medseg.io import read_image
from medseg.preprocess import preprocess_image
from medseg.runtime import keep_freed_memory, runtime_precision

ROUNDS = 5


def one_by_one(model: torch.nn.Module, data: torch.Tensor, patch: list[int], axes: tuple[int, ...],
               precision: str) -> torch.Tensor:
    passes = [predict_logits(model, data, patch, precision=precision)]
    passes += [torch.flip(predict_logits(model, torch.flip(data, (a + 1,)), patch, precision=precision), (a + 1,))
               for a in axes]
    return torch.stack(passes).mean(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()
    bundle = load_bundle(args.bundle)
    plan = bundle.plan
    model = bundle.load_models()[0].eval()
    precision = runtime_precision(plan.precision, "cpu")
    root = data_set("msd_hippocampus")
    test = json.loads((root / "split.json").read_text())["test"][:args.cases]
    cases = [torch.from_numpy(preprocess_image(read_image(root / "imagesTr" / f"{c}.nii.gz"), plan)[0].copy())
             for c in test]
    axes = tuple(plan.mirror_axes)
    times: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    worst = 0.0
    for _ in range(ROUNDS):
        for way in times:
            start = time.perf_counter()
            for data in cases:
                if way == "batched":
                    predict_logits(model, data, plan.patch_size, mirror_axes=axes, precision=precision)
                else:
                    one_by_one(model, data, plan.patch_size, axes, precision)
            times[way].append((time.perf_counter() - start) / len(cases))
    for data in cases[:3]:
        a = predict_logits(model, data, plan.patch_size, mirror_axes=axes, precision=precision)
        b = one_by_one(model, data, plan.patch_size, axes, precision)
        worst = max(worst, float((a - b).abs().max()))
    batched, single = statistics.median(times["batched"]), statistics.median(times["one_by_one"])
    emit("tta_batching", {
        "cases": len(cases), "rounds": ROUNDS, "mirror_axes": list(axes), "precision": precision,
        "patch": plan.patch_size, "features": plan.features,
        "ms_per_case_batched": round(batched * 1000, 1), "ms_per_case_one_by_one": round(single * 1000, 1),
        "speedup": round(single / batched, 2), "max_abs_logit_difference": round(worst, 5),
    })
