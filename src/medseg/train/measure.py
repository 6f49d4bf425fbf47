"""Plan from measurement: time real training steps of a few candidate networks on this machine, keep the widest
that still gets enough steps in the budget.

The planner's tables (medseg.plan.planner) size a network for a slow fp32-only CPU. Machines differ from one
session to the next: on a 2-core host with AMX a bf16 hippocampus step of widths 8-64 took 0.17 s, one of widths
16-128 0.32-0.39 s and one of widths 32-256 about 1.0 s, and the same steps in fp32 about twice as long (measured
2026-12-03 with this module's timer). So a fixed width either wastes a fast chip's budget on small,
memory-bound layers or gives a slow one too few steps.

What is measured, in order, each for about ``MEASURE_SECONDS`` after ``WARMUP_STEPS`` untimed steps, with the
real optimiser step (forward, loss, backward, AdamW/SGD) on random data of the plan's patch and batch:

1. the table's network in fp32 and, where the device computes bf16 natively, in bf16: the faster precision wins;
2. that precision in the channels-last layout: kept where it is faster;
3. wider networks (widths x2, x4) in the chosen precision and layout, while each still gets ``MIN_STEPS`` steps
   in the budget; the first that does not stops the search (wider ones are slower still).

The widest network with at least ``MIN_STEPS`` steps in ``TRAIN_SHARE`` of the budget is chosen, else the fastest.
Why ``MIN_STEPS``: on MSD Hippocampus three seeds at about 1,600 steps agreed within 0.004 Dice (0.862-0.866),
where at 150 steps they spread over 0.20-0.72 (benchmarks/results.md): below that a network is still finding its
classes, and width cannot help it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.losses import build_plan_loss
from medseg.models import build_network
from medseg.plan import Plan
from medseg.plan.planner import estimate_training_bytes, max_features_for, physical_memory
from medseg.runtime import autocast_context, native_bf16, to_device

MIN_STEPS = 1500
TRAIN_SHARE = 0.85  # of a budget, spent in steps: validations, checkpoints and the final validation take the rest
WIDTH_FACTORS = (2, 4)
MEASURE_SECONDS = 1.0
WARMUP_STEPS = 2  # the first steps allocate and pick oneDNN kernels
MIN_TIMED_STEPS, MAX_TIMED_STEPS = 3, 30
MEMORY_SHARE = 0.4  # of physical memory, for one training step's activations (as the planner allows)


@dataclass(frozen=True)
class StepTiming:
    """One candidate's measured training step."""

    features: list[int]
    batch_size: int
    precision: str
    memory_format: str
    seconds_per_step: float  # median of the timed steps
    steps_timed: int

    def to_dict(self) -> dict:
        return asdict(self)


Timer = Callable[[Plan, torch.device, str, str], StepTiming]


def memory_format_of(plan: Plan) -> torch.memory_format:
    """The torch layout a plan's ``memory_format`` names, for its dimension."""
    if plan.memory_format == "channels_last":
        return torch.channels_last_3d if plan.dim == 3 else torch.channels_last
    return torch.contiguous_format


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 training (fp16 gradients underflow without one); None for bf16 and fp32."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def optimisation_step(network: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                      labels: torch.Tensor, device: torch.device, precision: str, clip: float | None,
                      scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One forward, loss, backward and optimiser step: the step the trainer runs and the planner times.

    With ``scaler`` (fp16), the loss is scaled before backward and gradients unscaled before clipping; a step
    whose gradients overflowed is skipped and the scale lowered (PyTorch's AMP recipe)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, precision):
        output = network(images)
    value = loss(output, labels)
    if scaler is None:
        value.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
        optimizer.step()
        return value.detach()
    scaler.scale(value).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    return value.detach()


def build_optimizer(plan: Plan, network: nn.Module) -> torch.optim.Optimizer:
    """The plan's optimiser for ``network``: SGD (Nesterov, momentum 0.99, nnU-Net's) or AdamW; ``Plan`` has
    checked that the name is one of its ``OptimizerName`` choices. Shared by the trainer and the step timer."""
    params = network.parameters()
    if plan.optimizer == "sgd":
        return torch.optim.SGD(params, lr=plan.learning_rate, momentum=0.99, nesterov=True,
                               weight_decay=plan.weight_decay)
    return torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=plan.weight_decay)


