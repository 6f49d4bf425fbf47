"""The report's sections on the run itself: overview, data set, plan, splits, training, post-processing.

Each takes the :class:`RunData` read once by :func:`medseg.report.run_data.load_run_data` and returns the HTML
pieces of its body; a missing input is shown as such.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from medseg.report import html
from medseg.report.html import Raw, esc, fmt, fmt_shape, kv_table, missing, table
from medseg.report.plots import file_data_uri, png_data_uri, training_curves
from medseg.report.run_data import RunData, duration, num


def overview(data: RunData) -> list[str]:
    items: list[tuple[str, Any]] = [("run folder", str(data.run))]
    if data.plan:
        items += [("data set", data.plan.dataset_name),
                  ("model", f"{data.plan.dim}D {data.plan.model}, loss {data.plan.loss}"),
                  ("labels", ", ".join(f"{v}: {n}" for v, n in sorted(data.plan.labels.items())))]
    if isinstance(data.check, dict) and isinstance(data.check.get("summary"), dict):
        items.append(("cases", data.check["summary"].get("cases", "n/a")))
    for fold in data.folds:
        if fold.validations:
            items.append((f"validation Dice, fold {fold.name}", num(fold.validations[-1].get("val_dice_mean"))))
    if isinstance(data.summary, dict) and "mean_dice" in data.summary:
        items.append(("evaluation mean Dice", num(data.summary["mean_dice"])))
    if isinstance(data.summary, dict) and "cases" in data.summary:
        items.append(("evaluated cases", data.summary["cases"]))
    return [kv_table(items)]


def data_section(data: RunData) -> list[str]:
    body: list[str] = ["<h3>Data-set check</h3>"]
    if isinstance(data.check, dict):
        body += _check_summary(data.check)
    else:
        body.append(missing(data.check_error or "check.json is not a JSON object"))
    body.append("<h3>Fingerprint</h3>")
    if isinstance(data.fingerprint, dict):
        body.append(kv_table(_fingerprint_items(data.fingerprint, data.names)))
    else:
        body.append(missing(data.fingerprint_error or "fingerprint.json is not a JSON object"))
    return body


def _check_summary(check: dict[str, Any]) -> list[str]:
    """``check.json`` (written by ``medseg check``): its summary, the label table and the first problems."""
    summary = check.get("summary", {}) if isinstance(check.get("summary"), dict) else {}
    problems = check.get("problems") or []
    body: list[str] = [kv_table(_check_items(check, summary, problems))]
    labels = summary.get("labels") or {}
    if labels:
        body.append(_label_table(labels))
    if problems:
        body += _problem_table(problems)
    return body


def _check_items(check: dict[str, Any], summary: dict[str, Any], problems: Any) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("data set", check.get("dataset", "n/a")),
                                    ("layout", check.get("layout", "n/a")),
                                    ("passed", check.get("ok", "n/a")), ("problems", len(problems))]
    for key in ("cases", "readable_cases", "test_images", "dim", "channels"):
        if key in summary:
            items.append((key.replace("_", " "), summary[key]))
    for key in ("shape", "spacing"):
        values = [summary.get(f"{key}_{stat}") for stat in ("min", "median", "max")]
        if any(values):
            unit = " mm" if key == "spacing" else ""
            items.append((f"{key} min / median / max (array order)",
                          " / ".join(fmt_shape(v) for v in values) + unit))
    for entry in summary.get("intensity", []) or []:
        items.append((f"intensity channel {entry.get('channel')}",
                      f"{fmt(entry.get('min'))} .. {fmt(entry.get('max'))}, "
                      f"mean of case means {fmt(entry.get('mean_of_case_means'))}"))
    if summary.get("split"):
        items.append(("split.json", summary["split"]))
    return items


def _label_table(labels: dict[str, Any]) -> Raw:
    """Per label: its name, how many cases contain it, and its mean size in the unit the check chose."""
    rows = []
    for value, entry in labels.items():
        size_key = next((k for k in entry if k.startswith("mean_size")), None)
        size = f"{fmt(entry[size_key])} {size_key.removeprefix('mean_size_')}" if size_key else "n/a"
        rows.append([value, entry.get("name", ""), entry.get("cases_containing", "n/a"), size])
    return table(["label", "name", "cases containing it", "mean size"], rows)


def _problem_table(problems: Any) -> list[str]:
    """The first 10 problems, and a note on how many more ``check.json`` holds."""
    shown = [[p.get("case_id") or "", p.get("path", ""), p.get("what", ""), p.get("fix", "")]
             for p in problems[:10] if isinstance(p, dict)]
    body: list[str] = [table(["case", "file", "problem", "fix"], shown)]
    if len(problems) > 10:
        body.append(Raw(f'<p class="note">... and {len(problems) - 10} more in check.json</p>'))
    return body


def _fingerprint_items(fp: dict[str, Any], names: dict[int, str]) -> list[tuple[str, Any]]:
    """``fingerprint.json``'s key facts; median shape and spacing are left out when they cannot be computed."""
    items: list[tuple[str, Any]] = [("data set", fp.get("dataset_name", "n/a")), ("dimension", fp.get("dim", "n/a")),
                                    ("cases", fp.get("num_cases", "n/a"))]
    for key, name in (("shapes", "median shape"), ("spacings", "median spacing, mm")):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            median = np.median(np.asarray(fp[key], float), axis=0).tolist()
            items.append((f"{name} (array order)", fmt_shape(median)))
    for c, entry in enumerate(fp.get("intensities", []) or []):
        items.append((f"foreground intensity, channel {c}",
                      f"mean {fmt(entry.get('mean'))}, std {fmt(entry.get('std'))}, "
                      f"0.5-99.5 % {fmt(entry.get('percentile_00_5'))} .. {fmt(entry.get('percentile_99_5'))}"))
    if fp.get("class_voxels_median"):
        items.append(("median voxels per class", ", ".join(
            f"{names.get(int(k), k) if str(k).isdigit() else k}: {fmt(v)}"
            for k, v in fp["class_voxels_median"].items())))
    if "integer_images" in fp:
        items.append(("integer images", fp["integer_images"]))
    return items


