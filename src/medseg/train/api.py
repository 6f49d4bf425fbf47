"""``medseg train`` as a function a notebook can call: check, plan, preprocess, train folds, write the bundle."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medseg.bundle import (
    METRICS_FILE,
    POSTPROCESS_FILE,
    RUN_FINGERPRINT_FILE,
    load_bundle,
    write_bundle_fold,
    write_drift_reference,
    write_lineage,
    write_model_card,
)
from medseg.data import CheckReport, Splits, check_dataset, discover_dataset, load_splits, make_splits, write_splits
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.io.label_codes import LabelCodes
from medseg.plan import (
    LossName,
    Machine,
    ModelName,
    OptimizerName,
    Plan,
    code_labels,
    fingerprint_from_report,
    make_plan,
)
from medseg.postprocess import PostprocessConfig, save_postprocessing
from medseg.preprocess import load_cached, prepare_cache
from medseg.runtime import device_type_of, resolve_device
from medseg.train.calibrate import CalibrationSample, fit_calibration
from medseg.train.finalize import (
    TTA_MIN_GAIN,
    choose_for_folds,
    choose_without_validation,
    evaluate_fold,
    measure_tta,
)
from medseg.train.finetune import LR_SCALE, fine_tune_config, fine_tune_plan, init_from_parent
from medseg.train.hooks import CurveHook, LogHook, ProgressHook
from medseg.train.loop import TrainConfig, Trainer, is_main_process
from medseg.train.measure import measured_plan

log = logging.getLogger("medseg.train")

@dataclass
class TrainRequest:
    data: Path
    run_dir: Path
    dim: int | None = None
    fold: str = "0"  # "K" or "all" (every fold in turn) or "none" (all training cases, no validation)
    folds: int = 5
    model: ModelName = "unet"
    loss: LossName = "dice_ce"
    optimizer: OptimizerName | None = None  # None: the plan's choice (AdamW on CPU, SGD on GPU)
    plan_path: Path | None = None
    cache_root: Path | None = None
    workers: int | None = None
    check: CheckReport | None = None  # `medseg check` already run on `data` (the demo): reused, not read again
    progress_bar: bool = True
    regions_file: Path | None = None  # region labels for a data set that declares none (see medseg.data.regions)
    init: Path | None = None  # fine-tune this bundle (see medseg.train.finetune); its plan replaces planning
    label_map: dict[int, int] | None = None  # with init: bundle label value -> data label value
    lr_scale: float = LR_SCALE  # with init: the bundle's learning rate times this
    label_codes: LabelCodes | None = None  # DICOM SEG codes kept in the plan (medseg.io.label_codes), over its own
    measure: bool = True  # with a budget: time candidate networks here and keep the best (medseg.train.measure)


def default_cache_root() -> Path:
    return Path.home() / ".cache" / "medseg" / "preprocessed"


def prepare_run(request: TrainRequest, budget_s: float | None = None,
                device: str = "auto") -> tuple[Plan, Splits, Path, dict[str, Any]]:
    """Check the data, plan and preprocess it (rank 0 only under DDP); returns plan, splits, cache and summary.

    A new plan is made for ``device`` (``--device``) and, for a budget of ``budget_s`` seconds (a fold), measured
    there (medseg.train.measure) unless ``request.measure`` is off; ``--plan`` and ``--init`` plans are used as
    they are."""
    run = request.run_dir
    run.mkdir(parents=True, exist_ok=True)
    report = request.check or check_dataset(discover_dataset(request.data, regions_file=request.regions_file),
                                                workers=request.workers)
    dataset = report.dataset
    write_text_atomic(run / "check.json", json.dumps(report.to_dict(), indent=1))
    report.raise_if_failed()
    for warning in report.warnings:
        log.warning(warning.line())
    fingerprint = fingerprint_from_report(report)
    write_text_atomic(run / RUN_FINGERPRINT_FILE, json.dumps(fingerprint.to_dict()))
    if request.init is not None:
        if request.plan_path:
            raise MedsegError("--init takes the bundle's plan", request.plan_path, "give --init or --plan, not both")
        plan = fine_tune_plan(load_bundle(request.init), fingerprint, request.label_map, request.lr_scale)
    elif request.plan_path:
        plan = Plan.load(request.plan_path)
    else:
        plan = make_plan(fingerprint, dim=request.dim, machine=Machine.detect(device), model=request.model,
                         loss=request.loss, optimizer=request.optimizer)
        if budget_s is not None and request.measure:
            plan = measured_plan(plan, budget_s, resolve_device(device))
    plan = code_labels(plan, request.label_codes)  # also for --init (new label names) and --plan (old plans)
    plan.save(run / "plan.json")
    splits_path = run / "splits.json"
    splits = make_splits(dataset, folds=request.folds, seed=0)
    for note in splits.notes if request.fold != "none" else []:  # fold none uses no fold: nothing to say
        log.warning(note)
    write_splits(splits, splits_path)
    cache = prepare_cache(dataset, plan, request.cache_root or default_cache_root(), workers=request.workers,
                          source_root=dataset.root)
    return plan, splits, cache, report.summary()


def _init_distributed(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        on_gpu = device_type_of(device) == "cuda"
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=60))
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))


def train(request: TrainRequest, config: TrainConfig) -> Path:
    """Train the requested fold(s) and write ``run_dir/bundle``; returns the bundle folder."""
    device_type_of(config.device)  # an impossible --device is refused before any work
    _init_distributed(config.device)
    run = Path(request.run_dir)
    if is_main_process():
        prepared = prepare_run(request, config.budget_s, config.device) if not config.resume \
            else _reload_run(request)
        payload = [str(prepared[2])]
    else:
        payload = [""]
    if dist.is_initialized():
        dist.broadcast_object_list(payload, src=0)
        if not is_main_process():
            prepared = _reload_run(request, Path(payload[0]))
    plan, splits, cache, summary = prepared
    folds = splits.fold_names(request.fold)
    bundle = run / "bundle"
    results = _FoldResults()
    for fold in folds:
        train_ids, val_ids = splits.cases(fold)
        results.trained_on.update(train_ids)
        train_cases = [load_cached(cache, cid) for cid in train_ids]
        val_cases = [load_cached(cache, cid) for cid in val_ids]
        folder = run / f"fold_{fold}"
        hooks = [LogHook(folder), CurveHook(folder / "curve.png")]
        if request.progress_bar:
            hooks.insert(0, ProgressHook())
        trainer = Trainer(plan, train_cases, val_cases, folder, fine_tune_config(config, plan, len(train_cases)),
                          fold_name=fold, hooks=hooks)
        if request.init is not None and not config.resume:
            fresh = init_from_parent(trainer.model, plan, request.init)
            log.info("fold %s starts from bundle %s%s", fold, plan.init_from,
                     f"; fresh output rows for class(es) {fresh}" if fresh else "")
        metrics = trainer.run()
        if is_main_process():
            results.add(fold, trainer, metrics, val_cases)
            write_bundle_fold(bundle, plan, fold, folder / "last.safetensors", metrics)
    if is_main_process():
        save_postprocessing(results.postprocessing(plan, cache), bundle / POSTPROCESS_FILE)
        _finish_bundle(run, bundle, plan, summary, results.tta, results.inference(plan))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return bundle


@dataclass
class _FoldResults:
    """What the trained folds leave for the bundle: validation predictions, TTA checks, calibration samples."""

    pooled: list[tuple[str, Any]] = field(default_factory=list)  # final validation predictions of every fold
    held_out: dict[str, Any] = field(default_factory=dict)  # case id -> its cached case
    trained_on: set[str] = field(default_factory=set)
    tta: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, CalibrationSample] = field(default_factory=dict)  # fold -> its final validation's voxels
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)  # fold -> the temperatures fitted on them

    def add(self, fold: str, trainer: Trainer, metrics: dict[str, Any], val_cases: list) -> None:
        """Measure fold ``fold`` after training (calibration goes into its ``metrics`` too)."""
        plan, folder = trainer.plan, trainer.folder
        if trainer.calibration_sample is not None:
            self.samples[fold] = trainer.calibration_sample
            metrics["calibration"] = self.fits[fold] = _calibrate(self.samples[fold], plan, [fold])
        if val_cases:
            self.tta[fold] = measure_tta(trainer.model, plan, val_cases, trainer.precision)
            evaluate_fold(plan, trainer.final_predictions, {c.case_id: c for c in val_cases}, folder / "validation")
            self.pooled += trainer.final_predictions
            self.held_out.update({c.case_id: c for c in val_cases})

    def postprocessing(self, plan: Plan, cache: Path) -> PostprocessConfig:
        """nnU-Net's choice on the pooled validation; with no fold held out, the training masks' anatomy."""
        if self.pooled:
            return choose_for_folds(plan, self.pooled, self.held_out)
        return choose_without_validation(plan, [load_cached(cache, cid) for cid in sorted(self.trained_on)])

    def inference(self, plan: Plan) -> dict[str, Any]:
        if len(self.fits) == 1:  # the pooled fit is the one fold's fit: not fitted again
            return {"calibration": next(iter(self.fits.values()))}
        if self.samples:
            return {"calibration": _calibrate(CalibrationSample.join(list(self.samples.values())), plan,
                                              list(self.samples))}
        return {}


def _calibrate(sample: CalibrationSample, plan: Plan, folds: list[str]) -> dict[str, Any]:
    """Temperatures fitted on the validation voxels of ``folds`` (see medseg.train.calibrate), as metrics.json
    holds them."""
    calibration = fit_calibration(sample, plan, folds)
    log.info("calibration on fold(s) %s: temperatures %s; ECE %s -> %s", ", ".join(folds),
             calibration.temperatures, calibration.ece_before, calibration.ece_after)
    return calibration.to_dict()


def _finish_bundle(run: Path, bundle: Path, plan: Plan, summary: dict[str, Any], tta: dict[str, Any],
                   inference: dict[str, Any]) -> None:
    """The TTA decision (with ``inference``'s other results: the calibration), drift reference, lineage (version)
    and model card of a bundle whose folds are written."""
    all_metrics = json.loads((bundle / METRICS_FILE).read_text())
    if tta or inference:
        # a fold whose plan mirrors no axis (labels told apart by side) measured no TTA: it counts as no gain
        gains = [t["dice_tta"] - t["dice_plain"] for t in tta.values() if "dice_tta" in t]
        use_tta = bool(gains) and bool(np.nanmean(gains) > TTA_MIN_GAIN)
        all_metrics["inference"] = {"tta": use_tta, "tta_check": tta} | inference
        write_text_atomic(bundle / METRICS_FILE, json.dumps(all_metrics, indent=1) + "\n")
    fingerprint = None
    if (run / RUN_FINGERPRINT_FILE).exists():  # the bundle carries what drift checks need (self-contained)
        fingerprint = json.loads((run / RUN_FINGERPRINT_FILE).read_text())
        write_drift_reference(bundle, fingerprint)
    lineage = write_lineage(bundle, plan, fingerprint)
    write_model_card(bundle, plan, summary, all_metrics, " ".join(["medseg", *sys.argv[1:]]), lineage)


def _reload_run(request: TrainRequest, cache: Path | None = None) -> tuple[Plan, Splits, Path, dict]:
    run = request.run_dir
    if not (run / "plan.json").exists():
        raise MedsegError("has no plan.json to resume", run, "start without --resume")
    plan = Plan.load(run / "plan.json")
    splits = load_splits(run / "splits.json")
    summary = json.loads((run / "check.json").read_text())["summary"] if (run / "check.json").exists() else {}
    if cache is None:
        from medseg.preprocess import cache_dir_for

        cache = cache_dir_for(plan, request.cache_root or default_cache_root(), Path(request.data))
    return plan, splits, cache, summary

