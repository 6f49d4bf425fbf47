"""medseg.evaluate: known answers in physical units, empty-mask conventions, an independent cross-check, the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from builders import shared
from medseg.cli import main
from medseg.errors import MedsegError
from medseg.evaluate import (
    CONVENTIONS,
    CSV_COLUMNS,
    DICE_EMPTY,
    dice_from_counts,
    dice_per_class,
    evaluate_case,
    evaluate_folders,
    write_evaluation,
)
from medseg.io import Image, read_image, write_image

SPACING = (3.0, 0.5, 0.8)  # z, y, x in mm: strongly anisotropic


def cube(shape=(24, 24, 24), start=(5, 5, 5), size=10) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[tuple(slice(s, s + size) for s in start)] = 1
    return array


def one(rows: list[dict], value: int = 1) -> dict:
    return next(row for row in rows if row["label_value"] == value)


@pytest.mark.parametrize(("axis", "expected_hd"), [(0, 2 * 3.0), (2, 2 * 0.8)])
def test_shifted_cube_known_answers(axis, expected_hd):
    ref = cube()
    start = [5, 5, 5]
    start[axis] += 2
    pred = cube(start=tuple(start))
    row = one(evaluate_case(pred, ref, SPACING, {0: "background", 1: "cube"}))
    assert row["label"] == "cube" and len(evaluate_case(pred, ref, SPACING, {0: "bg", 1: "cube"})) == 1
    assert row["dice"] == pytest.approx(0.8) and row["f1"] == pytest.approx(0.8)
    assert row["iou"] == pytest.approx(800 / 1200)
    assert row["precision"] == pytest.approx(0.8) and row["recall"] == pytest.approx(0.8)
    assert row["hd95_mm"] == pytest.approx(expected_hd, abs=1e-5)
    assert 0 < row["assd_mm"] < expected_hd
    assert row["volume_pred"] == pytest.approx(1000 * 3.0 * 0.5 * 0.8 / 1000)  # 1.2 ml
    assert row["volume_error"] == pytest.approx(0.0)
    assert (row["nsd"] == 1.0) == (expected_hd <= 2.0) and row["nsd"] > 0  # default tolerance 2 mm
    assert one(evaluate_case(pred, ref, SPACING, {1: "cube"}, tolerance_mm=expected_hd / 2))["nsd"] < 1.0
    assert one(evaluate_case(pred, ref, SPACING, {1: "cube"}, tolerance_mm=expected_hd))["nsd"] == 1.0
    # second implementation: SimpleITK's (max) Hausdorff distance, which for a shifted cube equals its HD95
    images = []
    for array in (pred, ref):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(SPACING)))
        images.append(image)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(*images)
    assert hausdorff.GetHausdorffDistance() == pytest.approx(row["hd95_mm"], abs=1e-5)


def _reference_surface_metrics(p: np.ndarray, r: np.ndarray, spacing, tolerance: float) -> dict[str, float]:
    """Written independently: surfaces by scipy erosion, distances by scipy's exact Euclidean distance transform."""
    edges_p = p & ~ndimage.binary_erosion(p)
    edges_r = r & ~ndimage.binary_erosion(r)
    to_r = ndimage.distance_transform_edt(~edges_r, sampling=spacing)[edges_p]
    to_p = ndimage.distance_transform_edt(~edges_p, sampling=spacing)[edges_r]
    both = np.concatenate([to_r, to_p])
    return {"hd95_mm": max(np.percentile(to_r, 95), np.percentile(to_p, 95)), "assd_mm": both.mean(),
            "nsd": np.mean(both <= tolerance)}


def _blobs(seed: int, shape=(20, 40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[field > 0.02] = 1
    labels[field > 0.06] = 2
    labels[[0, -1]] = 0
    labels[:, [0, -1]] = 0
    labels[:, :, [0, -1]] = 0
    return labels


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated-argument call inside compute_*
def test_distances_match_an_independent_implementation_and_monai():
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    pred, ref = _blobs(1), _blobs(2)
    rows = evaluate_case(pred, ref, SPACING, {1: "a", 2: "b"}, tolerance_mm=1.5)
    for row in rows:
        p, r = pred == row["label_value"], ref == row["label_value"]
        expected = _reference_surface_metrics(p, r, SPACING, 1.5)
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value, rel=1e-5), metric
        yp, yr = torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None]
        kwargs = {"include_background": True, "spacing": list(SPACING)}
        assert row["hd95_mm"] == pytest.approx(float(compute_hausdorff_distance(yp, yr, percentile=95, **kwargs)),
                                               rel=1e-5)
        assert row["assd_mm"] == pytest.approx(float(compute_average_surface_distance(yp, yr, symmetric=True,
                                                                                       **kwargs)), rel=1e-5)
        assert row["nsd"] == pytest.approx(float(compute_surface_dice(yp, yr, [1.5], **kwargs)), rel=1e-5)


