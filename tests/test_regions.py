"""Region-based classes (nnU-Net v2 style): parsing, masks and painting, the dice_bce loss, and a tiny region
training that predicts label maps and is evaluated per region."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builders import REGION_LABELS, make_region_dataset, shared, tiny_plan
from medseg.bundle import load_bundle
from medseg.data import check_dataset, discover_dataset, load_case_image, paint_regions, region_masks
from medseg.data.regions import Region, load_regions_file, parse_regions
from medseg.errors import DatasetError, MedsegError
from medseg.evaluate import evaluate_case
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import read_image
from medseg.losses import build_loss
from medseg.plan import Machine, fingerprint_from_report, make_plan
from medseg.train import TrainConfig, TrainRequest, train

BRATS_REGIONS = {"labels": {"background": 0, "whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4],
                            "enhancing tumour": [4]}, "regions_class_order": [2, 1, 4]}


def test_region_labels_parse_into_values_and_regions():
    labels, regions = parse_regions(BRATS_REGIONS["labels"], BRATS_REGIONS["regions_class_order"], "dataset.json")
    assert labels == {0: "background", 1: "label 1", 2: "label 2", 3: "label 3", 4: "label 4"}
    assert regions == [Region("whole tumour", (1, 2, 3, 4), 2), Region("tumour core", (1, 3, 4), 1),
                       Region("enhancing tumour", (4,), 4)]


@pytest.mark.parametrize(("order", "message"), [
    (None, "regions_class_order None must list one label value > 0 for each of the 3 regions"),
    ([2, 1], "regions_class_order [2, 1] must list one label value > 0 for each of the 3 regions"),
    ([2, 2, 4], "region 'tumour core' paints label 2, which is not one of its values [1, 3, 4]"),
])
def test_bad_region_declarations_name_the_problem(order, message):
    with pytest.raises(DatasetError) as error:
        parse_regions(BRATS_REGIONS["labels"], order, "dataset.json")
    assert message in str(error.value)
    with pytest.raises(DatasetError, match="includes the background value 0"):
        parse_regions({"background": 0, "all": [0, 1]}, [1], "dataset.json")


def test_masks_and_painting_follow_nnunet():
    labels = np.array([0, 1, 2, 3, 4, 4])
    _, regions = parse_regions(BRATS_REGIONS["labels"], BRATS_REGIONS["regions_class_order"], "x")
    masks = region_masks(labels, regions)
    assert masks.astype(int).tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    # painted in order: whole -> 2, core over it -> 1, enhancing over that -> 4; label 3 is not recoverable
    assert paint_regions(masks, regions).tolist() == [0, 1, 2, 1, 4, 4]
    assert region_masks(paint_regions(masks, regions), regions).tolist() == masks.tolist()


def test_region_dataset_json_in_the_monai_list_form_is_read_and_checked(tmp_path):
    root = make_region_dataset(tmp_path / "ds", cases=3)
    dataset = discover_dataset(root)
    assert [r.name for r in dataset.regions] == ["whole", "core", "enhancing"]
    assert [c.image_files[1].name for c in dataset.cases] == [f"tumour_{i:03d}_0001.nii.gz" for i in range(3)]
    report = check_dataset(dataset, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    assert report.summary()["regions"] == {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}


def test_a_regions_file_turns_a_label_data_set_into_regions(tmp_path):
    root = make_region_dataset(tmp_path / "ds", cases=2, declare_regions=False)
    assert discover_dataset(root).regions == []
    file = tmp_path / "regions.json"
    file.write_text(json.dumps({"labels": REGION_LABELS, "regions_class_order": [1, 2, 3]}))
    assert [r.values for r in discover_dataset(root, regions_file=file).regions] == [(1, 2, 3), (2, 3), (3,)]
    (tmp_path / "plain.json").write_text(json.dumps({"labels": {"0": "background", "1": "edema"}}))
    with pytest.raises(DatasetError, match="holds no region labels"):
        load_regions_file(tmp_path / "plain.json")


def test_region_plans_train_with_dice_bce_and_refuse_softmax_losses(tmp_path):
    report = check_dataset(discover_dataset(make_region_dataset(tmp_path / "ds", cases=3)), workers=1)
    machine = Machine("cpu", cores=2, memory_bytes=24 << 30, bf16=False)
    plan = make_plan(fingerprint_from_report(report), machine=machine)
    assert plan.loss == "dice_bce" and plan.num_outputs == 3
    assert plan.scored_classes == {1: "whole", 2: "core", 3: "enhancing"}
    assert plan.class_members == {1: (1, 2, 3), 2: (2, 3), 3: (3,)}
    with pytest.raises(MedsegError, match="cannot train regions"):
        make_plan(fingerprint_from_report(report), machine=machine, loss="focal")
    with pytest.raises(MedsegError, match="plan field 'loss' is 'dice_ce' for a plan with 3 regions"):
        type(plan).from_dict(plan.to_dict() | {"loss": "dice_ce"})


def test_region_loss_is_low_for_the_right_masks_and_high_for_the_wrong_ones():
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    target[..., 1:3, 1:3, 1:3] = 2
    target[..., 2, 2, 2] = 3
    regions = [(1, 2, 3), (2, 3), (3,)]
    loss = build_loss("dice_bce", num_classes=3, regions=regions)
    masks = torch.cat([torch.isin(target, torch.tensor(r)) for r in regions], 1).float()
    right, wrong = loss(20 * (2 * masks - 1), target), loss(-20 * (2 * masks - 1), target)
    assert float(right) < 0.01 and float(wrong) > 1.9
    logits = torch.zeros(1, 3, 4, 4, 4, requires_grad=True)
    loss([logits, logits[..., ::2, ::2, ::2]], target).backward()  # deep supervision: targets downsampled first
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(MedsegError, match="3 regions need the dice_bce loss with 3 outputs"):
        build_loss("dice_ce", num_classes=4, regions=regions)


def test_tiny_region_training_predicts_label_maps_scored_per_region(tmp_path):
    torch.set_num_threads(1)
    data = make_region_dataset(tmp_path / "data")
    request = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=tiny_plan(data, tmp_path / "plan.json"),
                           cache_root=tmp_path / "cache", workers=1, progress_bar=False, folds=3)
    bundle = load_bundle(train(request, TrainConfig(epochs=2, steps_per_epoch=3, validations=1)))
    assert [r.name for r in bundle.plan.regions] == ["whole", "core", "enhancing"]
    fold = bundle.metrics["folds"]["0"]
    assert set(fold["val_dice"]) == {"1", "2", "3"}  # one Dice a region, by its index
    summary = json.loads((tmp_path / "run" / "fold_0" / "validation" / "summary.json").read_text())
    assert set(summary["per_class"]) == {"whole", "core", "enhancing"}
    assert abs(summary["per_class"]["whole"]["dice"]["mean"] - fold["val_dice"]["1"]) < 1e-6  # one Dice

    image = load_case_image(discover_dataset(data).cases[0])  # the two channel files of tumour_000
    result = Predictor(bundle, PredictOptions(probabilities=True, uncertainty=True)).predict(image)
    labels = result.labels.array[0]
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert result.probabilities.array.shape == (3, *image.shape)  # one sigmoid map a region
    assert result.uncertainty.array.min() >= 0.0 and result.uncertainty.array.max() <= 1.0
    # the painted map's region masks are what evaluation scores
    reference = read_image(data / "labelsTr" / "tumour_000.nii.gz").array[0]
    rows = evaluate_case(labels, reference, (1.0, 1.0, 1.0), bundle.plan.scored_classes,
                         members=bundle.plan.class_members)
    assert [row["label"] for row in rows] == ["whole", "core", "enhancing"]
    whole = region_masks(labels, bundle.plan.regions[:1])[0], region_masks(reference, bundle.plan.regions[:1])[0]
    expected = 2 * np.count_nonzero(whole[0] & whole[1]) / (np.count_nonzero(whole[0]) + np.count_nonzero(whole[1]))
    assert rows[0]["dice"] == pytest.approx(expected)


def test_real_brats_reads_as_regions_with_a_regions_file(tmp_path):
    file = tmp_path / "brats_regions.json"
    file.write_text(json.dumps(BRATS_REGIONS))
    dataset = discover_dataset(shared("brats_2ch"), regions_file=file)
    assert [r.name for r in dataset.regions] == ["whole tumour", "tumour core", "enhancing tumour"]
    assert len(dataset.cases) == 6 and all(len(c.image_files) == 2 for c in dataset.cases)


def test_evaluate_scores_regions_from_a_file_or_the_reference_dataset_json(tmp_path):
    from medseg.evaluate import evaluate_folders
    from medseg.io import Image, write_image

    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1:5, 1:5, 1:5] = 1
    reference[2:4, 2:4, 2:4] = 2
    prediction = reference.copy()
    prediction[prediction == 2] = 1  # the core is missed: whole tumour perfect, core and enhancing empty
    for folder, array in (("gt", reference), ("pred", prediction)):
        write_image(Image.from_array(array[None]), tmp_path / folder / "case.nii.gz")
    file = tmp_path / "regions.json"
    file.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": [2]},
                                "regions_class_order": [1, 2]}))
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", regions_file=file).summary()
    assert {name: stats["dice"]["mean"] for name, stats in summary["per_class"].items()} == {"whole": 1.0, "core": 0.0}
    (tmp_path / "dataset.json").write_text(file.read_text())  # beside the references' folder: found there
    again = evaluate_folders(tmp_path / "pred", tmp_path / "gt").summary()
    assert again["per_class"] == summary["per_class"]


def test_region_plans_keep_the_largest_foreground_where_validation_says_it_pays():
    from medseg.postprocess import choose_region_postprocessing

    members = {1: (1, 2, 3), 2: (2, 3), 3: (3,)}  # whole, core, enhancing: nested as in BraTS
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[4:12, 4:12, 4:12] = 1
    ref[6:10, 6:10, 6:10] = 2
    ref[7:9, 7:9, 7:9] = 3
    stray = ref.copy()
    stray[18:21, 18:21, 18:21] = 3  # a blob far from the tumour: wrong in every region
    chosen = choose_region_postprocessing([(stray, ref), (ref.copy(), ref)], members)
    (decision,) = chosen.decisions
    assert chosen.keep_largest_foreground and decision["dice_after"] > decision["dice_before"]
    two_tumours = ref.copy()
    two_tumours[16:22, 16:22, 16:22] = 1  # a second real lesion: keeping only the largest would cost Dice
    chosen = choose_region_postprocessing([(two_tumours, two_tumours)], members)
    assert not chosen.keep_largest_foreground