def random_batch(plan: Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of the plan's batch and patch on ``device`` (seeded): what a timed step trains on."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(plan.batch_size, plan.channels, *plan.patch_size, generator=generator)
    labels = torch.randint(0, plan.num_classes, (plan.batch_size, 1, *plan.patch_size), generator=generator)
    return to_device(images, device), to_device(labels, device)


def time_training_step(plan: Plan, device: torch.device, precision: str, memory_format: str) -> StepTiming:
    """Median seconds of a training step of ``plan``'s network, on random data of its patch and batch."""
    candidate = replace(plan, precision=precision, memory_format=memory_format)  # type: ignore[arg-type]
    layout = memory_format_of(candidate)
    network = build_network(candidate).to(device).to(memory_format=layout).train()
    loss = build_plan_loss(plan)
    optimizer = build_optimizer(plan, network)
    images, labels = random_batch(plan, device)
    images = images.contiguous(memory_format=layout)
    scaler = grad_scaler(device, precision)
    times: list[float] = []
    start = time.perf_counter()
    for step in range(WARMUP_STEPS + MAX_TIMED_STEPS):
        begin = time.perf_counter()
        optimisation_step(network, loss, optimizer, images, labels, device, precision, clip=None, scaler=scaler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - begin)
            if len(times) >= MIN_TIMED_STEPS and time.perf_counter() - start > MEASURE_SECONDS:
                break
    times.sort()
    return StepTiming(list(plan.features), plan.batch_size, precision, memory_format,
                      round(times[len(times) // 2], 5), len(times))


def affordable_steps(timing: StepTiming, budget_s: float) -> int:
    """Steps a budget buys at this timing (its ``TRAIN_SHARE``)."""
    return int(budget_s * TRAIN_SHARE / max(timing.seconds_per_step, 1e-9))


def choose(timings: list[StepTiming], budget_s: float) -> tuple[StepTiming, str]:
    """The widest candidate with at least ``MIN_STEPS`` steps in the budget, else the fastest; and why."""
    if not timings:
        raise MedsegError("no candidate network was measured", fix="report this as a medseg bug")
    enough = [t for t in timings if affordable_steps(t, budget_s) >= MIN_STEPS]
    if enough:
        best = max(enough, key=lambda t: (t.features[0], -t.seconds_per_step))
        return best, (f"widest network with at least {MIN_STEPS} steps in the budget: about "
                      f"{affordable_steps(best, budget_s)} steps of {best.seconds_per_step:.3f} s")
    best = min(timings, key=lambda t: t.seconds_per_step)
    return best, (f"no candidate reaches {MIN_STEPS} steps in the budget; the fastest gets about "
                  f"{affordable_steps(best, budget_s)} steps of {best.seconds_per_step:.3f} s")


def wider(plan: Plan, factor: int) -> Plan | None:
    """``plan`` with widths times ``factor`` (capped as the planner caps them); None where nothing changes or its
    activations would not fit ``MEMORY_SHARE`` of this machine's memory."""
    cap = max_features_for(plan.device_kind, plan.dim)
    features = [min(width * factor, cap) for width in plan.features]
    if features == plan.features:
        return None
    if estimate_training_bytes(plan.patch_size, plan.strides, features, plan.batch_size) > \
            MEMORY_SHARE * physical_memory():
        return None
    return replace(plan, features=features)


def measured_plan(plan: Plan, budget_s: float, device: torch.device | None = None,
                  timer: Timer = time_training_step) -> Plan:
    """``plan`` with the precision, layout and widths that measured best for ``budget_s`` seconds of training on
    ``device`` (this machine's GPU or CPU); what was timed and why it chose so is in ``plan.measurements``."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    precisions = ["fp32", "bf16"] if native_bf16(device.type) else ["fp32", "fp16"] if device.type == "cuda" \
        else ["fp32"]
    timings = [timer(plan, device, precision, "contiguous") for precision in precisions]
    fastest = min(timings, key=lambda t: t.seconds_per_step)
    timings.append(timer(plan, device, fastest.precision, "channels_last"))
    fastest = min(timings, key=lambda t: t.seconds_per_step)
    precision, layout = fastest.precision, fastest.memory_format
    candidates = [fastest]
    for factor in WIDTH_FACTORS:
        if affordable_steps(candidates[-1], budget_s) < MIN_STEPS:
            break  # a wider one is slower still
        widened = wider(plan, factor)
        if widened is None:
            break
        candidates.append(timer(widened, device, precision, layout))
    timings += candidates[1:]
    chosen, reason = choose(candidates, budget_s)
    measurements = {
        "device": device.type, "budget_s": budget_s, "train_share": TRAIN_SHARE, "min_steps": MIN_STEPS,
        "seconds": round(time.perf_counter() - start, 2), "timings": [t.to_dict() for t in timings],
        "chosen": chosen.to_dict(), "reason": reason,
    }
    note = (f"measured on this {device.type}: {precision}, {layout}, widths {chosen.features[0]}-"
            f"{chosen.features[-1]} ({reason})")
    return replace(plan, features=list(chosen.features), precision=precision,  # type: ignore[arg-type]
                   memory_format=layout, measurements=measurements,  # type: ignore[arg-type]
                   notes=[*plan.notes, note])
