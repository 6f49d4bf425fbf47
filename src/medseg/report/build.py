"""Assemble the run report: one self-contained HTML file (inline CSS, images as base64 PNG, no scripts).

Every input is optional; a section whose input is missing or unreadable says so instead of failing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.plan import Plan
from medseg.report import html
from medseg.report.html import Raw, esc, fmt, fmt_shape, kv_table, missing, section, table
from medseg.report.overlay import CaseScore, ImageFinder, case_overlay, pick_cases
from medseg.report.plots import file_data_uri, metric_boxplots, png_data_uri, training_curves

METRICS = ("dice", "iou", "precision", "recall", "f1", "hd95_mm", "assd_mm", "nsd", "volume_pred", "volume_ref",
           "volume_error")
METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)", "nsd": "NSD"}


def build_report(run_dir: str | Path, out_path: str | Path, evaluation_dir: str | Path | None = None) -> Path:
    """Write the HTML report of a training run (and its evaluation, if any) to ``out_path``; returns it.

    ``evaluation_dir`` defaults to ``RUN_DIR/evaluation``; naming one that does not exist is an error.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise MedsegError("is not a run folder", run, "give the folder `medseg train -o` wrote")
    if evaluation_dir is not None and not Path(evaluation_dir).is_dir():
        raise MedsegError("evaluation folder does not exist", evaluation_dir,
                          "run `medseg evaluate` first or leave out --evaluation")
    if Path(out_path).is_dir():
        raise MedsegError("is a folder", out_path, "give a file name such as report.html")
    evaluation = Path(evaluation_dir) if evaluation_dir is not None else run / "evaluation"
    report = _Report(run, evaluation)
    out = Path(out_path)
    write_text_atomic(out, report.render())
    return out


def _load_json(path: Path) -> tuple[Any, str | None]:
    """(data, None), or (None, why it is not available)."""
    if not path.exists():
        return None, f"{path.name} not found in {path.parent}"
    try:
        return json.loads(path.read_text()), None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path} ({exc})"


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _seconds(value: Any) -> str:
    seconds = _num(value)
    if not math.isfinite(seconds):
        return "n/a"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s" if minutes else f"{sec}s"


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


