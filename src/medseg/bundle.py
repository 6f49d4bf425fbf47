"""The model bundle: one folder holding everything ``predict``, ``serve`` and ``export`` need.

    bundle/
      plan.json              the Plan (preprocessing, network, labels, channel names, medseg version)
      fold_K.safetensors     weights, one file a fold
      metrics.json           validation metrics per fold; "inference": what training decided for prediction (the
                             TTA benefit measured, the calibration temperatures: medseg.infer.calibration)
      postprocess.json       chosen post-processing (written by the post-processing step)
      model_card.md          data, labels, figures, intended use, limits
      drift_reference.json   what the service's drift check compares scans with (see below)
      lineage.json           version (content hash), parent bundle version, data fingerprint hash, when

No pickles: weights are safetensors, everything else JSON or Markdown. The file names are the constants below.

The drift reference is a compact summary of the run's ``fingerprint.json`` (per channel the training
foreground's [0.5, 99.5] intensity percentiles, per axis the smallest and largest training spacing), not a copy of
it: that is all the check reads, and the full fingerprint holds the shape and spacing of every training case,
which need not travel with a model that is handed on. Bundles written before it existed still load; for them the
run's ``fingerprint.json`` next to the bundle folder is read, as before (see :func:`read_drift_reference`).

The bundle's *version* is a content hash: the short sha256 of its ``plan.json`` and weights files
(:func:`bundle_version`), so two bundles of one version hold the same network and preprocessing. It is written,
with the parent's version of a fine-tuned bundle (the plan's ``init_from``) and the hash of the training data's
fingerprint, into ``lineage.json`` and the model card when the bundle is finished; a bundle without
``lineage.json`` (written before it existed) has its version computed when it is read (:attr:`Bundle.lineage`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path, write_text_atomic
from medseg.plan import Plan

if TYPE_CHECKING:
    from torch import nn

PLAN_FILE = "plan.json"
METRICS_FILE = "metrics.json"
POSTPROCESS_FILE = "postprocess.json"
MODEL_CARD_FILE = "model_card.md"
DRIFT_FILE = "drift_reference.json"
RUN_FINGERPRINT_FILE = "fingerprint.json"  # in the run folder, one above bundle/: the drift source of old bundles
FOLD_WEIGHTS = "fold_{fold}.safetensors"
DRIFT_FORMAT = 1
LINEAGE_FILE = "lineage.json"
VERSION_CHARS = 12  # the short form of the sha256 content hash


def fold_weights_name(fold: str) -> str:
    """``fold_K.safetensors`` for fold ``K``."""
    return FOLD_WEIGHTS.format(fold=fold)


def folds_with_weights(folder: Path) -> list[str]:
    """The folds whose weights ``folder`` holds, sorted by name."""
    prefix, suffix = FOLD_WEIGHTS.split("{fold}")
    return sorted(p.name[len(prefix):-len(suffix)] for p in folder.glob(fold_weights_name("*")))


@dataclass
class Bundle:
    folder: Path
    plan: Plan
    folds: list[str]
    metrics: dict[str, Any]

    def fold_weights(self, fold: str) -> Path:
        return self.folder / fold_weights_name(fold)

    @property
    def lineage(self) -> dict[str, Any]:
        """``lineage.json``, or for a bundle without one the version computed now and the plan's parent."""
        path = self.folder / LINEAGE_FILE
        if path.exists():
            return read_json_object(path)
        return {"version": bundle_version(self.folder), "parent": self.plan.init_from, "data_fingerprint": None,
                "medseg_version": self.plan.medseg_version, "created": None, "computed_on_load": True}

    @property
    def version(self) -> str:
        return str(self.lineage.get("version") or bundle_version(self.folder))

    def load_models(self, folds: list[str] | None = None) -> list[nn.Module]:
        # imported here so that reading a bundle's files (the report, post-processing) does not import torch
        from medseg.models import build_network
        from medseg.models.weights import load_weights

        models = []
        for fold in folds or self.folds:
            model = build_network(self.plan)
            load_weights(model, self.fold_weights(fold))
            model.eval()
            models.append(model)
        return models


