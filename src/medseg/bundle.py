"""The model bundle: one folder holding everything ``predict``, ``serve`` and ``export`` need.

    bundle/
      plan.json            the Plan (preprocessing, network, labels, channel names, medseg version)
      fold_K.safetensors   weights, one file a fold
      metrics.json         validation metrics per fold
      postprocess.json     chosen post-processing (written by the post-processing step)
      model_card.md        data, labels, figures, intended use, limits

No pickles: weights are safetensors, everything else JSON or Markdown.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path, write_text_atomic
from medseg.models import build_network
from medseg.models.weights import load_weights
from medseg.plan import Plan


@dataclass
class Bundle:
    folder: Path
    plan: Plan
    folds: list[str]
    metrics: dict[str, Any]

    def fold_weights(self, fold: str) -> Path:
        return self.folder / f"fold_{fold}.safetensors"

    def load_models(self, folds: list[str] | None = None) -> list[nn.Module]:
        models = []
        for fold in folds or self.folds:
            model = build_network(self.plan)
            load_weights(model, self.fold_weights(fold))
            model.eval()
            models.append(model)
        return models


def write_bundle_fold(folder: Path, plan: Plan, fold: str, weights: Path, metrics: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plan.save(folder / "plan.json")
    with atomic_path(folder / f"fold_{fold}.safetensors") as tmp:
        shutil.copyfile(weights, tmp)
    metrics_path = folder / "metrics.json"
    existing = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    existing.setdefault("folds", {})[fold] = metrics
    existing["medseg_version"] = __version__
    write_text_atomic(metrics_path, json.dumps(existing, indent=1) + "\n")


def load_bundle(folder: str | Path) -> Bundle:
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsegError("is not a model bundle folder", folder, "give the bundle/ folder written by `medseg train`")
    plan_path = folder / "plan.json"
    if not plan_path.exists():
        raise MedsegError("has no plan.json", folder, "give the bundle/ folder written by `medseg train`")
    plan = Plan.load(plan_path)
    folds = sorted(p.name[len("fold_"):-len(".safetensors")] for p in folder.glob("fold_*.safetensors"))
    if not folds:
        raise MedsegError("holds no fold_K.safetensors weights", folder, "train at least one fold into it")
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return Bundle(folder, plan, folds, metrics)


def write_model_card(folder: Path, plan: Plan, summary: dict[str, Any], metrics: dict[str, Any],
                     command: str) -> Path:
    labels = "\n".join(f"| {v} | {name} |" for v, name in sorted(plan.labels.items()))
    rows = []
    for fold, m in sorted(metrics.get("folds", {}).items()):
        dice = m.get("val_dice", {})
        cells = " | ".join(f"{dice.get(str(v), float('nan')):.4f}" for v in plan.foreground_labels)
        rows.append(f"| {fold} | {m.get('cases', 0)} | {cells} | {m.get('val_dice_mean', float('nan')):.4f} | "
                    f"{m.get('steps', 0)} | {m.get('elapsed_s', 0):.0f} |")
    head = " | ".join(plan.labels[v] for v in plan.foreground_labels)
    text = f"""# Model card: {plan.dataset_name}

Trained with medseg {__version__} by `{command}`.

## Data
- Data set: {plan.dataset_name}; {summary.get('cases', '?')} labelled cases, {plan.data_dim}D,
  {plan.channels} channel(s) ({', '.join(plan.channel_names.values()) or 'unnamed'}).
- Shapes {summary.get('shape_min')} to {summary.get('shape_max')} voxels; spacing {summary.get('spacing_min')} to
  {summary.get('spacing_max')} mm (array order).

| value | label |
|---|---|
{labels}

## Model
{plan.model} ({plan.dim}D), widths {plan.features}, patch {plan.patch_size}, batch {plan.batch_size},
loss {plan.loss}, optimiser {plan.optimizer}, precision {plan.precision}; target spacing {plan.target_spacing} mm.

## Validation (held-out fold, Dice per foreground class on the preprocessed grid)
| fold | cases | {head} | mean | steps | seconds |
|---|---|{'---|' * len(plan.foreground_labels)}---|---|---|
{chr(10).join(rows) or '| (no validation: trained on all cases) |'}

## Intended use and limits
For research. It segments images like those it was trained on (same modality, field of view and
resolution range); on other scanners, protocols or populations its accuracy is unknown until measured.
Validation figures come from held-out cases of the same data set and overstate accuracy on new sites.
Not a medical device; a clinician must review every output.
"""
    path = folder / "model_card.md"
    write_text_atomic(path, text)
    return path
