"""Training throughput with the planned network: samples/s and % of fp32 matmul peak, fp32 and bf16 autocast.

Usage: python benchmarks/train_throughput.py [--dataset msd_hippocampus|jsrt_scr|drive]

FLOPs of a step are counted by torch's FlopCounterMode (forward + backward); the peak is measured here with a
2048x2048 fp32 matmul, so the fraction is relative to this machine, not a datasheet.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import data_set, emit
from torch.utils.flop_counter import FlopCounterMode

from medseg.data import check_dataset, discover_dataset
from medseg.losses import build_loss
from medseg.models import build_network
from medseg.plan import fingerprint_from_report, make_plan
from medseg.runtime import autocast_context, keep_freed_memory


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(model, loss, x, y, precision) -> float:
    with FlopCounterMode(display=False) as counter:
        with autocast_context(torch.device("cpu"), precision):
            out = model(x)
        loss(out, y).backward()
    return float(counter.get_total_flops())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="msd_hippocampus")
    args = parser.parse_args()
    keep_freed_memory()  # as the trainer does
    root = data_set(args.dataset)
    plan = make_plan(fingerprint_from_report(check_dataset(discover_dataset(root))))
    results = {}
    for precision in ("fp32", "bf16"):
        model = build_network(plan).train()
        loss = build_loss(plan.loss, num_classes=plan.num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate)
        x = torch.randn(plan.batch_size, plan.channels, *plan.patch_size)
        y = torch.randint(0, plan.num_classes, (plan.batch_size, 1, *plan.patch_size))
        flops = step_flops(model, loss, x, y, precision)
        times = []
        for i in range(12):
            start = time.perf_counter()
            opt.zero_grad()
            with autocast_context(torch.device("cpu"), precision):
                out = model(x)
            loss(out, y).backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - start)
        times.sort()
        median = times[len(times) // 2]
        results[precision] = {"step_s_median": round(median, 4), "step_s_best": round(times[0], 4),
                              "samples_per_s": round(plan.batch_size / median, 2),
                              "gflop_per_step": round(flops / 1e9, 2),
                              "achieved_gflops": round(flops / median / 1e9, 1)}
    peak = matmul_peak()
    for r in results.values():
        r["fraction_of_fp32_matmul_peak"] = round(r["achieved_gflops"] * 1e9 / peak, 3)
    emit("train_throughput", {"dataset": args.dataset, "threads": torch.get_num_threads(),
                              "patch": plan.patch_size, "batch": plan.batch_size, "features": plan.features,
                              "fp32_matmul_peak_gflops": round(peak / 1e9, 1), **results})
