"""The report's sections on the evaluation: metric tables, box plots, and the best, median and worst cases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.evaluate import METRICS, summary_statistics
from medseg.report import html
from medseg.report.html import Raw, esc, kv_table, missing, table
from medseg.report.overlay import CaseScore, ImageFinder, case_overlay, pick_cases
from medseg.report.plots import metric_boxplots, png_data_uri
from medseg.report.run_data import RunData, num

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)", "nsd": "NSD"}


def evaluation_section(data: RunData) -> list[str]:
    if not isinstance(data.summary, dict) and not data.metrics_rows:
        return [missing(f"no evaluation in {data.evaluation} ({data.summary_error}; {data.metrics_error})")]
    summary = data.summary if isinstance(data.summary, dict) else {}
    body: list[str] = [_summary_table(summary, data.summary_error)]
    per_class = summary.get("per_class") if isinstance(summary.get("per_class"), dict) else None
    if per_class is None and data.metrics_rows:
        per_class = _per_class_from_rows(data)
    if per_class:
        body.append(_per_class_cards(per_class, summary.get("size_unit", "")))
    body += _boxplot_figure(data)
    body += _empty_masks(summary.get("empty"))
    body += _conventions(summary)
    return body


def _summary_table(summary: dict[str, Any], summary_error: str | None) -> Raw:
    """The summary's scalars and case-id lists as a key-value table; a note when there is no summary."""
    if not summary:
        return missing(f"{summary_error}; the table below is computed from metrics.csv")
    scalars = [(k.replace("_", " "), v) for k, v in summary.items()
               if not isinstance(v, (dict, list)) and k != "conventions"]
    for key, ids in summary.items():  # e.g. missing_predictions: case ids
        if isinstance(ids, list) and all(isinstance(i, (str, int)) for i in ids):
            shown = ", ".join(map(str, ids[:20])) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")
            scalars.append((key.replace("_", " "), shown or "none"))
    return kv_table(scalars)


def _per_class_cards(per_class: dict[str, Any], unit: str) -> Raw:
    """A card per class with its metric statistics; entries that are not dicts are skipped."""
    cards = [f'<div class="card"><h3>{esc(label)}</h3>'
             + table(["metric", "mean", "median", "std", "n"], _metric_rows(metrics, unit)) + "</div>"
             for label, metrics in per_class.items() if isinstance(metrics, dict)]
    return Raw('<div class="cards">' + "".join(cards) + "</div>")


def _metric_rows(metrics: dict[str, Any], unit: str) -> list[list[Any]]:
    """Rows of one class's card: known metrics first, in ``METRICS`` order; a bare number counts as the mean."""
    ordered = [m for m in METRICS if m in metrics] + [m for m in metrics if m not in METRICS]
    rows = []
    for metric in ordered:
        stats = metrics[metric] if isinstance(metrics[metric], dict) else {"mean": metrics[metric]}
        name = METRIC_TITLES.get(metric, metric.replace("_", " "))
        if metric.startswith("volume") and unit:
            name += f" ({unit})"
        rows.append([name] + [num(stats.get(k)) for k in ("mean", "median", "std")] + [stats.get("n", "")])
    return rows


def _boxplot_figure(data: RunData) -> list[str]:
    """The per-class box plots of ``metrics.csv``; a note when it is missing."""
    if not data.metrics_rows:
        return [missing(f"{data.metrics_error}: no per-case plots")]
    fig = _boxplots(data)
    return [] if fig is None else [html.img(png_data_uri(fig), "Dice and HD95 per class")]


def _empty_masks(empty: Any) -> list[str]:
    """The empty-mask counts: a table for ``{class: {count name: n}}``, anything else shown as it is."""
    if not empty:
        return []
    columns = sorted({k for v in empty.values() if isinstance(v, dict) for k in v}) \
        if isinstance(empty, dict) else []
    if columns and all(isinstance(v, dict) for v in empty.values()):
        shown = table(["class"] + [c.replace("_", " ") for c in columns],
                      ([name] + [counts.get(c, "") for c in columns] for name, counts in empty.items()))
    else:
        shown = html.generic(empty)
    return ["<h3>Empty masks</h3>", shown]


def _conventions(summary: dict[str, Any]) -> list[str]:
    conventions = summary.get("conventions")
    return ["<h3>Conventions</h3>",
            html.generic(conventions) if conventions else missing("summary.json states no conventions")]


def _per_class_from_rows(data: RunData) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``summary.json``'s per-class statistics, computed from ``metrics.csv`` when the summary is missing."""
    grouped: dict[str, dict[str, list[float | None]]] = {}
    for row in data.metrics_rows:
        label = row.get("label") or f"label {row.get('label_value', '?')}"
        for metric in METRICS:
            if metric in row:
                grouped.setdefault(label, {}).setdefault(metric, []).append(num(row[metric]))
    return {label: {metric: summary_statistics(values) for metric, values in metrics.items()}
            for label, metrics in grouped.items()}


def _boxplots(data: RunData) -> Any:
    values: dict[str, dict[str, list[float]]] = {}
    colours: dict[str, str] = {}
    for metric in ("dice", "hd95_mm"):
        if metric not in data.metrics_rows[0]:
            continue
        per_class: dict[str, list[float]] = {}
        for row in sorted(data.metrics_rows, key=lambda r: num(r.get("label_value"))):
            label = row.get("label") or f"label {row.get('label_value', '?')}"
            per_class.setdefault(label, []).append(num(row.get(metric)))
            value = num(row.get("label_value"))
            colours[label] = label_colour(int(value)) if math.isfinite(value) else "#cccccc"
        values[metric] = per_class
    return metric_boxplots(values, METRIC_TITLES, colours) if values else None


def cases_section(data: RunData) -> list[str]:
    if not data.metrics_rows:
        return [missing(f"{data.metrics_error}: no cases to show")]
    scores: dict[str, CaseScore] = {}
    for row in data.metrics_rows:
        case = row.get("case", "")
        score = scores.setdefault(case, CaseScore(case, row.get("prediction", ""), row.get("reference", "")))
        try:
            score.dice[int(row.get("label_value", ""))] = num(row.get("dice"))
        except ValueError:
            continue
    picks = pick_cases(list(scores.values()))
    if not picks:
        return [missing("no case has a finite Dice")]
    body = [Raw('<p class="note">Cases ranked by mean Dice over the foreground classes. Solid lines: '
                'reference; translucent fill: prediction. 3D cases: planes through the reference\'s centre '
                'of mass.</p>')]
    bases = [data.evaluation, data.run, Path.cwd()]
    finder = ImageFinder()
    for role, score in picks:
        try:
            fig, caption = case_overlay(score, role, data.names, bases, finder)
        except MedsegError as exc:
            body.append(f"<h3>{esc(role)}: {esc(score.case)}</h3>")
            body.append(missing(f"cannot draw this case: {exc.message}"))
            continue
        body.append(Raw(f"<figure>{html.img(png_data_uri(fig), f'{role} case {score.case}')}"
                        f"<figcaption>{esc(caption)}</figcaption></figure>"))
    return body
