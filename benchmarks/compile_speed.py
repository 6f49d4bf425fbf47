"""torch.compile against eager for the planned training step: compile time, step time, and whether it pays back.

Usage: python benchmarks/compile_speed.py [--dataset msd_hippocampus] [--steps 12] [--mode default]

The network of the data set's table plan is trained on random data of its patch and batch, in the precision this
CPU runs natively (bf16 on AVX512-BF16/AMX, else fp32), once eager and once with ``torch.compile(network)``
(Inductor, C++ code generation with the system's gcc), their timed steps alternating in rounds. The compiled
variant's first steps include compiling (seconds with Inductor's on-disk cache warm, minutes cold); ``compile_s``
is their time beyond compiled steps. ``break_even_steps`` is how many steps the faster compiled step
needs to win that back, set against the steps a 5- and a 15-minute budget gets.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import data_set, emit

from medseg.data import check_dataset, discover_dataset
from medseg.losses import build_plan_loss
from medseg.models import build_network
from medseg.plan import fingerprint_from_report, make_plan
from medseg.runtime import keep_freed_memory, runtime_precision
from medseg.train.measure import build_optimizer, optimisation_step, random_batch, wider

FIRST_STEPS = 3  # compiled: forward and backward graphs are built over the first steps
ROUND_STEPS = 5  # eager and compiled steps alternate in rounds of this many, so both see the same machine


class Stepper:
    """One network's training step on fixed random data of the plan's patch and batch."""

    def __init__(self, network, plan, precision: str) -> None:
        self.network, self.precision = network, precision
        self.loss = build_plan_loss(plan)
        self.optimizer = build_optimizer(plan, network)
        self.images, self.labels = random_batch(plan, torch.device("cpu"))

    def times(self, steps: int) -> list[float]:
        result = []
        for _ in range(steps):
            start = time.perf_counter()
            optimisation_step(self.network, self.loss, self.optimizer, self.images, self.labels, torch.device("cpu"),
                              self.precision, clip=None)
            result.append(time.perf_counter() - start)
        return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="msd_hippocampus")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each, after the first ones")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--widen", type=int, default=1, help="widths x this (as the measured planner may choose)")
    args = parser.parse_args()
    keep_freed_memory()  # as the trainer does
    plan = make_plan(fingerprint_from_report(check_dataset(discover_dataset(data_set(args.dataset)))))
    if args.widen > 1:
        plan = wider(plan, args.widen) or plan
    precision = runtime_precision(plan.precision)
    torch.manual_seed(0)
    eager_stepper = Stepper(build_network(plan).train(), plan, precision)
    torch.manual_seed(0)
    compiled_stepper = Stepper(torch.compile(build_network(plan).train(), mode=args.mode), plan, precision)
    eager_stepper.times(FIRST_STEPS)  # warm-up
    start = time.perf_counter()
    compiled_first = compiled_stepper.times(FIRST_STEPS)
    first_s = time.perf_counter() - start
    eager: list[float] = []
    compiled: list[float] = []
    for _ in range(max(1, args.steps // ROUND_STEPS)):
        eager += eager_stepper.times(ROUND_STEPS)
        compiled += compiled_stepper.times(ROUND_STEPS)
    eager_step = statistics.median(eager)
    compiled_step = statistics.median(compiled)
    compile_s = first_s - FIRST_STEPS * compiled_step
    saving = eager_step - compiled_step
    break_even = compile_s / saving if saving > 0 else None
    budgets = {}
    for minutes in (5, 15):
        budget = minutes * 60.0
        budgets[f"{minutes}m"] = {"eager_steps": int(budget / eager_step),
                                  "compiled_steps": max(0, int((budget - compile_s) / compiled_step))}
    emit("compile_speed", {
        "dataset": args.dataset, "mode": args.mode, "precision": precision, "patch": plan.patch_size,
        "batch": plan.batch_size, "features": plan.features,
        "eager_step_s": round(eager_step, 4), "compiled_step_s": round(compiled_step, 4),
        "speedup": round(eager_step / compiled_step, 3), "compile_s": round(compile_s, 1),
        "first_steps_s": [round(t, 2) for t in compiled_first], "timed_steps": len(eager),
        "eager_step_spread_s": [round(min(eager), 4), round(max(eager), 4)],
        "compiled_step_spread_s": [round(min(compiled), 4), round(max(compiled), 4)],
        "break_even_steps": round(break_even) if break_even is not None else None, "budget_steps": budgets,
    })
