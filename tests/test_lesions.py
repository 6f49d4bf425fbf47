"""Lesions counted and measured: components in predictions.json, lesion-wise detection in medseg evaluate."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from builders import blob_case, run_cli
from medseg.evaluate import CSV_COLUMNS, LESION_METRICS, evaluate_case, lesion_scores, write_evaluation
from medseg.evaluate.folders import evaluate_folders
from medseg.io import Image, read_image, write_image
from medseg.postprocess import measure_components

SPACING_XYZ = (0.8, 0.5, 3.0)  # x, y, z in mm
ORIGIN = (-100.0, 20.0, 7.5)


def two_blobs() -> np.ndarray:
    labels = np.zeros((10, 30, 40), np.uint8)  # z, y, x
    labels[2:5, 4:8, 10:20] = 1  # 3 x 4 x 10 = 120 voxels
    labels[6:8, 20:23, 30:31] = 1  # 2 x 3 x 1 = 6 voxels
    labels[0, 0, 0] = 2  # one voxel of another label
    return labels


def test_components_volumes_centroids_and_extents_in_physical_units():
    labels = two_blobs()
    image = Image.from_array(labels[None], spacing=SPACING_XYZ, origin=ORIGIN)
    found = measure_components(labels, image.spacing_zyx, {0: "background", 1: "tumour", 2: "vessel", 3: "none"},
                               image.voxel_to_physical)
    assert set(found) == {"tumour", "vessel", "none"}
    assert found["none"] == {"count": 0, "components": []}
    assert found["vessel"]["count"] == 1 and found["vessel"]["components"][0]["centroid_mm"] == list(ORIGIN)
    tumour = found["tumour"]
    assert tumour["count"] == 2
    big, small = tumour["components"]  # largest first
    voxel_ml = 0.8 * 0.5 * 3.0 / 1000
    assert big["voxels"] == 120 and big["volume"] == pytest.approx(120 * voxel_ml, abs=1e-4)
    assert small["voxels"] == 6 and small["volume"] == pytest.approx(6 * voxel_ml, abs=1e-4)
    assert big["centroid_voxel"] == [3.0, 5.5, 14.5]  # z, y, x
    assert big["centroid_mm"] == pytest.approx([-100 + 14.5 * 0.8, 20 + 5.5 * 0.5, 7.5 + 3.0 * 3.0])
    assert small["centroid_mm"] == pytest.approx([-100 + 30 * 0.8, 20 + 21 * 0.5, 7.5 + 6.5 * 3.0])
    assert big["bbox_start"] == [2, 4, 10] and big["bbox_stop"] == [5, 8, 20]
    assert big["extent_mm"] == pytest.approx([3 * 3.0, 4 * 0.5, 10 * 0.8])
    assert small["bbox_start"] == [6, 20, 30] and small["bbox_stop"] == [8, 23, 31]
    assert small["extent_mm"] == pytest.approx([2 * 3.0, 3 * 0.5, 1 * 0.8])
    # without a geometry: index times spacing
    plain = measure_components(labels, image.spacing_zyx, {1: "tumour"})["tumour"]["components"][0]
    assert plain["centroid_mm"] == pytest.approx([14.5 * 0.8, 5.5 * 0.5, 3.0 * 3.0])


def test_centroid_follows_an_oblique_direction():
    angle = 0.4
    c, s = np.cos(angle), np.sin(angle)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0)
    labels = two_blobs()
    image = Image.from_array(labels[None], spacing=SPACING_XYZ, origin=ORIGIN, direction=direction)
    big = measure_components(labels, image.spacing_zyx, {1: "t"}, image.voxel_to_physical)["t"]["components"][0]
    index_xyz1 = np.array([14.5, 5.5, 3.0, 1.0])
    assert big["centroid_mm"] == pytest.approx((image.index_to_world() @ index_xyz1)[:3].tolist(), abs=0.01)
    assert image.voxel_to_physical([[0, 0, 0]]) == pytest.approx(np.array([ORIGIN]))


def test_2d_areas_and_full_connectivity():
    labels = np.zeros((8, 8), np.uint8)
    labels[1, 1] = labels[2, 2] = 1  # touching at a corner only: one component
    labels[5:7, 5:8] = 1
    found = measure_components(labels, (0.5, 2.0), {1: "spot"})["spot"]
    assert found["count"] == 2
    assert [c["volume"] for c in found["components"]] == [6 * 1.0, 2 * 1.0]  # mm^2
    assert found["components"][1]["centroid_mm"] == pytest.approx([1.5 * 2.0, 1.5 * 0.5])


def test_component_list_is_capped_but_all_are_counted():
    labels = np.zeros((5, 40, 40), np.uint8)
    labels[::2, ::3, ::3] = 1  # 3 * 14 * 14 isolated specks
    labels[1, 10:13, 10:13] = 1  # one bigger component (joins the specks around it)
    found = measure_components(labels, (1.0, 1.0, 1.0), {1: "noise"}, max_components=5)["noise"]
    _, expected = ndimage.label(labels, structure=np.ones((3, 3, 3)))
    assert found["count"] == expected and len(found["components"]) == 5
    sizes = [c["voxels"] for c in found["components"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 9 and sizes[-1] == 1


def lesion_masks() -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.zeros((20, 20, 20), np.uint8), np.zeros((20, 20, 20), np.uint8)
    ref[2:6, 2:6, 2:6] = 1  # lesion A, 64 voxels, found by a prediction split in two
    pred[2:6, 2:6, 2:4] = 1  # 32 voxels
    pred[2:6, 2:6, 5:7] = 1  # 32 voxels, 16 of them inside A
    ref[10:14, 10:14, 10:14] = 1  # lesion B, missed
    pred[17:19, 17:19, 17:19] = 1  # spurious, 8 voxels
    return pred, ref


def test_lesion_matching_missed_spurious_and_split():
    pred, ref = lesion_masks()
    scores = lesion_scores(pred, ref)
    assert {k: scores[k] for k in LESION_METRICS[:5]} == {"lesions_ref": 2, "lesions_pred": 3, "lesions_matched": 1,
                                                          "lesions_missed": 1, "lesions_spurious": 1}
    dice_a = 2 * 48 / (64 + 64)  # A against the union of both halves
    assert scores["lesion_dice"] == pytest.approx((dice_a + 0) / (2 + 1))
    assert scores["lesion_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    perfect = lesion_scores(ref, ref)
    assert perfect["lesion_dice"] == 1.0 and perfect["lesion_f1"] == 1.0 and perfect["lesions_matched"] == 2


def test_one_blob_bridging_two_lesions_matches_both():
    ref = np.zeros((3, 3, 12), np.uint8)
    ref[1, 1, 1:4] = ref[1, 1, 7:10] = 1
    pred = np.zeros_like(ref)
    pred[1, 1, 1:10] = 1
    scores = lesion_scores(pred, ref)
    assert scores["lesions_matched"] == 2 and scores["lesions_spurious"] == 0 and scores["lesion_f1"] == 1.0
    assert scores["lesion_dice"] == pytest.approx(2 * 3 / (3 + 9))


@pytest.mark.parametrize(("pred_has", "ref_has"), [(False, False), (True, False), (False, True)])
def test_lesion_empty_conventions(pred_has, ref_has):
    pred, ref = lesion_masks()
    pred, ref = pred * pred_has, ref * ref_has
    scores = lesion_scores(pred, ref)
    expected = 1.0 if not (pred_has or ref_has) else 0.0
    assert scores["lesion_dice"] == expected and scores["lesion_f1"] == expected
    assert scores["lesions_ref"] == (2 if ref_has else 0) and scores["lesions_pred"] == (3 if pred_has else 0)
    assert scores["lesions_missed"] == scores["lesions_ref"] and scores["lesions_spurious"] == scores["lesions_pred"]
    nan_convention = lesion_scores(pred, ref, empty="nan")
    assert math.isnan(nan_convention["lesion_f1"]) == (not (pred_has or ref_has))


def test_brats_options_dilation_and_minimum_size():
    ref = np.zeros((1, 5, 20), np.uint8)
    ref[0, 2, 2:8] = 1  # 6 voxels
    ref[0, 2, 9:11] = 1  # 2 voxels, one gap away: merged with the first once dilated
    pred = np.zeros_like(ref)
    pred[0, 2, 11:13] = 1  # next to the second lesion, not on it: spurious, unless lesions are dilated
    plain = lesion_scores(pred, ref)
    assert (plain["lesions_ref"], plain["lesions_matched"], plain["lesions_spurious"]) == (2, 0, 1)
    dilated = lesion_scores(pred, ref, dilation=1)
    assert (dilated["lesions_ref"], dilated["lesions_matched"], dilated["lesions_spurious"]) == (1, 1, 0)
    assert dilated["lesion_dice"] == 0.0  # matched, but the undilated lesion and the blob share no voxel
    big_only = lesion_scores(ref * 0, ref, min_lesion_size=2.0, voxel_size=1.0)  # the 2-voxel lesion left out
    assert (big_only["lesions_ref"], big_only["lesions_missed"]) == (1, 1)


def brute_force(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The BraTS 2023 loop, lesion by lesion, without dilation or size threshold."""
    full = np.ones((3,) * ref.ndim)
    ref_cc, n_ref = ndimage.label(ref, structure=full)
    pred_cc, n_pred = ndimage.label(pred, structure=full)
    hit: set[int] = set()
    dice, matched = [], 0
    for lesion in range(1, n_ref + 1):
        mine = ref_cc == lesion
        touching = set(np.unique(pred_cc[mine])) - {0}
        hit |= touching
        union = np.isin(pred_cc, list(touching))
        dice.append(2 * np.count_nonzero(mine & union) / (np.count_nonzero(mine) + np.count_nonzero(union)))
        matched += bool(touching)
    spurious = n_pred - len(hit)
    return {"lesion_dice": sum(dice) / (n_ref + spurious),
            "lesion_f1": 2 * matched / (2 * matched + (n_ref - matched) + spurious)}


