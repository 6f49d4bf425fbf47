"""DICOM SEG label codes: fixed in the plan when it is made (table, or ``--label-codes`` at plan/train time),
kept in the bundle, and overridden for one run by ``--label-codes`` at predict time (medseg.io.label_codes)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from builders import cpu_machine, ct_series_datasets, make_3d_dataset, run_cli
from medseg.data import check_dataset, discover_dataset
from medseg.errors import MedsegError
from medseg.io.label_codes import load_label_codes, parse_label_codes
from medseg.plan import Plan, code_labels, fingerprint_from_report, make_plan

NEOPLASM = {"category": ["49755003", "SCT", "Morphologically Abnormal Structure"],
            "type": ["108369006", "SCT", "Neoplasm"]}
HIPPOCAMPUS = {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["5366008", "SCT", "Hippocampus"]}


@pytest.fixture(scope="module")
def fingerprint(tmp_path_factory):
    report = check_dataset(discover_dataset(make_3d_dataset(tmp_path_factory.mktemp("codes") / "ds")), workers=1)
    return fingerprint_from_report(report)  # labels: background, small, bright


def test_plan_codes_labels_from_the_table_and_names_the_ones_left_as_tissue(fingerprint) -> None:
    fp = dataclasses.replace(fingerprint, labels={0: "background", 1: "liver", 2: "bright"})
    plan = make_plan(fp, machine=cpu_machine())
    assert set(plan.label_codes) == {"liver", "bright"}  # foreground labels only
    assert plan.label_codes["liver"]["type"] == ["10200004", "SCT", "Liver"]
    assert plan.label_codes["bright"]["type"][0] == "85756007"  # the fallback, Tissue
    (note,) = [n for n in plan.notes if "Tissue" in n]
    assert "bright" in note and "liver" not in note and "--label-codes" in note
    given = make_plan(fp, machine=cpu_machine(), label_codes=parse_label_codes({"BRIGHT": NEOPLASM}, "test"))
    assert given.label_codes["bright"] == NEOPLASM  # matched case-insensitively
    assert not [n for n in given.notes if "Tissue" in n]
    assert Plan.from_dict(json.loads(given.to_json())) == given


def test_codes_are_kept_when_a_plan_is_recoded_and_old_plans_load_without(fingerprint) -> None:
    plan = make_plan(fingerprint, machine=cpu_machine(), label_codes=parse_label_codes({"bright": NEOPLASM}, "t"))
    again = code_labels(plan)  # a fine-tuned or --plan plan: its own codes win over the table
    assert again.label_codes["bright"] == NEOPLASM
    assert len([n for n in again.notes if "Tissue" in n]) == 1  # "small" still uncoded: noted once, not twice
    recoded = code_labels(plan, parse_label_codes({"bright": HIPPOCAMPUS}, "t"))
    assert recoded.label_codes["bright"] == HIPPOCAMPUS  # given codes win over the plan's
    old = json.loads(plan.to_json())
    del old["label_codes"]  # a plan made before plans held codes
    assert Plan.from_dict(old).label_codes == {}
    old["label_codes"] = {"bright": {"type": ["1", "SCT"]}}
    with pytest.raises(MedsegError, match="label_codes"):
        Plan.from_dict(old)


def test_label_codes_file_errors_name_the_label_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"left kidney": {**HIPPOCAMPUS, "modifier": ["7771000", "SCT", "Left"]}}))
    category, kind, modifier = load_label_codes(path)["left kidney"]
    assert (category.value, kind.value, modifier.meaning) == ("91723000", "5366008", "Left")
    for bad, message in (([1, 2], "JSON object of label names"), ({"x": "liver"}, "label 'x': give an object"),
                         ({"x": {**NEOPLASM, "colour": "red"}}, "label 'x': give an object"),
                         ({"x": {"type": NEOPLASM["type"]}}, r"label 'x': category must be \[code")):
        path.write_text(json.dumps(bad))
        with pytest.raises(MedsegError, match=message) as caught:
            load_label_codes(path)
        assert caught.value.path == str(path) and "10200004" in caught.value.fix


def test_plan_command_keeps_label_codes(tmp_path: Path) -> None:
    data = make_3d_dataset(tmp_path / "ds")
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"small": HIPPOCAMPUS}))
    assert run_cli("plan", str(data), "-o", str(tmp_path / "plan.json"), "--label-codes", str(codes)) == 0
    assert Plan.load(tmp_path / "plan.json").label_codes["small"] == HIPPOCAMPUS


def test_train_keeps_label_codes_in_the_run_plan(tmp_path: Path) -> None:
    from medseg.train import TrainRequest
    from medseg.train.api import prepare_run

    data = make_3d_dataset(tmp_path / "ds")
    request = TrainRequest(data=data, run_dir=tmp_path / "run", cache_root=tmp_path / "cache", workers=1,
                           progress_bar=False, label_codes=parse_label_codes({"bright": NEOPLASM}, "t"))
    plan, *_ = prepare_run(request)
    assert plan.label_codes["bright"] == NEOPLASM
    assert Plan.load(tmp_path / "run" / "plan.json").label_codes == plan.label_codes


def test_seg_uses_the_bundle_codes_and_a_runtime_file_overrides_them(tmp_path: Path, bundle_3d: Path) -> None:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import Predictor
    from medseg.pacs import segment_series

    bundle = shutil.copytree(bundle_3d, tmp_path / "bundle")
    plan = json.loads((bundle / "plan.json").read_text())
    assert plan["label_codes"]["bright"]["type"][0] == "85756007"  # the tiny bundle's names are not in the table
    plan["label_codes"]["bright"] = NEOPLASM
    (bundle / "plan.json").write_text(json.dumps(plan))
    predictor = Predictor(load_bundle(bundle))

    def segment_types(label_codes=None) -> dict[str, str]:
        seg = segment_series(ct_series_datasets(n=4), predictor, label_codes)
        return {str(s.SegmentLabel): s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}

    assert segment_types()["bright"] == "108369006"  # kept in the bundle, no file needed
    assert segment_types(parse_label_codes({"Bright": HIPPOCAMPUS}, "t"))["bright"] == "5366008"  # this run's file


def test_model_card_shows_each_label_code(bundle_3d: Path) -> None:
    cards = list(bundle_3d.glob("*.md"))
    assert cards, "the bundle has a model card"
    text = cards[0].read_text()
    assert "| 2 | bright | Tissue (SCT 85756007) |" in text
    assert "| 0 | background | - |" in text
