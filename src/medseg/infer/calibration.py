"""Calibrated probabilities: temperature scaling fitted on the validation fold, applied by the predictor.

**The formulation, and why it leaves every label as it was.** A temperature per class on the softmax
(``softmax(z_k / T_k)``, "vector scaling") reorders the classes of a voxel whenever the temperatures differ, so it
would change the argmax labels that validation Dice was measured on. Calibrating each class's one-vs-rest
probability on its own (``sigmoid(logit(p_k) / T_k)``) keeps no distribution (the K values no longer sum to 1, so
the entropy is not defined) and can reorder classes too. Here each voxel's logits are divided by *one*
temperature, chosen by the class the voxel is predicted as: ``softmax(z / T_argmax(z))``. One positive temperature
a voxel cannot change its argmax, the result is a proper distribution, and each predicted class gets its own
temperature: its confidence is calibrated among the voxels predicted as that class (top-label calibration, Gupta
and Ramdas, ICLR 2022), which is what the expected calibration error measures and what the uncertainty map and
the per-case score read. Region (sigmoid) plans make one binary decision per region, so a temperature per region
(``sigmoid(z_r / T_r)``) keeps ``p > 0.5`` exactly where it was.

The temperatures are a result of training, like the TTA decision: they live in the bundle's ``metrics.json``
under ``inference.calibration`` (see :class:`Calibration`), fitted on the pooled final-validation voxels of every
fold trained (each voxel predicted by the fold that never saw its case); each fold's own fit is in its
``folds.K.calibration`` entry. The predictor applies them to the averaged logits of however many folds it runs,
as post-processing chosen on pooled folds is applied to the ensemble. A bundle without them (trained before they
existed, or on fold ``none`` with no validation) predicts uncalibrated probabilities, as before.

Labels are decided before calibration (the probability thresholds of ``postprocess.json`` were chosen on
uncalibrated probabilities), so calibration changes only the probabilities, the uncertainty map and the score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from medseg.bundle import METRICS_FILE
from medseg.errors import MedsegError
from medseg.plan.fields import check_fields

if TYPE_CHECKING:
    from medseg.bundle import Bundle

Method = Literal["temperature_per_predicted_class", "temperature_per_region"]
CHUNK_VOXELS = 4_000_000  # voxels a class calibrated at once (a temporary of this size per class)
SIGMOID_EPS = 1e-7  # float32 probabilities keep a sigmoid logit to about +-16: clamped there
_FIX = "train the bundle again, or delete inference.calibration from metrics.json to predict uncalibrated"


@dataclass
class Calibration:
    """The fitted temperatures (one per network output channel: label value 0..K-1, or region in plan order) and
    the validation figures of the fit: ECE (:mod:`medseg.evaluate.calibration`, 15 bins) and mean NLL per
    decision, before and after, on a uniform sample of validation voxels."""

    method: Method
    temperatures: list[float]
    folds: list[str] = field(default_factory=list)
    fit_voxels: int = 0
    eval_voxels: int = 0
    bins: int = 15
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, what="calibration")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise MedsegError(f"calibration temperatures {self.temperatures} are not all positive", fix=_FIX)

    @property
    def regions(self) -> bool:
        return self.method == "temperature_per_region"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict):
            raise MedsegError(f"calibration is a JSON {type(data).__name__}, not an object", fix=_FIX)
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise MedsegError(f"calibration is incomplete ({exc})", fix=_FIX) from None


def read_calibration(bundle: Bundle) -> Calibration | None:
    """The bundle's calibration (``metrics.json``, ``inference.calibration``), or None when it has none; a damaged
    one, or one for another number of outputs, is refused naming the file."""
    inference = bundle.metrics.get("inference")
    raw = inference.get("calibration") if isinstance(inference, dict) else None
    if raw is None:
        return None
    path = bundle.folder / METRICS_FILE
    try:
        calibration = Calibration.from_dict(raw)
    except MedsegError as exc:
        raise MedsegError(exc.what, path, exc.fix) from None
    outputs, regions = bundle.plan.num_outputs, bool(bundle.plan.regions)
    if len(calibration.temperatures) != outputs or calibration.regions != regions:
        raise MedsegError(f"calibration has {len(calibration.temperatures)} temperature(s) ({calibration.method}) "
                          f"for a network of {outputs} {'region' if regions else 'softmax'} output(s)", path, _FIX)
    return calibration


def voxel_temperatures(logits: Tensor, temperatures: Tensor, regions: bool) -> Tensor:
    """The temperature dividing each logit of ``(C, ...)`` ``logits`` (or log-probabilities): per region channel,
    or the temperature of each voxel's argmax class (a ``(1, ...)`` map)."""
    temperatures = temperatures.to(logits.dtype)
    if regions:
        return temperatures.view(-1, *([1] * (logits.ndim - 1)))
    return temperatures[logits.argmax(0)].unsqueeze(0)


def scale_logits(logits: Tensor, temperatures: Tensor, regions: bool) -> Tensor:
    """``(C, ...)`` logits divided by their temperatures (a new tensor; same argmax, same signs)."""
    return logits / voxel_temperatures(logits, temperatures, regions)


def calibrate_probabilities_(probabilities: Tensor, calibration: Calibration) -> Tensor:
    """Calibrate ``(C, *spatial)`` softmax or sigmoid probabilities in place, in chunks along the first spatial
    axis (no second K-map copy of a big CT), and return them.

    From probabilities rather than logits: ``log p`` differs from the logits by a constant a voxel, which the
    softmax ignores; float32 keeps log-probabilities down to about -87 and sigmoid logits to about +-16, beyond
    which a voxel is certain either way and stays so.
    """
    temperatures = torch.as_tensor(calibration.temperatures, dtype=probabilities.dtype)
    plane = max(1, probabilities[0, 0].numel()) if probabilities.ndim > 2 else 1
    step = max(1, CHUNK_VOXELS // plane)
    for start in range(0, probabilities.shape[1], step):
        part = probabilities[:, start:start + step]  # a view: written back in place
        if calibration.regions:
            part.copy_(torch.sigmoid(scale_logits(torch.logit(part, eps=SIGMOID_EPS), temperatures, True)))
        else:
            logs = part.clamp_min(torch.finfo(part.dtype).tiny).log_()
            part.copy_(torch.softmax(scale_logits(logs, temperatures, False), dim=0))
    return probabilities
