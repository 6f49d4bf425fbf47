"""The training loop: a plain loop over steps, with validation, checkpoints and hooks around it.

Time is the unit a user has, so the schedule runs on *progress* in [0, 1]: with ``--epochs`` progress is
steps done over steps planned; with ``--budget`` it is wall-clock time used (validation and checkpoints
included) over the budget, so the poly learning rate reaches zero exactly when the budget ends.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from medseg.augment import BatchAugmenter
from medseg.errors import MedsegError
from medseg.evaluate import DICE_EMPTY, dice_per_class
from medseg.infer.outputs import labels_from_logits
from medseg.infer.sliding import predict_logits
from medseg.losses import build_plan_loss
from medseg.models import build_network
from medseg.plan import Plan
from medseg.preprocess import CachedCase
from medseg.runtime import keep_freed_memory, resolve_device, runtime_precision, to_device
from medseg.train.calibrate import CalibrationSample, sample_case
from medseg.train.checkpoint import load_state, load_weights, save_state, save_weights
from medseg.train.hooks import Hook
from medseg.train.measure import build_optimizer, grad_scaler, memory_format_of, optimisation_step
from medseg.train.sampler import PatchSampler

POLY_EXPONENT = 0.9
GRAD_CLIP = 12.0
# nnU-Net's epochs are a fixed 250 iterations; a CPU step is ~10x slower, so an epoch here is a pass over the
# training cases capped at 50 steps: validation and early stopping still come often enough to matter.
MAX_EPOCH_STEPS = 50
WARMUP_STEPS = 4  # the first step is slow (allocations, oneDNN kernels); the budget check uses the median of the rest


@dataclass
class TrainConfig:
    epochs: int | None = None
    budget_s: float | None = None
    seed: int = 0
    patience: int | None = None  # validations without improvement before stopping early
    validations: int | None = None  # validations over the run, plus the final one; default: see validation_count
    max_val_cases: int = 16  # intermediate validations use at most this many cases; the final uses all
    checkpoint_every_s: float = 120.0
    deterministic: bool = False
    resume: bool = False
    threads: int | None = None
    steps_per_epoch: int | None = None  # default: one pass over the training cases, at most MAX_EPOCH_STEPS
    device: str = "auto"  # auto (CUDA when present), cpu or cuda: medseg.runtime.resolve_device
    # torch.compile the training network (Inductor). Off by default: on the 2-core AMX host a hippocampus step
    # ran 1.10-1.13x faster compiled, but compiling took 63-92 s with a cold cache (benchmarks/compile_speed.py)
    compile: bool = False


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    best_dice: float = -1.0
    best_step: int = 0
    validations_done: int = 0
    since_best: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class Trainer:
    """Trains one fold. ``run()`` returns the final validation metrics (or an empty dict without validation)."""

    def __init__(self, plan: Plan, train_cases: list[CachedCase], val_cases: list[CachedCase], folder: Path,
                 config: TrainConfig, fold_name: str = "0", hooks: list[Hook] | None = None) -> None:
        self.plan, self.config, self.folder, self.fold_name = plan, config, Path(folder), fold_name
        self.val_cases = val_cases
        self.hooks = (hooks or []) if is_main_process() else []
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.manual_seed(config.seed + rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        # under torchrun each process takes the GPU of its LOCAL_RANK (PyTorch's launch contract)
        self.device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.precision = runtime_precision(plan.precision, self.device.type)
        # fp16 (a GPU without bf16): its scale restarts at PyTorch's default after a resume and settles within a
        # few steps (an overflowing step is skipped, not applied)
        self.scaler = grad_scaler(self.device, self.precision)
        # the layout planning measured faster (medseg.train.measure; contiguous for a plan from the tables)
        self.layout = memory_format_of(plan)
        self.model = build_network(plan).to(self.device).to(memory_format=self.layout)
        self.network: nn.Module = self.model
        if dist.is_initialized():
            self.network = nn.parallel.DistributedDataParallel(self.model)
        if config.compile:  # the weights stay those of self.model: checkpoints and bundles keep their names
            self.network = torch.compile(self.network)  # type: ignore[assignment]
        self.optimizer = build_optimizer(plan, self.model)
        self.loss = build_plan_loss(plan)
        self.sampler = PatchSampler(train_cases, plan.patch_size, plan.batch_size, plan.foreground_oversample,
                                    seed=config.seed * 1000 + rank)
        self.augmenter = BatchAugmenter(plan.augment, plan.dim, seed=config.seed * 1000 + rank)
        self.state = TrainState()
        self.final_predictions: list[tuple[str, np.ndarray]] = []  # (case id, labels) from the final validation
        # voxels of the final validation's logits, for the temperature fit (medseg.train.calibrate)
        self.calibration_sample: CalibrationSample | None = None
        self.steps_per_epoch = config.steps_per_epoch or \
            max(1, min(math.ceil(len(train_cases) / plan.batch_size), MAX_EPOCH_STEPS))
        self.total_steps = (config.epochs or 0) * self.steps_per_epoch
        if config.epochs is None and config.budget_s is None:
            raise MedsegError("neither --epochs nor --budget given", fix="say how long to train, e.g. --budget 15m")
        self._start_time = 0.0
        self._elapsed_before = 0.0
        self._reserve_s = 0.0
        self._step_progress = 0.0

    # ---- set-up -----------------------------------------------------------------------------------------

    def validation_count(self) -> int:
        """Intermediate validations: as asked, else 10 for --epochs and one per 2.5 minutes of a budget (max 10).

        Each costs forward passes over up to ``max_val_cases`` whole cases; in a 5-minute budget ten of them
        would take a fifth of the time that should go to training.
        """
        if self.config.validations is not None:
            return self.config.validations
        if self.config.budget_s is None:
            return 10
        return int(min(10, max(1, self.config.budget_s // 150)))

    def learning_rate(self, progress: float) -> float:
        base = self.plan.learning_rate
        progress = min(max(progress, 0.0), 1.0)
        if self.plan.optimizer == "adamw":
            return base * 0.5 * (1 + math.cos(math.pi * progress))
        return base * (1 - progress) ** POLY_EXPONENT

    # ---- time -------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._start_time

    def progress(self) -> float:
        if self.config.budget_s is not None:
            usable = max(self.config.budget_s - self._reserve_s, 1e-6)
            return self.elapsed() / usable
        return self.state.step / max(self.total_steps, 1)

    # ---- one step ---------------------------------------------------------------------------------------

    def train_step(self) -> float:
        self.network.train()
        images, labels = self.sampler.next_batch()
        with torch.no_grad():
            images, labels = self.augmenter(images, labels)
        images, labels = to_device(images, self.device), to_device(labels, self.device)
        images = images.contiguous(memory_format=self.layout)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self._step_progress if dist.is_initialized() else self.progress())
        loss = optimisation_step(self.network, self.loss, self.optimizer, images, labels, self.device, self.precision,
                                 clip=GRAD_CLIP, scaler=self.scaler)
        self.state.step += 1
        return float(loss)

    # ---- validation -------------------------------------------------------------------------------------

    def validate(self, final: bool = False) -> dict[str, Any]:
        cases = self.val_cases if final else self.val_cases[: self.config.max_val_cases]
        start = time.perf_counter()
        per_class: dict[int, list[float]] = {v: [] for v in self.plan.class_members}
        samples: list[CalibrationSample] = []
        generator = torch.Generator().manual_seed(self.config.seed)
        if final:
            self.final_predictions = []
        for case in cases:
            logits = predict_logits(self.model, torch.from_numpy(np.array(case.data)), self.plan.patch_size,
                                    overlap=self.plan.sliding_window_overlap, precision=self.precision)
            prediction = labels_from_logits(logits, self.plan)
            reference = torch.from_numpy(np.asarray(case.seg, dtype=np.int64))  # read from the cache once
            if final:  # kept (int8, network grid) for post-processing choice and evaluation after training
                self.final_predictions.append((case.case_id, prediction.numpy().astype(np.int8)))
                samples.append(sample_case(logits, reference, prediction, generator))
            scores = dice_per_class(prediction, reference, self.plan.class_members, empty=DICE_EMPTY)
            for value, score in scores.items():
                per_class[value].append(score)
        if final and samples:
            self.calibration_sample = CalibrationSample.join(samples)
        means = {str(v): float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
                 for v, s in per_class.items()}
        record = {
            "step": self.state.step, "elapsed_s": round(self.elapsed(), 2), "final": final, "cases": len(cases),
            "val_dice": means, "val_dice_mean": float(np.nanmean(list(means.values()))), "dice_empty": DICE_EMPTY,
            "seconds": round(time.perf_counter() - start, 2),
        }
        self._reserve_s = max(self._reserve_s, 1.3 * record["seconds"] * (len(self.val_cases) / max(len(cases), 1)))
        return record

    # ---- checkpoints ------------------------------------------------------------------------------------

    def save_checkpoint(self, name: str = "last") -> None:
        if not is_main_process():
            return
        save_weights(self.model, self.folder / f"{name}.safetensors")
        save_state({
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "augmenter": self.augmenter.state_dict(),
            "sampler": json.dumps(self.sampler.state_dict()),
            "train_state": json.dumps(self.state.__dict__),
            "elapsed_s": self.elapsed(),
            "reserve_s": self._reserve_s,
        }, self.folder / f"{name}_state.pt")

    def load_checkpoint(self, name: str = "last") -> None:
        weights, state_path = self.folder / f"{name}.safetensors", self.folder / f"{name}_state.pt"
        if not weights.exists() or not state_path.exists():
            raise MedsegError("has no checkpoint to resume from", self.folder, "start without --resume")
        load_weights(self.model, weights)
        state = load_state(state_path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            self.augmenter.load_state_dict(state["augmenter"])
            self.sampler.load_state_dict(json.loads(state["sampler"]))
            self.state = TrainState(**json.loads(state["train_state"]))
            self._elapsed_before = float(state["elapsed_s"])
            self._reserve_s = float(state["reserve_s"])
        except (KeyError, ValueError, TypeError) as exc:
            raise MedsegError(f"training state is incomplete or foreign ({exc})", state_path,
                              "start without --resume") from None

    # ---- the loop ---------------------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        """Also fixes the progress the next step's learning rate uses; under DDP every rank agrees on both."""
        progress, early = self.progress(), float(self.state.stopped_early)
        if dist.is_initialized():
            shared = torch.tensor([progress, early])
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            progress, early = float(shared[0]), float(shared[1])
        self._step_progress = progress
        return progress >= 1.0 or early > 0

    def _agreed_step_seconds(self, seconds: float) -> float:
        """Under DDP every rank must take the same decision: all check the slowest rank's step time."""
        if not dist.is_initialized():
            return seconds
        value = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    def _check_budget(self, step_seconds: float) -> None:
        """Refuse a budget that cannot train one epoch and validate once, naming the minimum."""
        if self.config.budget_s is None:
            return
        if not self._reserve_s:  # until a validation is timed: forward-only at about a third of a step per batch
            self._reserve_s = 1.5 * step_seconds * len(self.val_cases) / (3 * max(self.plan.batch_size, 1)) + 2.0
        validation = self._reserve_s
        minimum = step_seconds * self.steps_per_epoch + validation
        if self.config.budget_s < minimum:
            raise MedsegError(
                f"a budget of {self.config.budget_s:.0f} s cannot train one epoch here "
                f"({self.steps_per_epoch} steps at {step_seconds:.2f} s, plus validation)",
                fix=f"give at least --budget {math.ceil(minimum)}s",
            )

    def run(self) -> dict[str, Any]:
        keep_freed_memory()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.config.resume:
            self.load_checkpoint()
        self._start_time = time.perf_counter()
        for hook in self.hooks:
            hook.on_start(self)
        validate_every = 1.0 / max(self.validation_count(), 1)
        next_validation = (self.state.validations_done + 1) * validate_every
        last_checkpoint = time.perf_counter()
        # Steps timed to check the budget before it is trusted (a budget only; --epochs has nothing to check).
        warmup = WARMUP_STEPS if self.config.budget_s is not None and not self.config.resume else 0
        warmup_times: list[float] = []
        while self.state.step < warmup or not self._should_stop():
            step_start = time.perf_counter()
            loss = self.train_step()
            if self.state.step <= warmup:
                warmup_times.append(time.perf_counter() - step_start)
                if self.state.step == warmup:
                    self._check_budget(self._agreed_step_seconds(float(np.median(warmup_times[1:]))))
            record = {"step": self.state.step, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                      "elapsed_s": round(self.elapsed(), 2), "progress": self.progress()}
            for hook in self.hooks:
                hook.on_step(self, record)
            if self.val_cases and self.progress() >= next_validation and self.progress() < 1.0 and is_main_process():
                self._intermediate_validation()
                next_validation = (self.state.validations_done + 1) * validate_every
            if time.perf_counter() - last_checkpoint > self.config.checkpoint_every_s:
                self.save_checkpoint()
                last_checkpoint = time.perf_counter()
        return self._finish()

    def _intermediate_validation(self) -> None:
        record = self.validate()
        self.state.validations_done += 1
        self.state.history.append(record)
        if record["val_dice_mean"] > self.state.best_dice:
            self.state.best_dice, self.state.best_step, self.state.since_best = record["val_dice_mean"], \
                self.state.step, 0
            self.save_checkpoint("best")
        else:
            self.state.since_best += 1
            if self.config.patience is not None and self.state.since_best >= self.config.patience:
                self.state.stopped_early = True
        for hook in self.hooks:
            hook.on_validation(self, record)

    def _finish(self) -> dict[str, Any]:
        if dist.is_initialized():
            dist.barrier()
        metrics: dict[str, Any] = {}
        if is_main_process():
            if self.state.stopped_early and (self.folder / "best.safetensors").exists():
                load_weights(self.model, self.folder / "best.safetensors")
            self.save_checkpoint()
            if self.val_cases:
                final = self.validate(final=True)
                self.state.history.append(final)
                for hook in self.hooks:
                    hook.on_validation(self, final)
                metrics = final
            for hook in self.hooks:
                hook.on_end(self)
        metrics = metrics | {"steps": self.state.step, "elapsed_s": round(self.elapsed(), 2),
                             "stopped_early": self.state.stopped_early, "precision": self.precision,
                             "processes": dist.get_world_size() if dist.is_initialized() else 1}
        return metrics