def test_dice_per_class_on_arrays_and_tensors():
    import torch

    ref = np.zeros((4, 4), np.int64)
    ref[:2] = 1  # 8 voxels of class 1
    pred = np.zeros_like(ref)
    pred[1:3] = 1  # 8 voxels, 4 of them shared
    for p, r in ((pred, ref), (torch.from_numpy(pred), torch.from_numpy(ref))):
        assert dice_per_class(p, r, [1, 2], empty="one") == {1: 0.5, 2: 1.0}  # class 2 in neither map
        scores = dice_per_class(p, r, [1, 2], empty="nan")
        assert scores[1] == 0.5 and math.isnan(scores[2])
    for empty in ("one", "nan"):  # present in one map only: 0 under either convention
        assert dice_per_class(pred, np.zeros_like(ref), [1], empty=empty) == {1: 0.0}
    with pytest.raises(ValueError, match="differs"):
        dice_per_class(pred, ref[:2], [1], empty="one")
    with pytest.raises(ValueError, match="empty must be one of one, nan"):
        dice_from_counts(0, 0, 0, empty="zero")
    with pytest.raises(TypeError):
        dice_per_class(pred, ref, [1])  # the convention is never implicit


def test_every_reported_dice_uses_one_convention():
    """Absent from both scores 1 wherever medseg reports Dice: the per-case rows, the summary, and the counts
    training validation and post-processing use, so their JSON files agree on the same predictions."""
    assert DICE_EMPTY == "one"
    empty, ref = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    ref[1:3, 1:3] = 1
    rows = evaluate_case(empty, ref, (1, 1), {1: "a", 2: "b"})  # class 2 absent from both
    assert [row["dice"] for row in rows] == [0.0, 1.0]
    assert dice_per_class(empty, ref, [1, 2], empty=DICE_EMPTY) == {1: 0.0, 2: 1.0}
    assert dice_from_counts(0, 0, 0, empty=DICE_EMPTY) == 1.0


def test_evaluate_and_report_import_neither_torch_nor_monai():
    """`medseg evaluate` and `medseg report` start in a second or two: importing torch or MONAI would cost more
    than their work."""
    code = ("import sys, medseg.cli, medseg.evaluate, medseg.report; "
            "print(sorted({'torch', 'monai'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_empty_mask_conventions():
    empty, ref = np.zeros((12, 12, 12), np.uint8), cube((12, 12, 12), (2, 2, 2), 4)
    both = one(evaluate_case(empty, empty, (1, 1, 1), {1: "x"}))
    assert all(both[m] == 1.0 for m in ("dice", "iou", "precision", "recall", "f1"))
    assert all(math.isnan(both[m]) for m in ("hd95_mm", "assd_mm", "nsd"))
    for pred, reference in ((empty, ref), (ref, empty)):
        row = one(evaluate_case(pred, reference, (1, 1, 1), {1: "x"}))
        assert all(row[m] == 0.0 for m in ("dice", "iou", "precision", "recall", "f1", "nsd"))
        assert math.isnan(row["hd95_mm"]) and math.isnan(row["assd_mm"])


def test_region_masking_and_2d_area():
    ref = np.zeros((30, 30), np.uint8)
    ref[5:15, 5:15] = 1
    pred = ref.copy()
    pred[25:28, 25:28] = 1  # a false positive outside the field of view
    region = np.zeros_like(ref)
    region[:20, :20] = 1
    spacing = (0.5, 0.25)
    assert one(evaluate_case(pred, ref, spacing, {1: "x"}))["dice"] < 1
    row = one(evaluate_case(pred, ref, spacing, {1: "x"}, region=region))
    assert row["dice"] == 1.0 and row["hd95_mm"] == 0.0 and row["nsd"] == 1.0
    assert row["volume_ref"] == pytest.approx(100 * 0.5 * 0.25)  # mm2 in 2D


def _write(array: np.ndarray, path, spacing=(1.0, 1.0, 1.0)):
    return write_image(Image.from_array(array[None], spacing=spacing), path)


def test_folders_report_files_and_matching(tmp_path):
    (tmp_path / "gt").mkdir()
    spacing_xy = (0.25, 0.5)  # ITK order: x, y
    square = np.zeros((30, 30), np.uint8)
    square[5:15, 5:15] = 1
    _write(square, tmp_path / "gt" / "a.mha", spacing_xy)
    _write(square * 2, tmp_path / "gt" / "b.mha", spacing_xy)
    _write(square, tmp_path / "gt" / "c.mha", spacing_xy)
    _write(square, tmp_path / "pred" / "a.mha", spacing_xy)
    _write(np.zeros_like(square), tmp_path / "pred" / "b_0000.mha", spacing_xy)  # nnU-Net channel suffix
    _write(square, tmp_path / "pred" / "z.mha", spacing_xy)
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", workers=1)
    assert result.labels == {1: "label_1", 2: "label_2"}  # the values present, both-empty rows added
    assert result.cases == ["a", "b"] and len(result.rows) == 4
    assert result.missing_predictions == ["c"] and result.extra_predictions == ["z"]
    csv_path, json_path = write_evaluation(result, tmp_path / "report")
    with open(csv_path) as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == CSV_COLUMNS
        assert len(list(reader)) == 4
    summary = json.loads(json_path.read_text())
    assert summary["size_unit"] == "mm2" and summary["cases"] == 2 and summary["tolerance_mm"] == 2.0
    assert summary["dice_empty"] == "one"
    assert summary["per_class"]["label_1"]["volume_ref"]["mean"] == pytest.approx(50 * 0.125)
    assert summary["empty"]["label_2"] == {"both_empty": 1, "pred_empty_only": 1, "ref_empty_only": 0}
    assert summary["per_class"]["label_2"]["hd95_mm"]["n"] == 0
    assert summary["per_class"]["label_1"]["dice"] == {"mean": 1.0, "median": 1.0, "std": 0.0, "n": 2}
    assert summary["mean_dice"] == pytest.approx(0.75)  # label_1: 1, label_2: (1 + 0) / 2
    assert summary["conventions"] == CONVENTIONS
    assert "absent from both prediction and reference: dice, iou, precision, recall, f1 = 1;" in CONVENTIONS
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["metrics.csv", "summary.json"]

    region = np.zeros_like(square)
    region[:10] = 1  # one mask for every case: keeps rows 5..9 of the square (50 pixels)
    _write(region, tmp_path / "fov.mha", spacing_xy)
    masked = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels={1: "x"}, region_dir=tmp_path / "fov.mha")
    assert [row["volume_ref"] for row in masked.rows] == [pytest.approx(50 * 0.125), 0.0]