def write_bundle_fold(folder: Path, plan: Plan, fold: str, weights: Path, metrics: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plan.save(folder / PLAN_FILE)
    with atomic_path(folder / fold_weights_name(fold)) as tmp:
        shutil.copyfile(weights, tmp)
    metrics_path = folder / METRICS_FILE
    existing = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    existing.setdefault("folds", {})[fold] = metrics
    existing["medseg_version"] = __version__
    write_text_atomic(metrics_path, json.dumps(existing, indent=1) + "\n")


def load_bundle(folder: str | Path) -> Bundle:
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsegError("is not a model bundle folder", folder, "give the bundle/ folder written by `medseg train`")
    plan_path = folder / PLAN_FILE
    if not plan_path.exists():
        raise MedsegError(f"has no {PLAN_FILE}", folder, "give the bundle/ folder written by `medseg train`")
    plan = Plan.load(plan_path)
    folds = folds_with_weights(folder)
    if not folds:
        raise MedsegError(f"holds no {fold_weights_name('K')} weights", folder, "train at least one fold into it")
    metrics_path = folder / METRICS_FILE
    metrics = read_json_object(metrics_path) if metrics_path.exists() else {}
    return Bundle(folder, plan, folds, metrics)


def read_json_object(path: Path) -> dict[str, Any]:
    """A bundle's JSON file that must hold an object; a damaged one is named with what to do."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedsegError(f"is not readable JSON ({type(exc).__name__}: {exc})", path,
                          "the bundle is damaged; copy it again from where it was trained") from None
    if not isinstance(data, dict):
        raise MedsegError(f"holds a JSON {type(data).__name__}, not an object", path,
                          "the bundle is damaged; copy it again from where it was trained")
    return data


def bundle_version(folder: str | Path) -> str:
    """The bundle's content hash: sha256 over ``plan.json`` and every ``fold_K.safetensors`` (names and bytes, in
    name order), short form."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in [PLAN_FILE, *(fold_weights_name(f) for f in folds_with_weights(folder))]:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:VERSION_CHARS]


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """Short sha256 of a fingerprint (``fingerprint.json``'s content), keys sorted."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:VERSION_CHARS]


def write_lineage(folder: Path, plan: Plan, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``lineage.json`` for a finished bundle (weights and plan in place); returns its content."""
    lineage = {"version": bundle_version(folder), "parent": plan.init_from,
               "data_fingerprint": fingerprint_hash(fingerprint) if fingerprint is not None else None,
               "medseg_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(folder / LINEAGE_FILE, json.dumps(lineage, indent=1) + "\n")
    return lineage


def _lineage_lines(lineage: dict[str, Any] | None) -> str:
    if not lineage:
        return ""
    parent = f"fine-tuned from bundle `{lineage['parent']}`" if lineage.get("parent") else "trained from scratch"
    return (f"\n## Version\n- Version `{lineage['version']}` (sha256 of plan.json and the weights); {parent}.\n"
            f"- Training data fingerprint `{lineage.get('data_fingerprint')}`; created {lineage.get('created')}.\n")


def _calibration_line(metrics: dict[str, Any]) -> str:
    inference = metrics.get("inference")
    calibration = inference.get("calibration") if isinstance(inference, dict) else None
    if not isinstance(calibration, dict):
        return ""
    return (f"\nProbabilities calibrated on the validation voxels (temperatures {calibration.get('temperatures')}, "
            f"{calibration.get('method')}): expected calibration error {calibration.get('ece_before')} before, "
            f"{calibration.get('ece_after')} after ({calibration.get('bins')} bins; labels unchanged).\n")


def _coded_as(codes: dict[str, list[str]] | None) -> str:
    """A label's DICOM SEG type (and laterality) as the model card shows it: "Liver (SCT 10200004)"."""
    if not codes:
        return "-"
    shown = f"{codes['type'][2]} ({codes['type'][1]} {codes['type'][0]})"
    return shown + (f", {codes['modifier'][2]}" if codes.get("modifier") else "")


def write_model_card(folder: Path, plan: Plan, summary: dict[str, Any], metrics: dict[str, Any],
                     command: str, lineage: dict[str, Any] | None = None) -> Path:
    labels = "\n".join(f"| {v} | {name} | {_coded_as(plan.label_codes.get(name))} |"
                       for v, name in sorted(plan.labels.items()))
    rows = []
    for fold, m in sorted(metrics.get("folds", {}).items()):
        dice = m.get("val_dice", {})
        cells = " | ".join(f"{dice.get(str(v), float('nan')):.4f}" for v in plan.scored_classes)
        rows.append(f"| {fold} | {m.get('cases', 0)} | {cells} | {m.get('val_dice_mean', float('nan')):.4f} | "
                    f"{m.get('steps', 0)} | {m.get('elapsed_s', 0):.0f} |")
    head = " | ".join(plan.scored_classes.values())
    text = f"""# Model card: {plan.dataset_name}

Trained with medseg {__version__} by `{command}`.

## Data
- Data set: {plan.dataset_name}; {summary.get('cases', '?')} labelled cases, {plan.data_dim}D,
  {plan.channels} channel(s) ({', '.join(plan.channel_names.values()) or 'unnamed'}).
- Shapes {summary.get('shape_min')} to {summary.get('shape_max')} voxels; spacing {summary.get('spacing_min')} to
  {summary.get('spacing_max')} mm (array order).

| value | label | DICOM SEG code |
|---|---|---|
{labels}

## Model
{plan.model} ({plan.dim}D), widths {plan.features}, patch {plan.patch_size}, batch {plan.batch_size},
loss {plan.loss}, optimiser {plan.optimizer}, precision {plan.precision}; target spacing {plan.target_spacing} mm.

## Validation (held-out fold, Dice per foreground class on the preprocessed grid)
| fold | cases | {head} | mean | steps | seconds |
|---|---|{'---|' * len(plan.scored_classes)}---|---|---|
{chr(10).join(rows) or '| (no validation: trained on all cases) |'}
{_calibration_line(metrics)}{_lineage_lines(lineage)}
## Intended use and limits
For research. It segments images like those it was trained on (same modality, field of view and
resolution range); on other scanners, protocols or populations its accuracy is unknown until measured.
Validation figures come from held-out cases of the same data set and overstate accuracy on new sites.
Not a medical device; a clinician must review every output.
"""
    path = folder / MODEL_CARD_FILE
    write_text_atomic(path, text)
    return path


def drift_reference(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The drift reference (``drift_reference.json``'s content) from a run's fingerprint (``fingerprint.json``'s
    content, :meth:`medseg.plan.Fingerprint.to_dict`)."""
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    return {"format": DRIFT_FORMAT, "from": RUN_FINGERPRINT_FILE, "cases": int(len(spacings)),
            "foreground_percentiles": [[float(c["percentile_00_5"]), float(c["percentile_99_5"])]
                                       for c in fingerprint["intensities"]],
            "spacing_min": spacings.min(0).tolist(), "spacing_max": spacings.max(0).tolist()}


def write_drift_reference(folder: Path, fingerprint: dict[str, Any]) -> Path:
    """Write the bundle's ``drift_reference.json`` from the run's fingerprint."""
    path = folder / DRIFT_FILE
    write_text_atomic(path, json.dumps(drift_reference(fingerprint), indent=1) + "\n")
    return path


def read_drift_reference(folder: str | Path) -> tuple[dict[str, Any], str] | None:
    """The bundle's drift reference and the file it came from: its own ``drift_reference.json``, else (a bundle
    written before that file existed) one computed from ``fingerprint.json`` in the folder above, when the bundle
    still sits in its run folder; None when there is neither."""
    folder = Path(folder)
    own = folder / DRIFT_FILE
    if own.exists():
        return json.loads(own.read_text()), DRIFT_FILE
    run_fingerprint = folder.parent / RUN_FINGERPRINT_FILE
    if run_fingerprint.exists():
        return drift_reference(json.loads(run_fingerprint.read_text())), RUN_FINGERPRINT_FILE
    return None
