"""``medseg compare BUNDLE_A BUNDLE_B DATA``: both bundles predict the same labelled cases, both are evaluated,
the paired differences judged (:mod:`medseg.evaluate.compare`) and written as an HTML report with side-by-side
overlays and a JSON file next to it.

The cases are DATA's ``split.json`` test list (its labelled cases), else every labelled case. This module sits in
the report layer because it needs both prediction (``medseg.infer``) and evaluation, which lie below it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.bundle import Bundle, load_bundle
from medseg.data.case import Case
from medseg.data.dataset import discover_dataset
from medseg.errors import MedsegError
from medseg.evaluate import EvaluationResult, evaluate_folders
from medseg.evaluate.compare import RESAMPLES, ComparisonResult, compare_evaluations
from medseg.io import image_suffix, read_image
from medseg.io.atomic import write_text_atomic
from medseg.report import html
from medseg.report.html import Raw, esc, kv_table, missing, section, table
from medseg.report.overlay import make_views, overlay_figure
from medseg.report.plots import png_data_uri

OVERLAY_CASES = 3  # cases drawn side by side: where B loses most Dice


def compare_bundles(a: str | Path, b: str | Path, data: str | Path, out: str | Path | None = None, *,
                    workers: int | None = None, resamples: int = RESAMPLES, seed: int = 0,
                    predictions: str | Path | None = None) -> ComparisonResult:
    """Score bundles ``a`` and ``b`` on the same cases of ``data``; with ``out`` write ``out`` (HTML) and its
    ``.json``. ``predictions`` keeps both models' masks there (``a/``, ``b/``); default a temporary folder."""
    bundle_a, bundle_b = load_bundle(a), load_bundle(b)
    for bundle in (bundle_a, bundle_b):
        if bundle.plan.regions:
            raise MedsegError("is a region bundle; compare scores label bundles only", bundle.folder,
                              "evaluate each bundle's predictions with `medseg evaluate --regions`")
    if (bundle_a.plan.data_dim, bundle_a.plan.channels) != (bundle_b.plan.data_dim, bundle_b.plan.channels):
        raise MedsegError(f"bundle A takes {bundle_a.plan.data_dim}D images of {bundle_a.plan.channels} channel(s), "
                          f"B {bundle_b.plan.data_dim}D of {bundle_b.plan.channels}", bundle_b.folder,
                          "compare bundles made for the same kind of images")
    from medseg.infer.cohort import PredictInput, predict_paths  # torch: only when bundles are compared

    cases = comparison_cases(Path(data))
    with tempfile.TemporaryDirectory(prefix="medseg-compare-") as scratch:
        root = Path(predictions) if predictions is not None else Path(scratch)
        reference = _link_references(cases, root / "reference")
        inputs = [PredictInput(c.case_id, list(c.image_files)) for c in cases]
        evaluations, notes = [], []
        for name, bundle in (("a", bundle_a), ("b", bundle_b)):
            manifest = predict_paths(bundle, inputs, root / name)
            notes += [f"{name.upper()} failed on {f['case']}: {f['error']}" for f in manifest["failed"]]
            evaluations.append(evaluate_folders(root / name, reference, labels=bundle.plan.disk_labels,
                                                workers=workers))
        result = compare_evaluations(*evaluations, str(bundle_a.folder), str(bundle_b.folder), bundle_a.version,
                                     bundle_b.version, resamples=resamples, seed=seed)
        result.notes += notes
        if out is not None:
            write_comparison(result, Path(out), (bundle_a, bundle_b), evaluations, {c.case_id: c for c in cases})
    return result


def comparison_cases(data: Path) -> list[Case]:
    """The labelled cases of ``split.json``'s test list, else every labelled case."""
    dataset = discover_dataset(data)
    labelled = [c for c in dataset.cases if c.label_file is not None]
    test = set((dataset.split or {}).get("test") or [])
    chosen = [c for c in labelled if c.case_id in test] if test else labelled
    if not chosen:
        raise MedsegError("has no labelled case to compare on" + (" in split.json's test list" if test else ""),
                          data, "give a data set folder with masks (imagesTr/labelsTr or images/masks)")
    return chosen


