"""Fingerprint a data set and plan preprocessing, network and training for this machine.

The choices (``ModelName``, ``LossName``, ``OptimizerName``, ``Precision``) and ``AugmentConfig`` import at once:
they need only ``typing`` and ``dataclasses``, and the CLI reads them to build its options. The fingerprint, the
plan and the planner load on first use, because they pull in the data readers (SimpleITK, seconds on a small
machine), which ``medseg --help`` should not wait for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medseg.plan.augment_config import AugmentConfig
from medseg.plan.choices import LossName, ModelName, OptimizerName, Precision

if TYPE_CHECKING:
    from medseg.plan.fingerprint import ChannelIntensity, Fingerprint, fingerprint_from_report
    from medseg.plan.plan import ChannelNorm, Plan
    from medseg.plan.planner import Machine, code_labels, make_plan

_LAZY = {
    "ChannelIntensity": "medseg.plan.fingerprint",
    "Fingerprint": "medseg.plan.fingerprint",
    "fingerprint_from_report": "medseg.plan.fingerprint",
    "ChannelNorm": "medseg.plan.plan",
    "Plan": "medseg.plan.plan",
    "Machine": "medseg.plan.planner",
    "make_plan": "medseg.plan.planner",
    "code_labels": "medseg.plan.planner",
}

__all__ = ["AugmentConfig", "ChannelIntensity", "ChannelNorm", "Fingerprint", "LossName", "Machine", "ModelName",
           "OptimizerName", "Plan", "Precision", "code_labels", "fingerprint_from_report",
           "make_plan"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medseg.plan' has no attribute {name!r}")
