"""The HTML run report: self-contained, every section present or marked missing, best/median/worst cases drawn."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import MedsegError
from medseg.io import Image, write_image
from medseg.plan import ChannelNorm, Plan
from medseg.report import build_report

LABELS = {1: "anterior", 2: "posterior"}
# case -> Dice per label: a is the best, b the median, c the worst
DICE = {"case_a": (0.91, 0.87), "case_b": (0.62, 0.55), "case_c": (0.21, 0.13)}
COLUMNS = ["case", "prediction", "reference", "label", "label_value", "dice", "iou", "precision", "recall", "f1",
           "hd95_mm", "assd_mm", "nsd", "volume_pred", "volume_ref", "volume_error"]


def make_plan(dim: int) -> Plan:
    return Plan(dataset_name="Blobs", dim=dim, data_dim=dim, channels=1, channel_names={0: "MRI"},
                labels={0: "background", **LABELS}, target_spacing=[1.5, 1.0, 1.0][-dim:],
                normalization=[ChannelNorm("zscore")], patch_size=[16, 24, 24][-dim:], batch_size=3,
                features=[8, 16, 32], strides=[[2] * dim, [2] * dim], precision="bf16")


def write_case(root: Path, case: str, shape: tuple[int, ...], shift: int, suffix: str) -> tuple[Path, Path, Path]:
    """Image, reference and a prediction shifted by ``shift`` voxels along the last axis."""
    ref = np.zeros(shape, np.uint8)
    centre = tuple(s // 2 for s in shape)
    box = tuple(slice(c - 3, c + 3) for c in centre)
    ref[box] = 1
    ref[tuple(slice(c - 3, c + 3) for c in centre[:-1]) + (slice(centre[-1] + 3, centre[-1] + 6),)] = 2
    pred = np.roll(ref, shift, axis=-1)
    image = (ref * 60 + 40 + np.random.default_rng(0).integers(0, 30, shape)).astype(np.uint8)
    spacing = (1.0, 1.0, 1.5)[: len(shape)]
    paths = root / "images" / f"{case}_0000{suffix}", root / "labels" / f"{case}{suffix}", root / "pred" / \
        f"{case}{suffix}"
    for path, array in zip(paths, (image, ref, pred)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(Image.from_array(array[None], spacing=spacing), path)
    return paths


def make_run(tmp_path: Path, dim: int = 3, with_image_list: bool = True) -> Path:
    """A run folder as `medseg train` + `medseg evaluate` leave it, with tiny images."""
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    make_plan(dim).save(run / "plan.json")
    shape, suffix = ((12, 20, 20), ".nii.gz") if dim == 3 else ((40, 48), ".png")
    summary = {"cases": 3, "readable_cases": 3, "test_images": 0, "dim": dim, "channels": 1,
               "shape_min": list(shape), "shape_median": list(shape), "shape_max": list(shape),
               "spacing_min": [1.5, 1.0, 1.0][-dim:], "spacing_median": [1.5, 1.0, 1.0][-dim:],
               "spacing_max": [1.5, 1.0, 1.0][-dim:],
               "intensity": [{"channel": 0, "min": 40.0, "max": 229.0, "mean_of_case_means": 77.7}],
               "labels": {"0": {"name": "background", "cases_containing": 3, "mean_size_ml": 3.1},
                          "1": {"name": "anterior", "cases_containing": 3, "mean_size_ml": 0.32}}}
    (run / "check.json").write_text(json.dumps({"dataset": "data/blobs", "layout": "decathlon", "ok": True,
                                                "summary": summary, "problems": []}))
    (run / "fingerprint.json").write_text(json.dumps({
        "dataset_name": "Blobs", "dim": dim, "num_cases": 3, "spacings": [[1.5, 1.0, 1.0][-dim:]] * 3,
        "shapes": [list(shape)] * 3, "intensities": [{"mean": 100.0, "std": 20.0, "percentile_00_5": 41.0,
                                                       "percentile_99_5": 220.0}],
        "class_voxels_median": {"1": 216.0, "2": 108.0}, "integer_images": True}))
    (run / "splits.json").write_text(json.dumps({"folds": 2, "seed": 0, "stratified": False, "test": [],
                                                 "splits": [{"train": ["case_a"], "val": ["case_b", "case_c"]},
                                                            {"train": ["case_b", "case_c"], "val": ["case_a"]}]}))
    lines = [{"event": "step", "step": s, "loss": 1.5 / s**0.5, "lr": 0.01, "elapsed_s": s * 0.1, "progress": s / 40}
             for s in range(1, 41)]
    lines.insert(20, {"event": "validation", "step": 20, "elapsed_s": 2.1, "final": False, "cases": 2,
                      "val_dice": {"1": 0.4, "2": 0.3}, "val_dice_mean": 0.35, "seconds": 0.1})
    lines.append({"event": "validation", "step": 40, "elapsed_s": 4.3, "final": True, "cases": 2,
                  "val_dice": {"1": 0.7712, "2": 0.6643}, "val_dice_mean": 0.71775, "seconds": 0.1})
    (run / "fold_0" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "st')
    (run / "bundle").mkdir()
    (run / "bundle" / "postprocess.json").write_text(json.dumps({
        "format": "medseg-postprocess", "version": 1, "labels": {"1": "anterior", "2": "posterior"},
        "decisions": [{"step": "largest_component", "class": "anterior", "dice_before": 0.80, "dice_after": 0.83,
                       "kept": True},
                      {"step": "largest_component", "class": "posterior", "dice_before": 0.70, "dice_after": 0.69,
                       "kept": False}]}))

    data = tmp_path / "data"
    entries, rows = [], []
    for shift, (case, dice) in enumerate(DICE.items()):
        image, ref, pred = write_case(data, case, shape, shift * 2, suffix)
        entries.append({"input": [str(image)] if with_image_list else str(image), "output": pred.name})
        for (value, name), d in zip(LABELS.items(), dice):
            rows.append({"case": case, "prediction": str(pred), "reference": str(ref), "label": name,
                         "label_value": value, "dice": d, "iou": d / (2 - d), "precision": d, "recall": d, "f1": d,
                         "hd95_mm": "inf" if case == "case_c" and value == 2 else 10 * (1 - d), "assd_mm": 1 - d,
                         "nsd": d, "volume_pred": 0.2, "volume_ref": 0.21, "volume_error": -0.01})
    if dim == 3:
        (data / "pred" / "predictions.json").write_text(json.dumps({"cases": entries}))
    evaluation = run / "evaluation"
    evaluation.mkdir()
    with open(evaluation / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    per_class = {name: {"dice": {"mean": 0.58123, "median": 0.62, "std": 0.287, "n": 3},
                        "hd95_mm": {"mean": 4.2, "median": 3.8, "std": 2.25, "n": 3},
                        "nsd": {"mean": None, "median": None, "std": None, "n": 0}} for name in LABELS.values()}
    (evaluation / "summary.json").write_text(json.dumps({  # as medseg.evaluate writes it
        "cases": 3, "size_unit": "ml" if dim == 3 else "mm2", "tolerance_mm": 1.0,
        "conventions": "Dice of two empty masks is 1; HD95 against an empty mask is infinite.",
        "per_class": per_class, "empty": {name: {"both_empty": 0, "pred_empty_only": 0, "ref_empty_only": 1}
                                          for name in LABELS.values()},
        "mean_dice": 0.5467, "missing_predictions": ["case_x"], "extra_predictions": []}))
    return run


def pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def assert_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()
    for target in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert target.startswith(("data:image/png;base64,", "#")), target


def test_report_3d_has_every_section(tmp_path):
    run = make_run(tmp_path, dim=3)
    out = build_report(run, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html" and out.exists()
    assert not [p for p in out.parent.iterdir() if p.name != "report.html"]  # no temporary left behind
    text = out.read_text()
    assert_self_contained(text)
    images = pngs(text)
    assert len(images) == 5  # training curves, box plots, best/median/worst overlays
    assert all(png.startswith(b"\x89PNG") for png in images)
    assert len(text) < 1_500_000
    assert "Not available" not in text
    # data set, plan, splits, training
    assert "decathlon" in text and "anterior" in text and "16 × 24 × 24" in text and "1.5 × 1 × 1" in text
    assert "bf16" in text and "zscore" in text and "dice_ce" in text and "(2, 2, 2), (2, 2, 2)" in text
    assert "0.7712" in text and "0.6643" in text  # final validation Dice of fold 0
    # post-processing, metric table, conventions
    assert "largest_component" in text and "kept" in text and "rejected" in text and "+0.0300" in text
    assert "0.5812" in text and "0.287" in text and "2.25" in text and "0.5467" in text
    assert "HD95 against an empty mask is infinite" in text
    assert "ref empty only" in text and "case_x" in text
    # best, median and worst case, drawn on their images
    for role, case in (("best", "case_a"), ("median", "case_b"), ("worst", "case_c")):
        assert f"{role}: {case}" in text
    assert "blank background" not in text


def test_report_2d_without_predictions_json_draws_on_blank(tmp_path):
    run = make_run(tmp_path, dim=2)
    (run / "fingerprint.json").unlink()
    (tmp_path / "data" / "pred" / "case_b.png").unlink()
    out = build_report(run, tmp_path / "report.html")
    text = out.read_text()
    assert_self_contained(text)
    assert len(pngs(text)) == 4  # curves, box plots, best and worst; the median case cannot be read
    assert "best: case_a" in text and "worst: case_c" in text
    assert "blank background" in text
    assert "cannot draw this case" in text and "case_b.png" in text
    assert "Not available: fingerprint.json not found" in text


def test_missing_inputs_are_reported_not_fatal(tmp_path):
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    make_plan(3).save(run / "plan.json")
    out = build_report(run, tmp_path / "report.html")
    text = out.read_text()
    assert_self_contained(text)
    for name in ("check.json", "splits.json", "postprocess.json", "metrics.csv"):
        assert f"Not available: {name} not found" in text, name
    assert "Not available: neither log.jsonl nor curve.png" in text
    assert "no evaluation in" in text and "no cases to show" in text
    assert "16 × 24 × 24" in text  # the plan is still shown
    assert not pngs(text)
    # A curve.png stands in for a missing log; a broken plan is named, not fatal.
    (run / "fold_0" / "curve.png").write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="))
    (run / "plan.json").write_text("{not json")
    text = build_report(run, tmp_path / "report.html").read_text()
    assert len(pngs(text)) == 1 and "cannot read plan" in text


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(MedsegError, match="not a run folder"):
        build_report(tmp_path / "nowhere", tmp_path / "r.html")
    (tmp_path / "run").mkdir()
    with pytest.raises(MedsegError, match="is a folder"):
        build_report(tmp_path / "run", tmp_path)
    with pytest.raises(MedsegError, match="evaluation folder does not exist"):
        build_report(tmp_path / "run", tmp_path / "r.html", evaluation_dir=tmp_path / "eval")


def test_cli_report(monkeypatch, capsys, tmp_path):
    run = make_run(tmp_path, dim=2)
    (run / "fold_0" / "log.jsonl").unlink()  # no figures: this test is about the command
    (run / "evaluation" / "metrics.csv").unlink()
    (run / "evaluation").rename(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "argv", ["medseg", "report", str(run), "-o", str(tmp_path / "r.html"),
                                      "--evaluation", str(tmp_path / "elsewhere")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert (exit_info.value.code or 0) == 0, captured.err
    assert str(tmp_path / "r.html") in captured.out
    text = (tmp_path / "r.html").read_text()
    assert "0.5467" in text and "0.5812" in text  # summary.json from --evaluation
    monkeypatch.setattr(sys, "argv", ["medseg", "report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "not a run folder" in err and "Traceback" not in err
