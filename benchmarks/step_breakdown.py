"""Where a training step's time goes: drawing patches, augmenting them, and the optimisation step itself.

Usage: python benchmarks/step_breakdown.py [--dataset msd_hippocampus] [--budget 5m] [--steps 60]

Plans the data set as `medseg train --budget` would (measured on this machine, medseg.train.measure), caches it,
then runs ``--steps`` steps of the real trainer's parts one after another and times each part (median over the
steps after 5 warm-up steps). ``input_share`` is the fraction of a step spent on patches and augmentation: what a
background worker could hide at best if it ran on a core the step does not use. Also prints the step's GFLOP
(torch's FlopCounterMode) and the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import data_set, emit
from torch.utils.flop_counter import FlopCounterMode

from medseg.augment import BatchAugmenter
from medseg.cli.app import parse_duration
from medseg.data import check_dataset, discover_dataset
from medseg.losses import build_plan_loss
from medseg.models import build_network
from medseg.plan import Machine, fingerprint_from_report, make_plan
from medseg.preprocess import load_cached, prepare_cache
from medseg.runtime import keep_freed_memory, runtime_precision
from medseg.train.measure import measured_plan, memory_format_of, optimisation_step
from medseg.train.sampler import PatchSampler


def median(values: list[float]) -> float:
    return float(np.median(values))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="msd_hippocampus")
    parser.add_argument("--budget", default="5m", help="the budget the plan is measured for")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    keep_freed_memory()
    root = data_set(args.dataset)
    report = check_dataset(discover_dataset(root))
    plan = measured_plan(make_plan(fingerprint_from_report(report), machine=Machine.detect()),
                         parse_duration(args.budget))
    device = torch.device("cpu")
    precision = runtime_precision(plan.precision, device.type)
    with tempfile.TemporaryDirectory() as tmp:
        cache = prepare_cache(report.dataset, plan, tmp)
        cases = [load_cached(cache, c.case_id) for c in report.dataset.cases if c.label_file is not None]
        sampler = PatchSampler(cases, plan.patch_size, plan.batch_size, plan.foreground_oversample, seed=0)
        augmenter = BatchAugmenter(plan.augment, plan.dim, seed=0)
        layout = memory_format_of(plan)
        network = build_network(plan).to(memory_format=layout).train()
        loss = build_plan_loss(plan)
        optimizer = torch.optim.AdamW(network.parameters(), lr=plan.learning_rate)
        parts: dict[str, list[float]] = {"patches_s": [], "augment_s": [], "optimise_s": []}
        for step in range(args.steps + 5):
            begin = time.perf_counter()
            images, labels = sampler.next_batch()
            drawn = time.perf_counter()
            with torch.no_grad():
                images, labels = augmenter(images, labels)
            augmented = time.perf_counter()
            optimisation_step(network, loss, optimizer, images.contiguous(memory_format=layout), labels, device,
                              precision, clip=12.0)
            done = time.perf_counter()
            if step >= 5:
                for name, seconds in zip(parts, (drawn - begin, augmented - drawn, done - augmented)):
                    parts[name].append(seconds)
        with FlopCounterMode(display=False) as counter:
            optimisation_step(network, loss, optimizer, images.contiguous(memory_format=layout), labels, device,
                              precision, clip=None)
    figures = {name: round(median(values), 4) for name, values in parts.items()}
    step = sum(figures.values())
    gflop = counter.get_total_flops() / 1e9
    emit("step_breakdown", {"dataset": args.dataset, "budget": args.budget, "threads": torch.get_num_threads(),
                            "patch": plan.patch_size, "batch": plan.batch_size, "features": plan.features,
                            "precision": precision, "memory_format": plan.memory_format, **figures,
                            "step_s": round(step, 4),
                            "input_share": round((figures["patches_s"] + figures["augment_s"]) / step, 3),
                            "gflop_per_step": round(gflop, 2),
                            "achieved_gflops": round(gflop / figures["optimise_s"], 1)})