def plan_section(data: RunData) -> list[str]:
    plan = data.plan
    if plan is None:
        return [missing(data.plan_error or "no plan")]
    norm = "; ".join(
        f"channel {c} ({plan.channel_names.get(c, '-')}): {n.scheme}"
        + (f", mean {fmt(n.mean)}, std {fmt(n.std)}" if n.scheme == "ct" else "")
        + (f", clip {fmt(n.clip_low)} .. {fmt(n.clip_high)}" if n.clip_low is not None else "")
        for c, n in enumerate(plan.normalization))
    items: list[tuple[str, Any]] = [
        ("data set", plan.dataset_name),
        ("network / data dimension", f"{plan.dim}D / {plan.data_dim}D"),
        ("channels", plan.channels),
        ("labels", ", ".join(f"{v}: {n}" for v, n in sorted(plan.labels.items()))),
        ("target spacing (mm, array order)", fmt_shape(plan.target_spacing)),
        ("median shape after resampling", fmt_shape([round(s, 1) for s in plan.median_shape])),
        ("patch size", fmt_shape(plan.patch_size)),
        ("batch size", plan.batch_size),
        ("model", plan.model),
        ("features", ", ".join(map(str, plan.features))),
        ("strides", ", ".join("(" + ", ".join(map(str, s)) + ")" for s in plan.strides) or "n/a"),
        ("deep supervision", plan.deep_supervision),
        ("normalisation", norm or "n/a"),
        ("precision", plan.precision),
        ("loss", plan.loss),
        ("optimizer", f"{plan.optimizer}, learning rate {fmt(plan.learning_rate)}, "
                      f"weight decay {fmt(plan.weight_decay)}"),
        ("crop to non-zero", plan.crop_to_nonzero),
        ("foreground oversampling", plan.foreground_oversample),
        ("sliding-window overlap", plan.sliding_window_overlap),
        ("planned for", plan.device_kind),
        ("medseg version", plan.medseg_version),
    ]
    if plan.notes:
        items.append(("notes", "; ".join(plan.notes)))
    return [kv_table(items)]