def _link_references(cases: list[Case], folder: Path) -> Path:
    """The cases' masks in one folder, named by case id (links where the file system allows, else copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        assert case.label_file is not None
        target = folder / f"{case.case_id}{image_suffix(case.label_file)}"
        target.unlink(missing_ok=True)
        try:
            os.symlink(case.label_file.resolve(), target)
        except OSError:
            shutil.copyfile(case.label_file, target)
    return folder


# ---- the report -------------------------------------------------------------------------------------------

def write_comparison(result: ComparisonResult, out: Path, bundles: tuple[Bundle, Bundle],
                     evaluations: list[EvaluationResult], cases: dict[str, Case]) -> tuple[Path, Path]:
    """``out`` (HTML, self-contained) and ``out`` with ``.json``; returns both."""
    if out.is_dir():
        raise MedsegError("is a folder", out, "give a file name such as compare.html")
    json_path = out.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")
    sections = [
        section("overview", "Overview", _overview(result, bundles)),
        section("classes", "Per class", _class_table(result)),
        section("worse", "Cases where B is worse", _worse_table(result)),
        section("cases", "Side by side", _overlays(result, evaluations, cases)),
    ]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = html.page(f"medseg compare: {result.version_a} vs {result.version_b}",
                     f"generated {stamp} by medseg {__version__}",
                     [("overview", "Overview"), ("classes", "Per class"), ("worse", "Worse cases"),
                      ("cases", "Side by side")], sections)
    write_text_atomic(out, page)
    return out, json_path


def _overview(result: ComparisonResult, bundles: tuple[Bundle, Bundle]) -> list[str]:
    verdict = (Raw(f'<span class="bad">B is significantly worse on {esc(", ".join(result.worse_classes))}</span>')
               if result.b_worse else Raw('<span class="good">B is not significantly worse on any class</span>'))
    rows = [("verdict", verdict), ("cases", len(result.cases))]
    for role, bundle in zip("AB", bundles):
        lineage = bundle.lineage
        rows.append((f"bundle {role}", f"{bundle.folder} · version {bundle.version} · {bundle.plan.dataset_name}"
                     + (f" · fine-tuned from {lineage['parent']}" if lineage.get("parent") else "")))
    rows.append(("interval", f"{result.confidence:.0%} paired bootstrap over cases, {result.resamples} resamples, "
                             f"seed {result.seed}"))
    body: list[str] = [kv_table(rows)]
    body += [Raw(f'<p class="note">{esc(note)}</p>') for note in result.notes]
    return body


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _class_table(result: ComparisonResult) -> list[str]:
    rows = []
    for d in result.differences:
        judged = Raw('<span class="bad">B worse</span>') if d.b_worse else ("" if d.metric != "dice" else "no")
        rows.append([d.label, "Dice" if d.metric == "dice" else "HD95 (mm)", d.cases, _num(d.mean_a), _num(d.mean_b),
                     _num(d.difference), f"[{_num(d.ci_low)}, {_num(d.ci_high)}]", judged])
    note = Raw('<p class="note">B - A per case, averaged over the cases where both values exist. B is judged '
               'significantly worse on a class when the Dice interval lies entirely below 0.</p>')
    return [note, table(["class", "metric", "cases", "mean A", "mean B", "B - A", "95 % CI", "significantly worse"],
                        rows)]


def _worse_table(result: ComparisonResult) -> list[str]:
    if not result.worse_cases:
        return [Raw('<p class="good">No case where B\'s mean Dice is below A\'s.</p>')]
    rows = [[w["case"], _num(w["dice_a"]), _num(w["dice_b"]), _num(w["difference"])] for w in result.worse_cases]
    return [table(["case", "mean Dice A", "mean Dice B", "B - A"], rows)]


def _overlays(result: ComparisonResult, evaluations: list[EvaluationResult], cases: dict[str, Case]) -> list[str]:
    chosen = [w["case"] for w in result.worse_cases[:OVERLAY_CASES]] or result.cases[:1]
    if not chosen:
        return [missing("no case was scored by both models")]
    body: list[str] = [Raw('<p class="note">' + ("The cases where B loses most Dice" if result.worse_cases else
                                                 "No case is worse with B; the first case") +
                           ". Solid lines: reference; translucent fill: each model's prediction.</p>")]
    for case_id in chosen:
        figures = []
        for role, version, evaluation in zip("AB", (result.version_a, result.version_b), evaluations):
            rows = [r for r in evaluation.rows if r["case"] == case_id]
            if not rows:
                figures.append(str(missing(f"{role} did not predict {case_id}")))
                continue
            try:
                figures.append(_case_figure(rows, cases.get(case_id), evaluation.labels, f"{role} ({version})"))
            except MedsegError as exc:
                figures.append(str(missing(f"cannot draw {case_id} for {role}: {exc.message}")))
        body.append(Raw(f"<h3>{esc(case_id)}</h3><div class=\"cards\">{''.join(figures)}</div>"))
    return body


def _case_figure(rows: list[dict[str, Any]], case: Case | None, names: dict[int, str], title: str) -> str:
    prediction, reference = read_image(rows[0]["prediction"]), read_image(rows[0]["reference"])
    image = None
    if case is not None and case.image_files:
        image = read_image(case.image_files[0])
        if image.shape != reference.shape:
            image = None
    dice = [float(r["dice"]) for r in rows if r.get("dice") is not None and math.isfinite(float(r["dice"]))]
    label = f"{title}: mean Dice {np.mean(dice):.3f}" if dice else title
    fig = overlay_figure(make_views(reference, prediction, image), names, label)
    return f"<figure>{html.img(png_data_uri(fig), label)}</figure>"
