"""Masks whose label values are not 0..K (0/255 binary masks): flagged when undeclared, trained as 0..K and
written back as declared when declared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from builders import make_2d_dataset, tiny_plan
from medseg.data import check_dataset, discover_dataset
from medseg.data.label_values import consecutive_labels, to_class_values, to_disk_values
from medseg.io import read_image, write_image


def as_0_255(root: Path) -> Path:
    """The 2D blob set with its masks saved as 0/255, as many tools export binary masks."""
    for path in sorted((root / "masks").iterdir()):
        mask = read_image(path)
        write_image(mask.with_array((mask.array > 0).astype(np.uint8) * 255), path)
    return root


def test_consecutive_labels_renumber_only_what_is_not_0_to_k():
    assert consecutive_labels({0: "bg", 255: "lesion"}) == ({0: "bg", 1: "lesion"}, {1: 255})
    assert consecutive_labels({0: "bg", 1: "a", 3: "c"}) == ({0: "bg", 1: "a", 2: "c"}, {2: 3})
    assert consecutive_labels({0: "bg", 1: "a", 2: "b"}) == ({0: "bg", 1: "a", 2: "b"}, {})
    disk = np.array([0, 1, 3, 2, 40000])
    classes = to_class_values(disk, {2: 3})
    assert classes.tolist() == [0, 1, 2, 0, 0]  # undeclared values (2, 40000) become background; check flags them
    assert to_disk_values(classes, {2: 3}).tolist() == [0, 1, 3, 0, 0]
    assert to_disk_values(np.array([0, 1]), {1: 40000}).dtype == np.uint16


def test_undeclared_0_255_masks_are_a_problem_with_the_fix(tmp_path):
    root = as_0_255(make_2d_dataset(tmp_path / "ds", cases=3))
    report = check_dataset(discover_dataset(root), workers=1)
    (problem,) = report.problems
    assert "label values 0, 255, not 0..1" in problem.what and "256 outputs" in problem.what
    assert '255:label_255' in problem.fix and "dataset.json" in problem.fix


def test_declared_0_255_masks_train_two_classes_and_predict_0_255(tmp_path):
    import torch

    from medseg.bundle import load_bundle
    from medseg.evaluate import evaluate_folders
    from medseg.infer.cohort import predict_paths
    from medseg.infer.predict import PredictOptions
    from medseg.plan import Plan
    from medseg.train import TrainConfig, TrainRequest, train

    root = as_0_255(make_2d_dataset(tmp_path / "ds", cases=4))
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "255": "lesion"}}))
    dataset = discover_dataset(root)
    assert dataset.labels == {0: "background", 1: "lesion"} and dataset.label_values == {1: 255}
    report = check_dataset(dataset, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    assert set(report.summary()["labels"]) == {"0", "1"}  # statistics count classes
    plan_path = tiny_plan(root, tmp_path / "plan.json")
    plan = Plan.load(plan_path)
    assert plan.num_outputs == 2 and plan.label_values == {1: 255} and plan.disk_labels == {0: "background",
                                                                                             255: "lesion"}
    torch.set_num_threads(1)
    bundle = train(TrainRequest(data=root, run_dir=tmp_path / "run", plan_path=plan_path, cache_root=tmp_path / "c",
                                workers=1, progress_bar=False, folds=2), TrainConfig(epochs=1, steps_per_epoch=2,
                                                                                     validations=1))
    loaded = load_bundle(bundle)
    assert loaded.plan.label_values == {1: 255}  # travels in the bundle's plan.json
    images = sorted((root / "images").iterdir())[:2]
    manifest = predict_paths(loaded, images, tmp_path / "pred", PredictOptions(tta=False))
    for case in manifest["cases"]:
        assert set(np.unique(read_image(case["output"]).array).tolist()) <= {0, 255}
    result = evaluate_folders(tmp_path / "pred", root / "masks", labels=root / "dataset.json")
    assert 255 in result.labels and sorted(result.cases) == [p.stem for p in images]
    assert all(row["label_value"] == 255 and row["volume_ref"] > 0 for row in result.rows)
    assert any(row["volume_pred"] > 0 for row in result.rows)  # predicted 255s are scored against the 255s
