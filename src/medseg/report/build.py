"""Assemble the run report: one self-contained HTML file (inline CSS, images as base64 PNG, no scripts).

Every input is optional; a section whose input is missing or unreadable says so instead of failing. The inputs
are read once (:func:`medseg.report.run_data.load_run_data`) and each section draws from them alone
(:mod:`medseg.report.sections`, :mod:`medseg.report.evaluation`), in any order.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.report import html
from medseg.report.evaluation import cases_section, evaluation_section
from medseg.report.html import section
from medseg.report.run_data import RunData, load_run_data
from medseg.report.sections import (
    data_section,
    overview,
    plan_section,
    postprocess_section,
    splits_section,
    training_section,
)

SECTIONS: list[tuple[str, str, Callable[[RunData], list[str]]]] = [
    ("overview", "Overview", overview),
    ("data", "Data set", data_section),
    ("plan", "Plan", plan_section),
    ("splits", "Splits", splits_section),
    ("training", "Training", training_section),
    ("postprocess", "Post-processing", postprocess_section),
    ("evaluation", "Evaluation", evaluation_section),
    ("cases", "Cases", cases_section),
]


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
    out = Path(out_path)
    write_text_atomic(out, render(load_run_data(run, evaluation)))
    return out


def render(data: RunData) -> str:
    """The whole report page of ``data``."""
    rendered = [section(anchor, title, builder(data)) for anchor, title, builder in SECTIONS]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = f"run folder {data.run.resolve()} · generated {stamp} by medseg {__version__}"
    name = data.plan.dataset_name if data.plan else data.run.name
    return html.page(f"medseg report: {name}", subtitle, [(a, t) for a, t, _ in SECTIONS], rendered)
