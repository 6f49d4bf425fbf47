"""Fine-tuning (``medseg train DATA -o RUN --init BUNDLE [--label-map old:new,...]``).

The run keeps the bundle's plan (target spacing, normalisation, network, patch) and starts from its weights (its
first fold); only the labels become the new data's. Output channels are mapped class by class: by ``--label-map``
(values as masks hold them), else by equal label names (background to background); a class the map leaves out
gets a freshly initialised row in every output head, deep-supervision heads included.

The learning rate is the bundle's times ``lr_scale`` (0.1) and, without ``--budget`` or ``--epochs``, the run
trains a quarter of the bundle's steps (per fold, on average; rounded up to whole epochs); both, the parent's
version and the map are recorded in ``plan.json`` (``init_from``, ``fine_tune``). A warning names each way the
new data's fingerprint (median spacing per axis, foreground intensity range per channel) lies far from the
bundle's drift reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medseg import __version__
from medseg.bundle import Bundle, load_bundle, read_drift_reference
from medseg.errors import MedsegError
from medseg.models.weights import load_mapped_weights
from medseg.plan import Fingerprint, Plan
from medseg.train.loop import MAX_EPOCH_STEPS, TrainConfig

log = logging.getLogger("medseg.train")

LR_SCALE = 0.1  # fine-tuning learning rate = the bundle's times this
SCHEDULE_SCALE = 0.25  # default length: this fraction of the bundle's steps per fold
SPACING_FACTOR = 1.25  # a median spacing further than this factor outside the bundle's training range is far
INTENSITY_SHIFT = 0.25  # a foreground percentile moved by more than this fraction of the bundle's range is far


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"1:1,2:3"`` -> ``{1: 1, 2: 3}`` (old value in the bundle: new value in the data)."""
    if not text:
        return None
    mapping: dict[int, int] = {}
    for item in text.split(","):
        old, sep, new = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(old)] = int(new)
        except ValueError:
            raise MedsegError(f"cannot read label map entry {item.strip()!r}", "--label-map",
                              "write old:new pairs of label values, e.g. 1:1,2:3") from None
    return mapping


def fine_tune_plan(parent: Bundle, fingerprint: Fingerprint, label_map: dict[int, int] | None = None,
                   lr_scale: float = LR_SCALE) -> Plan:
    """The plan of a run fine-tuning ``parent`` on the data ``fingerprint`` describes (warnings logged)."""
    base = parent.plan
    if fingerprint.dim != base.data_dim or fingerprint.channels != base.channels:
        raise MedsegError(
            f"cannot fine-tune a {base.data_dim}D bundle of {base.channels} channel(s) on {fingerprint.dim}D data "
            f"of {fingerprint.channels} channel(s)", parent.folder,
            "fine-tune a bundle trained on data of the same dimension and channels, or train from scratch")
    if not lr_scale > 0:
        raise MedsegError(f"learning-rate scale {lr_scale} is not positive", "--init", "use e.g. 0.1")
    channel_map = _class_map(base, fingerprint, label_map)
    differences = fingerprint_differences(read_drift_reference(parent.folder), fingerprint)
    for difference in differences:
        log.warning("fine-tuning data differs from the bundle's: %s", difference)
    fresh = [v for v in range(max(fingerprint.labels) + 1 if not base.regions else len(base.regions))
             if v not in channel_map.values()]
    steps = [m.get("steps") for m in parent.metrics.get("folds", {}).values() if isinstance(m.get("steps"), int)]
    target_steps = max(1, math.ceil(SCHEDULE_SCALE * float(np.mean(steps)))) if steps else MAX_EPOCH_STEPS
    version = parent.version
    fine_tune: dict[str, Any] = {
        "parent_bundle": str(parent.folder), "parent_version": version, "parent_fold": parent.folds[0],
        "parent_learning_rate": base.learning_rate, "lr_scale": lr_scale,
        "label_map": {str(old): new for old, new in sorted(channel_map.items())}, "fresh_classes": fresh,
        "schedule_scale": SCHEDULE_SCALE, "parent_steps": float(np.mean(steps)) if steps else None,
        "steps": target_steps, "fingerprint_differences": differences,
    }
    notes = [*base.notes, f"fine-tuned from bundle {version} ({parent.folder}): learning rate x{lr_scale:g}"
             + (f", fresh output rows for class(es) {fresh}" if fresh else "")]
    return replace(base, dataset_name=fingerprint.dataset_name,
                   channel_names=dict(fingerprint.channel_names) or dict(base.channel_names),
                   labels=dict(fingerprint.labels), label_values=dict(fingerprint.label_values),
                   learning_rate=float(f"{base.learning_rate * lr_scale:.6g}"), notes=notes, init_from=version,
                   fine_tune=fine_tune, medseg_version=__version__, normalization=list(base.normalization))