def test_grid_mismatch_names_both_files(tmp_path):
    _write(cube((12, 12, 12), (2, 2, 2), 4), tmp_path / "gt" / "a.nii.gz")
    _write(cube((12, 12, 12), (2, 2, 2), 4), tmp_path / "pred" / "a.nii.gz", spacing=(1.0, 1.0, 2.0))
    with pytest.raises(MedsegError) as error:
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    message = error.value.message
    assert str(tmp_path / "pred" / "a.nii.gz") in message and str(tmp_path / "gt" / "a.nii.gz") in message
    assert "spacing" in message


def test_process_pool_gives_the_serial_rows(tmp_path):
    for k in range(3):
        _write(_blobs(k, (12, 20, 20)), tmp_path / "gt" / f"c{k}.nii.gz", (0.8, 0.5, 3.0))
        _write(_blobs(k + 10, (12, 20, 20)), tmp_path / "pred" / f"c{k}.nii.gz", (0.8, 0.5, 3.0))
    serial = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels="1:a,2:b", workers=1)
    pooled = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels="1:a,2:b", workers=2)
    assert json.dumps(serial.rows) == json.dumps(pooled.rows)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["medseg", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_on_real_hippocampus_labels(monkeypatch, capsys, tmp_path):
    root = shared("msd_hippocampus")
    cases = json.loads((root / "split.json").read_text())["test"][:3]
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    for case in cases:
        source = root / "labelsTr" / f"{case}.nii.gz"
        shutil.copy(source, gt / source.name)
        image = read_image(source)
        labels = image.array[0]
        eroded = np.zeros_like(labels)
        for value in (1, 2):
            eroded[ndimage.binary_erosion(labels == value)] = value
        write_image(image.with_array(eroded[None]), pred / source.name)

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", gt, gt, "-o", tmp_path / "same", "--labels",
                             root / "dataset.json")
    assert code == 0, err
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["size_unit"] == "ml" and summary["mean_dice"] == 1.0
    assert {stats["hd95_mm"]["mean"] for stats in summary["per_class"].values()} == {0.0}
    assert "Anterior" in out and "summary.json" in out

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", pred, gt, "-o", tmp_path / "eroded", "--labels",
                             root / "dataset.json", "--tolerance", "1")
    assert code == 0, err
    with open(tmp_path / "eroded" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {row["label"] for row in rows} == {"Anterior", "Posterior"}
    assert all(float(row["dice"]) < 1 and float(row["hd95_mm"]) >= 1 and float(row["volume_error"]) < 0
               for row in rows)

    single = pred / f"{cases[0]}.nii.gz"
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", single, gt / single.name, "-o", tmp_path / "one")
    assert code == 0, err  # labels found in dataset.json above the reference
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["cases"] == 1

    _write(np.zeros((5, 5, 5), np.uint8), tmp_path / "bad" / single.name)
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "bad", gt, "-o", tmp_path / "x")
    assert code == 1 and "Traceback" not in err
    assert str(tmp_path / "bad" / single.name) in err and str(gt / single.name) in err and "shape" in err

    code, _, err = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "gt2", gt, "-o", tmp_path / "x")
    assert code == 1 and "does not exist" in err
    (tmp_path / "nothing").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "nothing", gt, "-o", tmp_path / "x")
    assert code == 1 and "no prediction matches" in err