class _Report:
    def __init__(self, run: Path, evaluation: Path) -> None:
        self.run = run
        self.evaluation = evaluation
        self.check, self.check_error = _load_json(run / "check.json")
        self.fingerprint, self.fingerprint_error = _load_json(run / "fingerprint.json")
        self.splits, self.splits_error = _load_json(run / "splits.json")
        self.plan: Plan | None = None
        self.plan_error: str | None = None
        if (run / "plan.json").exists():
            try:
                self.plan = Plan.load(run / "plan.json")
            except MedsegError as exc:
                self.plan_error = exc.message
        else:
            self.plan_error = f"plan.json not found in {run}"
        self.metrics_rows, self.metrics_error = self._read_metrics(evaluation / "metrics.csv")
        self.summary, self.summary_error = _load_json(evaluation / "summary.json")
        self.names = self._label_names()
        self.fold_logs: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}

    # ---- inputs -----------------------------------------------------------------------------------------

    @staticmethod
    def _read_metrics(path: Path) -> tuple[list[dict[str, str]], str | None]:
        if not path.exists():
            return [], f"{path.name} not found in {path.parent}"
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            return [], f"cannot read {path} ({exc})"
        if rows and not {"case", "dice"} <= set(rows[0]):
            return [], f"{path} lacks the case and dice columns"
        return rows, None if rows else f"{path} has no rows"

    def _label_names(self) -> dict[int, str]:
        """Foreground label value -> name, from the plan, else check.json, else metrics.csv."""
        names: dict[int, str] = {}
        for row in self.metrics_rows:
            try:
                names[int(row.get("label_value", ""))] = row.get("label") or f"label {row['label_value']}"
            except ValueError:
                continue
        summary = self.check.get("summary") if isinstance(self.check, dict) else None
        if isinstance(summary, dict) and isinstance(summary.get("labels"), dict):
            for value, entry in summary["labels"].items():
                if str(value).isdigit() and isinstance(entry, dict) and entry.get("name"):
                    names[int(value)] = entry["name"]
        if self.plan is not None:
            names.update(self.plan.labels)
        names.pop(0, None)
        return names

    def _fold_log(self, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        steps, validations = [], []
        with open(path) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                if not isinstance(record, dict):
                    continue
                if record.get("event") == "step":
                    steps.append(record)
                elif record.get("event") == "validation":
                    validations.append(record)
        return steps, validations

    # ---- sections ---------------------------------------------------------------------------------------

    def render(self) -> str:
        sections = [
            ("overview", "Overview", self.overview),
            ("data", "Data set", self.data_section),
            ("plan", "Plan", self.plan_section),
            ("splits", "Splits", self.splits_section),
            ("training", "Training", self.training_section),
            ("postprocess", "Post-processing", self.postprocess_section),
            ("evaluation", "Evaluation", self.evaluation_section),
            ("cases", "Cases", self.cases_section),
        ]
        bodies = {anchor: builder() for anchor, _, builder in sections[1:]}  # overview reads what they found
        bodies["overview"] = self.overview()
        rendered = [section(anchor, title, bodies[anchor]) for anchor, title, _ in sections]
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = f"run folder {self.run.resolve()} · generated {stamp} by medseg {__version__}"
        name = self.plan.dataset_name if self.plan else self.run.name
        return html.page(f"medseg report: {name}", subtitle, [(a, t) for a, t, _ in sections], rendered)

    def overview(self) -> list[str]:
        items: list[tuple[str, Any]] = [("run folder", str(self.run))]
        if self.plan:
            items += [("data set", self.plan.dataset_name),
                      ("model", f"{self.plan.dim}D {self.plan.model}, loss {self.plan.loss}"),
                      ("labels", ", ".join(f"{v}: {n}" for v, n in sorted(self.plan.labels.items())))]
        if isinstance(self.check, dict) and isinstance(self.check.get("summary"), dict):
            items.append(("cases", self.check["summary"].get("cases", "n/a")))
        for fold, (_, validations) in self.fold_logs.items():
            if validations:
                items.append((f"validation Dice, {fold}", _num(validations[-1].get("val_dice_mean"))))
        if isinstance(self.summary, dict) and "mean_dice" in self.summary:
            items.append(("evaluation mean Dice", _num(self.summary["mean_dice"])))
        if isinstance(self.summary, dict) and "cases" in self.summary:
            items.append(("evaluated cases", self.summary["cases"]))
        return [kv_table(items)]

    def data_section(self) -> list[str]:
        body: list[str] = ["<h3>Data-set check</h3>"]
        if not isinstance(self.check, dict):
            body.append(missing(self.check_error or "check.json is not a JSON object"))
        else:
            summary = self.check.get("summary", {}) if isinstance(self.check.get("summary"), dict) else {}
            problems = self.check.get("problems") or []
            items: list[tuple[str, Any]] = [("data set", self.check.get("dataset", "n/a")),
                                            ("layout", self.check.get("layout", "n/a")),
                                            ("passed", self.check.get("ok", "n/a")), ("problems", len(problems))]
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
            body.append(kv_table(items))
            labels = summary.get("labels") or {}
            if labels:
                rows = []
                for value, entry in labels.items():
                    size_key = next((k for k in entry if k.startswith("mean_size")), None)
                    size = f"{fmt(entry[size_key])} {size_key.removeprefix('mean_size_')}" if size_key else "n/a"
                    rows.append([value, entry.get("name", ""), entry.get("cases_containing", "n/a"), size])
                body.append(table(["label", "name", "cases containing it", "mean size"], rows))
            if problems:
                shown = [[p.get("case_id") or "", p.get("path", ""), p.get("what", ""), p.get("fix", "")]
                         for p in problems[:10] if isinstance(p, dict)]
                body.append(table(["case", "file", "problem", "fix"], shown))
                if len(problems) > 10:
                    body.append(Raw(f'<p class="note">... and {len(problems) - 10} more in check.json</p>'))
        body.append("<h3>Fingerprint</h3>")
        fp = self.fingerprint
        if not isinstance(fp, dict):
            body.append(missing(self.fingerprint_error or "fingerprint.json is not a JSON object"))
        else:
            items = [("data set", fp.get("dataset_name", "n/a")), ("dimension", fp.get("dim", "n/a")),
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
                    f"{self.names.get(int(k), k) if str(k).isdigit() else k}: {fmt(v)}"
                    for k, v in fp["class_voxels_median"].items())))
            if "integer_images" in fp:
                items.append(("integer images", fp["integer_images"]))
            body.append(kv_table(items))
        return body

    def plan_section(self) -> list[str]:
        plan = self.plan
        if plan is None:
            return [missing(self.plan_error or "no plan")]
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

    def splits_section(self) -> list[str]:
        splits = self.splits
        if not isinstance(splits, dict) or not isinstance(splits.get("splits"), list):
            return [missing(self.splits_error or "splits.json has no 'splits' list")]
        items = [("folds", len(splits["splits"])), ("seed", splits.get("seed", "n/a")),
                 ("stratified", splits.get("stratified", "n/a")), ("held-out test cases", len(splits.get("test", [])))]
        rows = [[f"fold {k}", len(s.get("train", [])), len(s.get("val", []))] for k, s in enumerate(splits["splits"])]
        return [kv_table(items), table(["fold", "training cases", "validation cases"], rows)]

    def training_section(self) -> list[str]:
        folders = sorted((p for p in self.run.glob("fold_*") if p.is_dir()), key=_natural)
        if not folders:
            return [missing(f"no fold_* folders in {self.run}")]
        body: list[str] = []
        summary_rows = []
        classes = sorted(self.names)
        for folder in folders:
            fold = folder.name.removeprefix("fold_")
            body.append(f"<h3>Fold {esc(fold)}</h3>")
            log, curve = folder / "log.jsonl", folder / "curve.png"
            if log.exists():
                try:
                    steps, validations = self._fold_log(log)
                except (OSError, UnicodeDecodeError) as exc:
                    body.append(missing(f"cannot read {log} ({exc})"))
                    continue
                self.fold_logs[f"fold {fold}"] = (steps, validations)
                names = {str(v): n for v, n in self.names.items()}
                fig = training_curves(steps, validations, names, f"fold {fold}")
                body.append(html.img(png_data_uri(fig), f"training curves, fold {fold}"))
                last_step = steps[-1] if steps else {}
                final = validations[-1] if validations else {}
                elapsed = max(_num(last_step.get("elapsed_s")), _num(final.get("elapsed_s")))
                summary_rows.append([f"fold {fold}", max(int(_num(last_step.get("step", 0)) or 0),
                                                         int(_num(final.get("step", 0)) or 0)),
                                     _seconds(elapsed), len(validations)]
                                    + [_num(final.get("val_dice", {}).get(str(v))) for v in classes]
                                    + [_num(final.get("val_dice_mean"))])
            elif curve.exists():
                body.append(Raw('<p class="note">log.jsonl not found; the curve drawn during training:</p>'))
                body.append(html.img(file_data_uri(curve.read_bytes()), f"training curve, fold {fold}"))
            else:
                body.append(missing(f"neither log.jsonl nor curve.png in {folder}"))
        if summary_rows:
            headers = ["fold", "steps", "time", "validations"] + [f"Dice {self.names[v]}" for v in classes]
            body.insert(0, Raw('<p class="note">Last validation of each fold (the final one on all validation '
                               'cases when training finished):</p>')
                        + table(headers + ["mean Dice"], summary_rows))
        return body

    def postprocess_section(self) -> list[str]:
        data, error = _load_json(self.run / "bundle" / "postprocess.json")
        if not isinstance(data, dict):
            return [missing(error or "postprocess.json is not a JSON object")]
        decisions = data.get("decisions") or []
        body: list[str] = []
        rows = []
        for d in decisions:
            if not isinstance(d, dict):
                continue
            before, after = _num(d.get("dice_before")), _num(d.get("dice_after"))
            change = after - before
            kept = d.get("kept")
            rows.append([d.get("step", ""), d.get("class", ""), before, after,
                         Raw(f'<span class="{"good" if change > 0 else "bad" if change < 0 else ""}">'
                             f'{esc(f"{change:+.4f}" if math.isfinite(change) else "n/a")}</span>'),
                         Raw(f'<b>{"kept" if kept else "rejected"}</b>')])
        if rows:
            body.append(table(["step", "class", "Dice before", "Dice after", "change", "decision"], rows))
        else:
            body.append(Raw('<p class="note">No post-processing decisions recorded.</p>'))
        others = {k: v for k, v in data.items() if k not in ("decisions", "format")}
        if others:
            body.append(kv_table((k, html.generic(v) if isinstance(v, (dict, list)) else fmt(v))
                                 for k, v in others.items()))
        return body

    def evaluation_section(self) -> list[str]:
        if not isinstance(self.summary, dict) and not self.metrics_rows:
            return [missing(f"no evaluation in {self.evaluation} ({self.summary_error}; {self.metrics_error})")]
        body: list[str] = []
        summary = self.summary if isinstance(self.summary, dict) else {}
        if summary:
            scalars = [(k.replace("_", " "), v) for k, v in summary.items()
                       if not isinstance(v, (dict, list)) and k != "conventions"]
            for key, ids in summary.items():  # e.g. missing_predictions: case ids
                if isinstance(ids, list) and all(isinstance(i, (str, int)) for i in ids):
                    shown = ", ".join(map(str, ids[:20])) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")
                    scalars.append((key.replace("_", " "), shown or "none"))
            body.append(kv_table(scalars))
        else:
            body.append(missing(f"{self.summary_error}; the table below is computed from metrics.csv"))
        per_class = summary.get("per_class") if isinstance(summary.get("per_class"), dict) else None
        if per_class is None and self.metrics_rows:
            per_class = self._per_class_from_rows()
        if per_class:
            unit = summary.get("size_unit", "")
            cards = []
            for label, metrics in per_class.items():
                if not isinstance(metrics, dict):
                    continue
                ordered = [m for m in METRICS if m in metrics] + [m for m in metrics if m not in METRICS]
                rows = []
                for metric in ordered:
                    stats = metrics[metric] if isinstance(metrics[metric], dict) else {"mean": metrics[metric]}
                    name = METRIC_TITLES.get(metric, metric.replace("_", " "))
                    if metric.startswith("volume") and unit:
                        name += f" ({unit})"
                    rows.append([name] + [_num(stats.get(k)) for k in ("mean", "median", "std")]
                                + [stats.get("n", "")])
                cards.append(f'<div class="card"><h3>{esc(label)}</h3>'
                             + table(["metric", "mean", "median", "std", "n"], rows) + "</div>")
            body.append(Raw('<div class="cards">' + "".join(cards) + "</div>"))
        if self.metrics_rows:
            fig = self._boxplots()
            if fig is not None:
                body.append(html.img(png_data_uri(fig), "Dice and HD95 per class"))
        else:
            body.append(missing(f"{self.metrics_error}: no per-case plots"))
        empty = summary.get("empty")
        if empty:
            body.append("<h3>Empty masks</h3>")
            columns = sorted({k for v in empty.values() if isinstance(v, dict) for k in v}) \
                if isinstance(empty, dict) else []
            if columns and all(isinstance(v, dict) for v in empty.values()):  # {class: {count name: n}}
                body.append(table(["class"] + [c.replace("_", " ") for c in columns],
                                  ([name] + [counts.get(c, "") for c in columns] for name, counts in empty.items())))
            else:
                body.append(html.generic(empty))
        body.append("<h3>Conventions</h3>")
        if summary.get("conventions"):
            body.append(html.generic(summary["conventions"]))
        else:
            body.append(missing("summary.json states no conventions"))
        return body

    def _per_class_from_rows(self) -> dict[str, dict[str, dict[str, float]]]:
        grouped: dict[str, dict[str, list[float]]] = {}
        for row in self.metrics_rows:
            label = row.get("label") or f"label {row.get('label_value', '?')}"
            for metric in METRICS:
                if metric in row:
                    grouped.setdefault(label, {}).setdefault(metric, []).append(_num(row[metric]))
        out: dict[str, dict[str, dict[str, float]]] = {}
        for label, metrics in grouped.items():
            out[label] = {}
            for metric, values in metrics.items():
                finite = np.asarray([v for v in values if math.isfinite(v)])
                out[label][metric] = ({"mean": float(finite.mean()), "median": float(np.median(finite)),
                                       "std": float(finite.std()), "n": len(finite)} if len(finite)
                                      else {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0})
        return out

    def _boxplots(self) -> Any:
        values: dict[str, dict[str, list[float]]] = {}
        colours: dict[str, str] = {}
        for metric in ("dice", "hd95_mm"):
            if metric not in self.metrics_rows[0]:
                continue
            per_class: dict[str, list[float]] = {}
            for row in sorted(self.metrics_rows, key=lambda r: _num(r.get("label_value"))):
                label = row.get("label") or f"label {row.get('label_value', '?')}"
                per_class.setdefault(label, []).append(_num(row.get(metric)))
                value = _num(row.get("label_value"))
                colours[label] = label_colour(int(value)) if math.isfinite(value) else "#cccccc"
            values[metric] = per_class
        return metric_boxplots(values, METRIC_TITLES, colours) if values else None

    def cases_section(self) -> list[str]:
        if not self.metrics_rows:
            return [missing(f"{self.metrics_error}: no cases to show")]
        scores: dict[str, CaseScore] = {}
        for row in self.metrics_rows:
            case = row.get("case", "")
            score = scores.setdefault(case, CaseScore(case, row.get("prediction", ""), row.get("reference", "")))
            try:
                score.dice[int(row.get("label_value", ""))] = _num(row.get("dice"))
            except ValueError:
                continue
        picks = pick_cases(list(scores.values()))
        if not picks:
            return [missing("no case has a finite Dice")]
        body = [Raw('<p class="note">Cases ranked by mean Dice over the foreground classes. Solid lines: '
                    'reference; translucent fill: prediction. 3D cases: planes through the reference\'s centre '
                    'of mass.</p>')]
        bases = [self.evaluation, self.run, Path.cwd()]
        finder = ImageFinder()
        for role, score in picks:
            try:
                fig, caption = case_overlay(score, role, self.names, bases, finder)
            except MedsegError as exc:
                body.append(f"<h3>{esc(role)}: {esc(score.case)}</h3>")
                body.append(missing(f"cannot draw this case: {exc.message}"))
                continue
            body.append(Raw(f"<figure>{html.img(png_data_uri(fig), f'{role} case {score.case}')}"
                            f"<figcaption>{esc(caption)}</figcaption></figure>"))
        return body