def splits_section(data: RunData) -> list[str]:
    splits = data.splits
    if not isinstance(splits, dict) or not isinstance(splits.get("splits"), list):
        return [missing(data.splits_error or "splits.json has no 'splits' list")]
    items = [("folds", len(splits["splits"])), ("seed", splits.get("seed", "n/a")),
             ("stratified", splits.get("stratified", "n/a")), ("held-out test cases", len(splits.get("test", [])))]
    rows = [[f"fold {k}", len(s.get("train", [])), len(s.get("val", []))] for k, s in enumerate(splits["splits"])]
    return [kv_table(items), table(["fold", "training cases", "validation cases"], rows)]


def training_section(data: RunData) -> list[str]:
    if not data.folds:
        return [missing(f"no fold_* folders in {data.run}")]
    body: list[str] = []
    summary_rows = []
    classes = sorted(data.names)
    names = {str(v): n for v, n in data.names.items()}
    conventions = set()
    for fold in data.folds:
        body.append(f"<h3>Fold {esc(fold.name)}</h3>")
        if fold.error:
            body.append(missing(fold.error))
        elif fold.read:
            steps, validations = fold.steps, fold.validations
            fig = training_curves(steps, validations, names, f"fold {fold.name}")
            body.append(html.img(png_data_uri(fig), f"training curves, fold {fold.name}"))
            last_step = steps[-1] if steps else {}
            final = validations[-1] if validations else {}
            conventions |= {v["dice_empty"] for v in validations if "dice_empty" in v}
            elapsed = max(num(last_step.get("elapsed_s")), num(final.get("elapsed_s")))
            summary_rows.append([f"fold {fold.name}", max(int(num(last_step.get("step", 0)) or 0),
                                                          int(num(final.get("step", 0)) or 0)),
                                 duration(elapsed), len(validations)]
                                + [num(final.get("val_dice", {}).get(str(v))) for v in classes]
                                + [num(final.get("val_dice_mean"))])
        elif fold.curve.exists():
            body.append(Raw('<p class="note">log.jsonl not found; the curve drawn during training:</p>'))
            body.append(html.img(file_data_uri(fold.curve.read_bytes()), f"training curve, fold {fold.name}"))
        else:
            body.append(missing(f"neither log.jsonl nor curve.png in {fold.folder}"))
    if summary_rows:
        headers = ["fold", "steps", "time", "validations"] + [f"Dice {data.names[v]}" for v in classes]
        convention = ""
        if len(conventions) == 1:  # logs from before it was recorded say nothing
            empty = conventions.pop()
            convention = (f"; a class absent from both masks of a case scores {'1' if empty == 'one' else 'NaN'} "
                          f"(dice_empty {empty})")
        body.insert(0, Raw('<p class="note">Last validation of each fold (the final one on all validation '
                           f'cases when training finished){esc(convention)}:</p>')
                    + table(headers + ["mean Dice"], summary_rows))
    return body


def postprocess_section(data: RunData) -> list[str]:
    chosen = data.postprocess
    if not isinstance(chosen, dict):
        return [missing(data.postprocess_error or "postprocess.json is not a JSON object")]
    decisions = chosen.get("decisions") or []
    body: list[str] = []
    rows = []
    for d in decisions:
        if not isinstance(d, dict):
            continue
        before, after = num(d.get("dice_before")), num(d.get("dice_after"))
        change = after - before
        kept = d.get("kept")
        basis = (f'{d["basis"]}: largest piece >= {num(d.get("largest_share_min")):.4f} of the label '
                 f'in {d.get("cases", 0)} case(s)') if "basis" in d else "validation Dice"
        rows.append([d.get("step", ""), d.get("class", ""), before, after,
                     Raw(f'<span class="{"good" if change > 0 else "bad" if change < 0 else ""}">'
                         f'{esc(f"{change:+.4f}" if math.isfinite(change) else "n/a")}</span>'),
                     Raw(f'<b>{"kept" if kept else "rejected"}</b>'), basis])
    if rows:
        body.append(table(["step", "class", "Dice before", "Dice after", "change", "decision", "basis"], rows))
    else:
        body.append(Raw('<p class="note">No post-processing decisions recorded.</p>'))
    others = {k: v for k, v in chosen.items() if k not in ("decisions", "format")}
    if others:
        body.append(kv_table((k, html.generic(v) if isinstance(v, (dict, list)) else fmt(v))
                             for k, v in others.items()))
    return body