@pytest.mark.parametrize("seed", range(4))
def test_lesion_scores_agree_with_a_lesion_by_lesion_loop(seed):
    rng = np.random.default_rng(seed)
    ref = ndimage.binary_opening(rng.random((12, 24, 24)) > 0.8) | (rng.random((12, 24, 24)) > 0.995)
    pred = ndimage.binary_dilation(ref) & (rng.random(ref.shape) > 0.3) | (rng.random(ref.shape) > 0.99)
    got, expected = lesion_scores(pred, ref), brute_force(pred, ref)
    assert got["lesions_ref"] > 3 and got["lesions_spurious"] > 0
    assert got["lesion_dice"] == pytest.approx(expected["lesion_dice"])
    assert got["lesion_f1"] == pytest.approx(expected["lesion_f1"])


def test_evaluate_writes_lesion_columns_for_labels_and_regions(tmp_path):
    pred, ref = lesion_masks()
    rows = evaluate_case(pred * 2, ref * 3, (1.0, 1.0, 1.0), {1: "whole", 2: "inner"},
                         members={1: (2, 3), 2: (3,)})  # region classes: predicted 2 counts for "whole" only
    whole, inner = rows
    assert whole["lesions_matched"] == 1 and whole["lesion_dice"] == pytest.approx(0.75 / 3)
    assert inner["lesions_pred"] == 0 and inner["lesions_missed"] == 2 and inner["lesion_dice"] == 0.0
    for folder, array in (("pred", pred), ("gt", ref)):
        write_image(Image.from_array(array[None]), tmp_path / folder / "case.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels={1: "tumour"}, workers=1)
    csv_path, json_path = write_evaluation(result, tmp_path / "report")
    with open(csv_path) as handle:
        row = next(csv.DictReader(handle))
    assert set(LESION_METRICS) <= set(CSV_COLUMNS)
    assert (row["lesions_ref"], row["lesions_pred"], row["lesions_spurious"]) == ("2", "3", "1")
    summary = json.loads(json_path.read_text())
    assert summary["per_class"]["tumour"]["lesion_f1"]["mean"] == pytest.approx(0.5)
    assert "lesion_dice" in summary["conventions"]


def test_predictions_json_lists_the_components(tmp_path, bundle_3d):
    image, _ = blob_case(np.random.default_rng(5), (16, 16, 16))
    source = tmp_path / "in" / "scan.nii.gz"
    write_image(Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 12.0)), source)
    assert run_cli("predict", str(bundle_3d), str(source), "-o", str(tmp_path / "out"), "--no-progress") == 0
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"][0]
    mask = read_image(record["output"])
    assert record["size_unit"] == "ml" and set(record["components"]) == {"small", "bright"}
    for value, name in ((1, "small"), (2, "bright")):
        found = record["components"][name]
        _, count = ndimage.label(mask.array[0] == value, structure=np.ones((3, 3, 3)))
        assert found["count"] == count and len(found["components"]) == min(count, 100)
        if count <= 100:
            assert sum(c["volume"] for c in found["components"]) == pytest.approx(record["volumes"][name], abs=1e-3)
        for component in found["components"]:
            assert component["centroid_mm"] == pytest.approx(
                mask.voxel_to_physical(component["centroid_voxel"]).tolist(), abs=0.02)
            assert all(0 <= a < b <= s for a, b, s in zip(component["bbox_start"], component["bbox_stop"], mask.shape))
