"""Temperature scaling fitted at the end of training, on voxels of the held-out fold.

The formulation (one temperature per predicted class, or per region, which leaves every label as it was) and
where the result lives are described in :mod:`medseg.infer.calibration`; this module samples the voxels and
fits. The final validation already computes each validation case's logits, so sampling them there
(:func:`sample_case`) costs no extra forward pass; the fit then takes well under a second.

Two samples a case, both drawn with a fixed seed:

* the *fit* sample, stratified by predicted class: at most ``FIT_VOXELS_PER_CLASS`` voxels of each class the case
  is predicted to hold (all of them when fewer), so a small structure's voxels are not drowned by background and
  a large case does not outweigh the others;
* the *evaluation* sample, uniform: at most ``EVAL_VOXELS`` voxels, on which the ECE and NLL before and after
  are reported (the figure an unweighted voxel-wise ECE over the whole case estimates). It is drawn from the same
  cases the temperatures are fitted on, so it flatters the fit a little; ``benchmarks/uncertainty_ranking.py``
  measures the ECE on a test list.

Each temperature minimises the mean negative log-likelihood of its voxels, which is convex in 1/T: a bounded
scalar search (scipy's Brent) over T in [``T_MIN``, ``T_MAX``] finds it. A class predicted on fewer than
``MIN_FIT_VOXELS`` sampled voxels keeps T = 1 (nothing to fit on); the bounds keep a class the fold never got
wrong from a temperature near 0 (certainty no test set would bear out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor

from medseg.evaluate.calibration import ECE_BINS, expected_calibration_error, top_label
from medseg.infer.calibration import Calibration, scale_logits
from medseg.plan import Plan

FIT_VOXELS_PER_CLASS = 2000  # a case and predicted class
EVAL_VOXELS = 20_000  # a case
POOL_VOXELS = 200_000  # a case: the uniform candidates both samples are drawn from (all voxels of smaller cases)
MIN_FIT_VOXELS = 50
T_MIN, T_MAX = 0.05, 20.0


@dataclass
class VoxelSample:
    logits: Tensor  # (C, N) float32
    seg: Tensor  # (N,) int64 reference label values

    @classmethod
    def join(cls, samples: Sequence[VoxelSample]) -> VoxelSample:
        return cls(torch.cat([s.logits for s in samples], 1), torch.cat([s.seg for s in samples]))


@dataclass
class CalibrationSample:
    fit: VoxelSample
    evaluation: VoxelSample

    @classmethod
    def join(cls, samples: Sequence[CalibrationSample]) -> CalibrationSample:
        return cls(VoxelSample.join([s.fit for s in samples]), VoxelSample.join([s.evaluation for s in samples]))


def sample_case(logits: Tensor, seg: Tensor, predicted: Tensor, generator: torch.Generator) -> CalibrationSample:
    """The fit and evaluation voxels of one validation case: ``logits`` ``(C, *S)``, its reference ``seg`` and
    ``predicted`` label maps ``(*S)`` on the network grid."""
    flat_logits = logits.reshape(logits.shape[0], -1).float()
    flat_seg = seg.reshape(-1).long()
    flat_pred = predicted.reshape(-1).long()
    total = flat_pred.numel()
    if total <= POOL_VOXELS:
        pool = torch.randperm(total, generator=generator)
    else:  # uniform with replacement: no permutation of a large CT's voxels
        pool = torch.randint(total, (POOL_VOXELS,), generator=generator)
    fit = torch.cat([_class_voxels(flat_pred, pool, value, generator)
                     for value in torch.unique(flat_pred).tolist()])
    evaluation = pool[:EVAL_VOXELS]
    return CalibrationSample(VoxelSample(flat_logits[:, fit], flat_seg[fit]),
                             VoxelSample(flat_logits[:, evaluation], flat_seg[evaluation]))


def _class_voxels(predicted: Tensor, pool: Tensor, value: int, generator: torch.Generator) -> Tensor:
    """At most ``FIT_VOXELS_PER_CLASS`` random voxels predicted as ``value``: from the pool when it holds enough,
    else from the whole case (the class is then rare, so listing its voxels is cheap)."""
    in_pool = pool[predicted[pool] == value]
    if len(in_pool) >= FIT_VOXELS_PER_CLASS:
        return in_pool[:FIT_VOXELS_PER_CLASS]
    every = (predicted == value).nonzero().squeeze(1)
    if len(every) > FIT_VOXELS_PER_CLASS:
        every = every[torch.randperm(len(every), generator=generator)[:FIT_VOXELS_PER_CLASS]]
    return every


def region_targets(seg: Tensor, plan: Plan) -> Tensor:
    """``(R, N)`` region membership of reference label values ``(N,)``."""
    return torch.stack([torch.isin(seg, torch.tensor(r.values)) for r in plan.regions]).float()


def mean_nll(logits: Tensor, seg: Tensor, plan: Plan) -> float:
    """Mean negative log-likelihood a decision: softmax cross-entropy a voxel, or binary a voxel and region."""
    if plan.regions:
        return float(F.binary_cross_entropy_with_logits(logits.double(), region_targets(seg, plan).double()))
    return float(F.cross_entropy(logits.T.double(), seg))


def sample_ece(logits: Tensor, seg: Tensor, plan: Plan) -> float | None:
    """ECE of the sampled decisions (None without any)."""
    regions = bool(plan.regions)
    probabilities = torch.sigmoid(logits) if regions else torch.softmax(logits, 0)
    target = region_targets(seg, plan) if regions else seg
    value = expected_calibration_error(*top_label(probabilities, target, regions), bins=ECE_BINS)
    return None if np.isnan(value) else round(value, 6)


def _best_temperature(nll: Callable[[float], float]) -> float:
    """The temperature minimising ``nll(1 / T)`` within [T_MIN, T_MAX]."""
    result = minimize_scalar(nll, bounds=(1 / T_MAX, 1 / T_MIN), method="bounded", options={"xatol": 1e-4})
    return float(np.clip(1.0 / float(result.x), T_MIN, T_MAX))


def fit_temperatures(sample: VoxelSample, plan: Plan) -> list[float]:
    """One temperature per output channel: per predicted class over the voxels predicted as it (softmax), or per
    region over every voxel (sigmoid); 1.0 where fewer than ``MIN_FIT_VOXELS`` voxels carry it."""
    logits, seg = sample.logits.double(), sample.seg
    temperatures = [1.0] * plan.num_outputs
    if plan.regions:
        targets = region_targets(seg, plan).double()
        for r in range(plan.num_outputs if logits.shape[1] >= MIN_FIT_VOXELS else 0):
            z, y = logits[r], targets[r]
            temperatures[r] = _best_temperature(
                lambda beta, z=z, y=y: float(F.binary_cross_entropy_with_logits(z * beta, y)))
        return temperatures
    predicted = logits.argmax(0)
    for k in range(plan.num_outputs):
        chosen = predicted == k
        if int(chosen.sum()) >= MIN_FIT_VOXELS:
            z, y = logits[:, chosen].T, seg[chosen]
            temperatures[k] = _best_temperature(lambda beta, z=z, y=y: float(F.cross_entropy(z * beta, y)))
    return temperatures


def _valid(sample: VoxelSample, plan: Plan) -> VoxelSample:
    keep = (sample.seg >= 0) & (sample.seg < plan.num_classes)
    return VoxelSample(sample.logits[:, keep], sample.seg[keep])


def fit_calibration(sample: CalibrationSample, plan: Plan, folds: Sequence[str]) -> Calibration:
    """Temperatures fitted on ``sample.fit``, with ECE and NLL before and after on ``sample.evaluation``."""
    fit, evaluation = _valid(sample.fit, plan), _valid(sample.evaluation, plan)
    with torch.no_grad():
        temperatures = fit_temperatures(fit, plan)
        regions = bool(plan.regions)
        scaled = scale_logits(evaluation.logits, torch.tensor(temperatures), regions)
        has_eval = evaluation.seg.numel() > 0
        return Calibration(
            method="temperature_per_region" if regions else "temperature_per_predicted_class",
            temperatures=[round(t, 5) for t in temperatures], folds=list(folds), fit_voxels=int(fit.seg.numel()),
            eval_voxels=int(evaluation.seg.numel()), bins=ECE_BINS,
            ece_before=sample_ece(evaluation.logits, evaluation.seg, plan),
            ece_after=sample_ece(scaled, evaluation.seg, plan),
            nll_before=round(mean_nll(evaluation.logits, evaluation.seg, plan), 6) if has_eval else None,
            nll_after=round(mean_nll(scaled, evaluation.seg, plan), 6) if has_eval else None)
