"""The names a plan may choose from: models, losses, optimisers, precisions, as ``Literal`` types.

One source for the plan's validation (:func:`check_choice`, called when a :class:`~medseg.plan.Plan` is made or
loaded), the CLI's ``--model/--loss/--optimizer`` choices and the model and loss registries (whose keys a test
holds equal to these). Only ``typing`` is imported, so the CLI can read them without loading the planner.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from medseg.errors import MedsegError

ModelName = Literal["unet", "resunet", "fcn", "resnet_unet"]
LossName = Literal["dice_ce", "ce", "dice", "focal", "tversky", "dice_bce"]  # dice_bce: region plans only
OptimizerName = Literal["sgd", "adamw"]
# "bf16": autocast where the hardware computes bf16 natively; "fp16": autocast with a gradient scaler, for GPUs
# without bf16 (medseg.runtime.runtime_precision decides what a machine really runs)
Precision = Literal["fp32", "bf16", "fp16"]
MemoryFormat = Literal["contiguous", "channels_last"]  # channels_last: NHWC / NDHWC tensors and weights

MODEL_CHOICES: tuple[str, ...] = get_args(ModelName)
LOSS_CHOICES: tuple[str, ...] = get_args(LossName)
OPTIMIZER_CHOICES: tuple[str, ...] = get_args(OptimizerName)
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)
MEMORY_FORMAT_CHOICES: tuple[str, ...] = get_args(MemoryFormat)


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a :class:`MedsegError` naming ``field``, the bad ``value`` and the allowed ``choices``."""
    if value not in choices:
        raise MedsegError(f"plan field {field!r} has unknown value {value!r}", fix=f"use one of: {', '.join(choices)}")
