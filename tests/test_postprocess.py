"""Post-processing: each operation on constructed masks, the nnU-Net selection rule, the JSON file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg import morphology
from medseg.bundle import POSTPROCESS_FILE
from medseg.errors import MedsegError
from medseg.postprocess import (
    PostprocessConfig,
    apply_postprocessing,
    apply_thresholds,
    choose_postprocessing,
    fill_holes,
    keep_largest_component,
    load_postprocessing,
    remove_small_objects,
    save_postprocessing,
    with_overrides,
)


def blobs() -> np.ndarray:
    """Class 1: a 27-voxel cube touching a 27-voxel class-2 cube (54 foreground together), a separate 40-voxel
    class-1 block and a 1-voxel class-1 speck; class 2 also has a 2-voxel speck."""
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[1:4, 1:4, 4:7] = 2
    labels[7:9, 6:11, 6:10] = 1  # 2 * 5 * 4 = 40
    labels[10, 1, 1] = 1
    labels[10, 10, 0:2] = 2
    return labels


def test_keep_largest_per_class():
    labels = blobs()
    out = keep_largest_component(labels, classes=[1])
    assert np.count_nonzero(out == 1) == 40 and out[10, 1, 1] == 0 and out[2, 2, 2] == 0
    assert np.array_equal(out == 2, labels == 2)  # other classes untouched
    out = keep_largest_component(labels)
    assert np.count_nonzero(out == 1) == 40 and np.count_nonzero(out == 2) == 27
    assert np.count_nonzero(labels) == 27 + 27 + 40 + 1 + 2  # input left alone


def test_keep_largest_foreground_keeps_labels_of_the_kept_component():
    labels = blobs()
    out = keep_largest_component(labels, classes="foreground")
    assert np.count_nonzero(out == 1) == 27 and np.count_nonzero(out == 2) == 27
    assert np.array_equal(out[1:4, 1:4, 1:7], labels[1:4, 1:4, 1:7])
    assert np.count_nonzero(out) == 54


def test_keep_largest_in_2d_and_small_slabs(monkeypatch):
    labels = np.zeros((20, 9), dtype=np.int32)
    labels[0:10, 0:3] = 3
    labels[15:17, 5:8] = 3
    expected = labels.copy()
    expected[15:17, 5:8] = 0
    monkeypatch.setattr(morphology, "CHUNK_VOXELS", 7)  # size counts and look-ups run over many slabs
    assert np.array_equal(keep_largest_component(labels), expected)
    assert np.array_equal(remove_small_objects(labels, 7, (1.0, 1.0)), expected)


def test_remove_small_objects_uses_anisotropic_mm3():
    labels = np.zeros((6, 10, 10), dtype=np.uint8)
    labels[1, 1, 1:3] = 1  # 2 voxels
    labels[4, 5:7, 5:7] = 1  # 4 voxels
    labels[1, 8, 8] = 2  # 1 voxel of another class
    # 3 mm slices: 6 mm^3 and 12 mm^3 components
    out = remove_small_objects(labels, 10.0, spacing=(3.0, 1.0, 1.0), classes=[1])
    assert np.count_nonzero(out == 1) == 4 and out[4, 5, 5] == 1 and out[1, 8, 8] == 2
    # isotropic 1 mm: both are under 10 mm^3
    assert np.count_nonzero(remove_small_objects(labels, 10.0, spacing=(1.0, 1.0, 1.0)) == 1) == 0
    # 0 is off
    assert np.array_equal(remove_small_objects(labels, 0.0, spacing=(1.0, 1.0, 1.0)), labels)
    with pytest.raises(ValueError, match="spacing"):
        remove_small_objects(labels, 1.0, spacing=(1.0, 1.0))


def test_remove_small_objects_2d_mm2():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[1:3, 1:3] = 1  # 4 px
    labels[6:9, 6:9] = 1  # 9 px
    # 0.5 x 2 mm pixels are 1 mm^2: 4 mm^2 goes, 9 mm^2 stays; at 1 x 2 mm (2 mm^2), both stay
    assert np.count_nonzero(remove_small_objects(labels, 5.0, (0.5, 2.0)) == 1) == 9
    assert np.count_nonzero(remove_small_objects(labels, 5.0, (1.0, 2.0)) == 1) == 13


def hollow_cube(value: int = 1) -> np.ndarray:
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[1:8, 1:8, 1:8] = value
    labels[3:6, 3:6, 3:6] = 0  # enclosed 27-voxel cavity
    return labels


def test_fill_holes_fills_an_enclosed_cavity():
    out = fill_holes(hollow_cube())
    assert np.all(out[1:8, 1:8, 1:8] == 1)


def test_fill_holes_leaves_a_cavity_open_to_the_border():
    labels = hollow_cube()
    labels[4, 4, 0:4] = 0  # a channel from the cavity to the image border
    assert np.array_equal(fill_holes(labels), labels)


def test_fill_holes_is_3d_a_tube_is_not_filled():
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[:, 2:7, 2:7] = 1
    labels[:, 4, 4] = 0  # every slice has a hole, but the tube is open at both ends
    assert np.array_equal(fill_holes(labels), labels)


def test_fill_holes_leaves_a_cavity_holding_another_class():
    labels = hollow_cube()
    labels[4, 4, 4] = 2  # the cavity is background around a class-2 voxel
    out = fill_holes(labels, classes=[1])
    assert np.array_equal(out, labels)
    # a separate, purely background cavity in the same class is still filled
    labels = np.zeros((9, 9, 18), dtype=np.uint8)
    labels[:, :, :9] = hollow_cube()
    labels[4, 4, 4] = 2
    labels[:, :, 9:] = hollow_cube()
    out = fill_holes(labels)
    assert np.all(out[1:8, 1:8, 10:17] == 1)
    assert out[4, 4, 4] == 2 and out[3, 3, 3] == 0


def test_apply_thresholds():
    probabilities = np.array([
        [[0.1, 0.5], [0.2, 0.9]],
        [[0.6, 0.3], [0.45, 0.05]],
        [[0.3, 0.2], [0.35, 0.05]],
    ], dtype=np.float32)
    assert np.array_equal(apply_thresholds(probabilities, {}), [[1, 0], [1, 0]])
    out = apply_thresholds(probabilities, {1: 0.5})
    assert out.dtype == np.uint8 and np.array_equal(out, [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="3 classes"):
        apply_thresholds(probabilities, {3: 0.5})


def test_apply_postprocessing_runs_the_configured_steps():
    labels = blobs()
    config = PostprocessConfig()
    config.set_class(1, keep_largest=True)
    config.set_class(2, min_size_mm=3.0)
    out = apply_postprocessing(labels, config, spacing=(1.0, 1.0, 1.0))
    assert np.count_nonzero(out == 1) == 40 and np.count_nonzero(out == 2) == 27 and out.dtype == labels.dtype
    assert np.array_equal(apply_postprocessing(labels, PostprocessConfig(), None), labels)
    with pytest.raises(ValueError, match="spacing"):
        apply_postprocessing(labels, config, None)

    config = PostprocessConfig(classes={1: {"threshold": 0.5}})
    probabilities = np.stack([np.full((4, 4), 0.45), np.full((4, 4), 0.55)]).astype(np.float32)
    probabilities[:, 0, 0] = (0.4, 0.45)  # below the threshold: background
    probabilities[:, 0, 1] = (0.6, 0.4)
    out = apply_postprocessing(np.zeros((4, 4), dtype=np.int16), config, None, probabilities=probabilities)
    assert out.dtype == np.int16 and out[0, 0] == 0 and out[0, 1] == 0 and out[1, 1] == 1
    with pytest.raises(ValueError, match="probabilities"):
        apply_postprocessing(np.zeros((4, 4), dtype=np.int16), config, None)


def dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    p, r = pred == value, ref == value
    total = p.sum() + r.sum()
    return 1.0 if total == 0 else 2.0 * (p & r).sum() / total


def test_choose_keeps_a_step_that_helps():
    ref = np.zeros((16, 16, 16), dtype=np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[2:8, 2:8, 8:12] = 2
    spurious = ref.copy()
    spurious[13:15, 13:15, 13:15] = 2  # a spurious class-2 blob away from the organ
    hollow = ref.copy()
    hollow[4, 4, 4] = 0  # a hole the reference does not have
    empty = np.zeros_like(ref)
    cases = [(spurious, ref), (hollow, ref), (empty, empty)]
    before = [p.copy() for p, _r in cases]
    config = choose_postprocessing(iter(cases), {0: "background", 1: "a", 2: "b"})
    for (p, _r), b in zip(cases, before):
        assert np.array_equal(p, b)  # the caller's arrays are not changed

    assert config.keep_largest_foreground
    assert config.for_class(1).fill_holes and not config.for_class(2).fill_holes
    assert not config.for_class(1).keep_largest and not config.for_class(2).keep_largest
    steps = {(d["step"], d["class"]): d for d in config.decisions}
    assert list(steps) == [("keep_largest_foreground", "foreground"), ("keep_largest", 1), ("keep_largest", 2),
                           ("fill_holes", 1), ("fill_holes", 2)]
    fg = steps[("keep_largest_foreground", "foreground")]
    assert fg["kept"] and fg["dice_after"] > fg["dice_before"]
    # the recorded Dice is what applying the chosen config gives (empty vs empty counts as 1, as recorded)
    assert config.dice_empty == "one" and config.to_dict()["dice_empty"] == "one"
    out = [apply_postprocessing(p, config, (1.0, 1.0, 1.0)) for p, _r in cases]
    for value in (1, 2):
        last = steps[("fill_holes", value)]
        recorded = last["dice_after"] if last["kept"] else last["dice_before"]
        assert recorded == pytest.approx(np.mean([dice(o, r, value) for o, (_p, r) in zip(out, cases)]))
    assert np.array_equal(out[0], ref) and np.array_equal(out[1], ref)
    assert PostprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_choose_rejects_a_step_that_hurts():
    ref = np.zeros((12, 12), dtype=np.uint8)
    ref[1:4, 1:4] = 1
    ref[7:11, 7:11] = 1  # the reference has two components
    pred = ref.copy()
    pred[1, 1] = 0
    config = choose_postprocessing([(pred, ref)], {0: "bg", 1: "organ"})
    assert not config.keep_largest_foreground and not config.for_class(1).keep_largest
    assert all(not d["kept"] for d in config.decisions)
    fg = config.decisions[0]
    assert fg["dice_after"] < fg["dice_before"]
    # equal within tolerance is not a gain
    config = choose_postprocessing([(ref, ref)], {1: "organ"})
    assert config.is_noop()


def test_json_round_trip(tmp_path):
    config = PostprocessConfig(keep_largest_foreground=True)
    config.set_class(1, keep_largest=True, fill_holes=True, min_size_mm=12.5)
    config.set_class(2, threshold=0.3)
    config.decisions.append({"step": "keep_largest_foreground", "class": "foreground", "dice_before": 0.5,
                             "dice_after": 0.6, "kept": True})
    config.decisions.append({"step": "fill_holes", "class": 2, "dice_before": 0.7, "dice_after": 0.7, "kept": False})
    path = save_postprocessing(config, tmp_path / "bundle" / POSTPROCESS_FILE)
    data = json.loads(path.read_text())
    assert data["format"] == "medseg-postprocess" and data["version"] == 1 and "2" in data["classes"]
    assert data["dice_empty"] == "one"  # the Dice convention of the decisions
    back = load_postprocessing(path)
    assert back == config
    assert PostprocessConfig.from_dict(config.to_dict()) == config
    assert back.thresholds == {2: 0.3}
    assert [p.name for p in path.parent.iterdir()] == [POSTPROCESS_FILE]  # no temporary left behind
    del data["dice_empty"]  # a file from before the convention was recorded: its decisions used "one" too
    assert PostprocessConfig.from_dict(data) == config


def test_dice_empty_comes_from_the_file():
    data = {"format": "medseg-postprocess", "version": 1, "dice_empty": "nan"}
    assert PostprocessConfig.from_dict(data).dice_empty == "nan"
    assert PostprocessConfig.from_dict(data).to_dict()["dice_empty"] == "nan"


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "cannot read"),
    ('{"labels": {"1": "liver"}, "version": 1}', "not a medseg post-processing file"),
    ('{"format": "medseg-postprocess", "version": 7}', "version 7"),
    ('{"format": "medseg-postprocess", "version": 1, "classes": {"1": {"threshold": 2}}}', "threshold"),
    ('{"format": "medseg-postprocess", "version": 1, "classes": {"1": {"keep_larges": true}}}', "keep_larges"),
    ('{"format": "medseg-postprocess", "version": 1, "classes": {"x": {}}}', "not a valid"),
    ('{"format": "medseg-postprocess", "version": 1, "dice_empty": "zero"}', "dice_empty must be one of"),
])
def test_bad_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / POSTPROCESS_FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(MedsegError, match=message) as info:
        load_postprocessing(path)
    assert info.value.path == str(path) and info.value.fix


def test_command_line_overrides_replace_the_bundle_choice():
    bundle_choice = PostprocessConfig(keep_largest_foreground=True)
    bundle_choice.set_class(2, fill_holes=True, threshold=0.4)
    bundle_choice.decisions.append({"step": "keep_largest_foreground", "class": "foreground", "dice_before": 0.5,
                                    "dice_after": 0.6, "kept": True})
    per_class = with_overrides(bundle_choice, [0, 1, 2], keep_largest="2", min_size_mm=30)
    assert not per_class.keep_largest_foreground and per_class.labels_with("keep_largest") == [2]
    assert per_class.labels_with("fill_holes") == [2] and per_class.thresholds == {2: 0.4}  # kept from the file
    assert per_class.for_class(1).min_size_mm == per_class.for_class(2).min_size_mm == 30
    assert per_class.decisions == [] and bundle_choice.keep_largest_foreground  # the original is untouched
    nothing = with_overrides(None, [0, 1, 2], keep_largest="foreground", fill_holes="none")
    assert nothing.keep_largest_foreground and nothing.labels_with("keep_largest") == []
    assert with_overrides(None, [0, 1, 2], fill_holes="all").labels_with("fill_holes") == [1, 2]
    for bad in ({"keep_largest": "3"}, {"fill_holes": "lungs"}, {"min_size_mm": -1.0}):
        with pytest.raises(MedsegError) as info:
            with_overrides(None, [0, 1, 2], **bad)
        assert info.value.fix