def _class_map(base: Plan, fingerprint: Fingerprint, label_map: dict[int, int] | None) -> dict[int, int]:
    """Old output channel -> new output channel."""
    if base.regions or fingerprint.regions:
        if label_map or [r.to_dict() for r in base.regions] != [r.to_dict() for r in fingerprint.regions]:
            raise MedsegError("a region bundle fine-tunes only on data with the same regions, without --label-map",
                              fix="train from scratch, or declare the bundle's regions")
        return {i: i for i in range(len(base.regions))}
    old_class = {disk: value for value, disk in base.label_values.items()}
    new_class = {disk: value for value, disk in fingerprint.label_values.items()}
    if label_map is None:
        by_name = {name: value for value, name in base.labels.items()}
        mapping = {by_name[name]: value for value, name in fingerprint.labels.items() if name in by_name}
        if set(mapping) <= {0} and set(base.labels) == set(fingerprint.labels):  # same values, other names
            mapping = {value: value for value in base.labels}
        if 0 in base.labels and 0 in fingerprint.labels and 0 not in mapping.values():
            mapping.setdefault(0, 0)
        return mapping
    mapping = {old_class.get(old, old): new_class.get(new, new) for old, new in label_map.items()}
    bad = [f"{o}:{n}" for (o, n), (oc, nc) in zip(label_map.items(), mapping.items())
           if oc not in base.labels or nc not in fingerprint.labels]
    if bad or len(set(mapping.values())) != len(mapping):
        raise MedsegError(f"label map {', '.join(bad) or 'maps two old labels to one new label'} does not fit: the "
                          f"bundle has labels {sorted(base.disk_labels)}, the data {_disk_values(fingerprint)}",
                          "--label-map", "map each of the bundle's label values to at most one of the data's")
    if 0 in base.labels and 0 in fingerprint.labels and 0 not in mapping and 0 not in mapping.values():
        mapping[0] = 0
    return mapping


def _disk_values(fingerprint: Fingerprint) -> list[int]:
    return sorted(fingerprint.label_values.get(v, v) for v in fingerprint.labels)


def fingerprint_differences(reference: tuple[dict[str, Any], str] | None, fingerprint: Fingerprint) -> list[str]:
    """What makes the new data far from the bundle's training data (its drift reference), one line each."""
    if reference is None:
        return ["the bundle has no drift reference (drift_reference.json) to compare the data with"]
    ref = reference[0]
    found = []
    low, high = ref.get("spacing_min", []), ref.get("spacing_max", [])
    for axis, (median, a, b) in enumerate(zip(fingerprint.median_spacing, low, high)):
        if median < a / SPACING_FACTOR or median > b * SPACING_FACTOR:
            found.append(f"spacing of axis {axis}: median {median:.3g} mm, the bundle trained on {a:.3g}-{b:.3g} mm")
    for channel, (theirs, ours) in enumerate(zip(ref.get("foreground_percentiles", []), fingerprint.intensities)):
        width = max(float(theirs[1]) - float(theirs[0]), 1e-6)
        new = (ours.percentile_00_5, ours.percentile_99_5)
        if abs(new[0] - theirs[0]) > INTENSITY_SHIFT * width or abs(new[1] - theirs[1]) > INTENSITY_SHIFT * width:
            found.append(f"foreground intensities of channel {channel}: {new[0]:.4g} to {new[1]:.4g} "
                         f"(0.5-99.5 percentiles), the bundle's {theirs[0]:.4g} to {theirs[1]:.4g}")
    return found


def fine_tune_config(config: TrainConfig, plan: Plan, train_cases: int) -> TrainConfig:
    """A fine-tuning run given neither --epochs nor --budget trains the plan's ``fine_tune.steps``."""
    if not plan.fine_tune or config.epochs is not None or config.budget_s is not None:
        return config
    per_epoch = config.steps_per_epoch or max(1, min(math.ceil(train_cases / plan.batch_size), MAX_EPOCH_STEPS))
    return replace(config, epochs=max(1, math.ceil(int(plan.fine_tune.get("steps", MAX_EPOCH_STEPS)) / per_epoch)))


def init_from_parent(model: nn.Module, plan: Plan, parent_folder: str | Path) -> list[int]:
    """Load the parent bundle's first fold into ``model`` through the plan's label map; the fresh channels."""
    parent = load_bundle(parent_folder)
    mapping = {int(new): int(old) for old, new in plan.fine_tune.get("label_map", {}).items()}
    fold = str(plan.fine_tune.get("parent_fold", parent.folds[0]))
    if fold not in parent.folds:
        fold = parent.folds[0]
    return load_mapped_weights(model, parent.fold_weights(fold), mapping)
