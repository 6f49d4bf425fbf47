"""Data set discovery, `medseg check` (every problem, with its file) and splits, on real and made-up data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from builders import shared
from medseg.data import check_dataset, discover_dataset, make_splits, parse_labels
from medseg.data.split import Fold, Splits, load_splits, write_splits
from medseg.errors import DatasetError, MedsegError
from medseg.io import Image, write_image


def make_decathlon(root: Path, cases: int = 4, channels: int = 1, shape=(6, 7, 8)) -> Path:
    """A tiny Decathlon/nnU-Net v2 style data set with channel files <case>_0000..."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        case = f"case_{i:03d}"
        for c in range(channels):
            image = Image.from_array(rng.normal(size=(1, *shape)).astype(np.float32), spacing=(1.0, 1.0, 2.0))
            write_image(image, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        label = np.zeros((1, *shape), np.uint8)
        label[0, 2:4, 2:5, 3:6] = 1
        label[0, 4, 4, 4] = 2
        write_image(Image.from_array(label, spacing=(1.0, 1.0, 2.0)), root / "labelsTr" / f"{case}.nii.gz")
    meta = {"labels": {"background": 0, "tumour": 1, "edema": 2},
            "channel_names": {str(c): f"mod{c}" for c in range(channels)}, "numTraining": cases,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_2d(root: Path, cases: int = 3, rgb: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(cases):
        image = rng.integers(0, 255, (3 if rgb else 1, 16, 12), dtype=np.uint8)
        mask = np.zeros((1, 16, 12), np.uint8)
        mask[0, 4:9, 3:7] = 1
        write_image(Image.from_array(image), root / "images" / f"img{i}.png")
        write_image(Image.from_array(mask), root / "masks" / f"img{i}.png")
    return root


def lines(report) -> str:
    return "\n".join(p.line() for p in report.problems)


def test_multichannel_decathlon_is_discovered_and_clean(tmp_path):
    root = make_decathlon(tmp_path / "ds", cases=3, channels=2)
    dataset = discover_dataset(root)
    assert dataset.layout == "decathlon" and dataset.case_ids == ["case_000", "case_001", "case_002"]
    assert len(dataset.cases[0].image_files) == 2
    assert dataset.labels == {0: "background", 1: "tumour", 2: "edema"}
    assert dataset.channel_names == {0: "mod0", 1: "mod1"}
    report = check_dataset(dataset, workers=1)
    assert report.ok, lines(report)
    summary = report.summary()
    assert summary["channels"] == 2 and summary["dim"] == 3
    assert summary["spacing_min"] == [2.0, 1.0, 1.0]  # array order (z, y, x)
    assert summary["labels"]["1"]["cases_containing"] == 3
    assert summary["labels"]["1"]["mean_size_ml"] == pytest.approx(2 * 3 * 3 * 2.0 / 1000)


def test_check_reports_every_problem_with_file_and_fix(tmp_path):
    root = make_decathlon(tmp_path / "ds", cases=9, channels=2)
    rng = np.random.default_rng(3)
    images, labels = root / "imagesTr", root / "labelsTr"
    (labels / "case_000.nii.gz").unlink()  # missing mask
    write_image(Image.from_array(np.zeros((1, 6, 7, 8), np.uint8)), labels / "stray.nii.gz")  # mask, no image
    write_image(Image.from_array(np.zeros((1, 6, 7, 9), np.uint8)), labels / "case_001.nii.gz")  # wrong size
    bad_value = np.zeros((1, 6, 7, 8), np.uint8)
    bad_value[0, 1, 1, 1] = 7
    write_image(Image.from_array(bad_value, spacing=(1, 1, 2)), labels / "case_002.nii.gz")  # value 7
    nan = rng.normal(size=(1, 6, 7, 8)).astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    write_image(Image.from_array(nan, spacing=(1, 1, 2)), images / "case_003_0000.nii.gz")  # NaN
    write_image(Image.from_array(np.full((1, 6, 7, 8), 5, np.float32), spacing=(1, 1, 2)),
                images / "case_004_0001.nii.gz")  # constant channel
    raw = (images / "case_005_0000.nii.gz").read_bytes()
    (images / "case_005_0000.nii.gz").write_bytes(raw[:60])  # truncated
    write_image(Image.from_array(rng.normal(size=(1, 6, 7, 8)).astype(np.float32), spacing=(1, 1, 3)),
                images / "case_006_0001.nii.gz")  # channel on another grid
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | {"numTraining": 10}))
    report = check_dataset(discover_dataset(root), workers=1)
    text = lines(report)
    assert not report.ok
    assert "case_000_0000.nii.gz: has no mask in labelsTr/" in text
    assert "stray.nii.gz: is a mask without an image" in text
    assert "case_001.nii.gz: mask size 6x7x9 differs from image size 6x7x8" in text
    assert "case_002.nii.gz: mask has value(s) [7] outside the declared labels [0, 1, 2]" in text
    assert "case_003_0000.nii.gz: channel 0 has 1 NaN/Inf voxels" in text  # a 2-channel case names the channel
    assert "case_004_0001.nii.gz: channel 1 is constant" in text
    assert "case_005_0000.nii.gz: cannot read NIfTI" in text
    assert "case_006_0001.nii.gz: channel grid differs" in text
    assert "says numTraining 10 but imagesTr/ holds 9 cases" in text
    assert all(p.fix for p in report.problems)


def test_2d_layout_rgb_duplicates_and_extra_files(tmp_path):
    root = make_2d(tmp_path / "ds", cases=3, rgb=True)
    write_image(Image.from_array(np.zeros((3, 16, 12), np.uint8) + 9), root / "images" / "img0.jpg")  # duplicate
    (root / "images" / "fake.png").write_text("not a png")
    (root / "images" / "readme.txt").write_text("notes")
    dataset = discover_dataset(root)
    report = check_dataset(dataset, workers=1)
    text = lines(report)
    assert "duplicate case id 'img0'" in text
    assert "readme.txt: is not an image file" in text
    assert "fake.png: not a readable PNG image" in text
    assert "fake.png: has no mask in masks/" in text
    summary = report.summary()
    assert summary["channels"] == 3 and summary["dim"] == 2


def test_labels_override_and_parse():
    assert parse_labels("0:background, 1:right lung,2:heart") == {0: "background", 1: "right lung", 2: "heart"}
    assert parse_labels('{"0": "bg", "1": "vessel"}') == {0: "bg", 1: "vessel"}
    with pytest.raises(DatasetError, match="cannot parse label"):
        parse_labels("zero=bg")


def test_declared_labels_from_option_flag_unknown_values(tmp_path):
    root = make_2d(tmp_path / "ds")
    report = check_dataset(discover_dataset(root, labels={0: "bg", 2: "x"}), workers=1)
    assert "mask has value(s) [1] outside the declared labels [0, 2]" in lines(report)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        discover_dataset(tmp_path / "empty")


def test_splits_are_deterministic_disjoint_and_respect_test(tmp_path):
    root = make_2d(tmp_path / "ds", cases=12)
    (root / "split.json").write_text(json.dumps({"train": [f"img{i}" for i in range(10)], "test": ["img10", "img11"]}))
    dataset = discover_dataset(root)
    a = make_splits(dataset, folds=5, seed=0)
    assert a == make_splits(dataset, folds=5, seed=0)
    assert a != make_splits(dataset, folds=5, seed=1)
    assert a.test == ["img10", "img11"] and (a.seed, a.stratified) == (0, False)
    vals = [cid for s in a.folds for cid in s.val]
    assert sorted(vals) == sorted(f"img{i}" for i in range(10))  # every training case validated exactly once
    for s in a.folds:
        assert not set(s.train) & set(s.val)
        assert not (set(s.train) | set(s.val)) & {"img10", "img11"}


def test_few_cases_make_as_many_folds_as_cases_and_one_case_trains_without_validation(tmp_path):
    root = make_2d(tmp_path / "ds", cases=3)
    (root / "split.json").write_text(json.dumps({"train": ["img0", "img1"], "test": ["img2"]}))
    two = make_splits(discover_dataset(root), folds=5, seed=0)
    assert [(f.train, f.val) for f in two.folds] == [(["img1"], ["img0"]), (["img0"], ["img1"])]
    assert two.notes == ["2 training case(s) cannot make 5 folds: made 2 instead (one case validates each)"]
    assert load_splits(write_splits(two, tmp_path / "two.json")) == two  # the note travels in splits.json

    (root / "split.json").write_text(json.dumps({"train": ["img0"], "test": ["img1", "img2"]}))
    one = make_splits(discover_dataset(root), folds=5, seed=0)
    assert [(f.train, f.val) for f in one.folds] == [(["img0"], [])]  # the test list is never trained on
    assert one.notes == ["1 training case(s) cannot make 5 folds: made 1 instead (trains on it, without validation)"]
    assert one.cases("none") == (["img0"], []) and one.fold_names("0") == ["0"]

    (root / "split.json").unlink()
    single = make_splits(discover_dataset(root), folds=1, seed=0)
    assert [(f.train, f.val) for f in single.folds] == [(["img0", "img1", "img2"], [])] and single.notes == []
    with pytest.raises(DatasetError, match="--folds 0 is too few"):
        make_splits(discover_dataset(root), folds=0)
    (root / "split.json").write_text(json.dumps({"train": [], "test": ["img0", "img1", "img2"]}))
    with pytest.raises(DatasetError, match="has no training case outside split.json's test list"):
        make_splits(discover_dataset(root), folds=5)


def test_stratified_split_balances_prefixes(tmp_path):
    root = tmp_path / "ds"
    make_2d(root, cases=0)
    for name in [f"JPCLN{i:03d}" for i in range(10)] + [f"JPCNN{i:03d}" for i in range(5)]:
        write_image(Image.from_array(np.full((1, 4, 4), 3, np.uint8) + np.eye(4, dtype=np.uint8)),
                    root / "images" / f"{name}.png")
        write_image(Image.from_array(np.eye(4, dtype=np.uint8)[None]), root / "masks" / f"{name}.png")
    splits = make_splits(discover_dataset(root), folds=5, seed=0, stratify=True)
    for s in splits.folds:
        assert sum(c.startswith("JPCNN") for c in s.val) == 1
        assert sum(c.startswith("JPCLN") for c in s.val) == 2


def test_splits_json_keeps_its_format_and_old_files_load(tmp_path):
    splits = Splits([Fold(["b", "c"], ["a"]), Fold(["a"], ["b", "c"])], test=["t"], seed=3, stratified=True)
    path = write_splits(splits, tmp_path / "splits.json")
    assert json.loads(path.read_text()) == {"folds": 2, "seed": 3, "stratified": True, "test": ["t"],
                                            "splits": [{"train": ["b", "c"], "val": ["a"]},
                                                       {"train": ["a"], "val": ["b", "c"]}]}
    assert load_splits(path) == splits
    (tmp_path / "old.json").write_text(json.dumps({"folds": 2, "splits": [{"train": ["b"], "val": ["a"]},
                                                                          {"train": ["a"], "val": ["b"]}]}))
    old = load_splits(tmp_path / "old.json")  # no seed, stratified or test: the defaults
    assert old == Splits([Fold(["b"], ["a"]), Fold(["a"], ["b"])], test=[], seed=0, stratified=False)
    assert old.fold_names("all") == ["0", "1"] and old.fold_names("1") == ["1"] and old.fold_names("none") == ["none"]
    assert old.cases("1") == (["a"], ["b"]) and old.cases("none") == (["a", "b"], [])
    with pytest.raises(MedsegError, match="fold '2' does not exist"):
        old.fold_names("2")
    for bad in ({"folds": 2}, {"splits": [{"train": ["a"]}]}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match="is not a medseg splits file"):
            load_splits(tmp_path / "bad.json")


# ---- real data -------------------------------------------------------------------------------------------


def test_real_hippocampus_checks_clean(hippocampus):
    report = check_dataset(discover_dataset(hippocampus))
    assert report.ok, lines(report)
    summary = report.summary()
    assert summary["cases"] == 260 and summary["readable_cases"] == 260
    assert set(summary["labels"]) == {"0", "1", "2"}
    assert summary["labels"]["1"]["name"] == "Anterior" and summary["labels"]["2"]["cases_containing"] == 260
    assert summary["split"] == {"train": 208, "test": 52}


def test_real_hippocampus_copy_with_damaged_labels_names_both(hippocampus, tmp_path):
    root = tmp_path / "hippo"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").symlink_to(hippocampus / "dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        for f in (hippocampus / sub).iterdir():
            (root / sub / f.name).symlink_to(f)
    truncated = root / "labelsTr" / "hippocampus_001.nii.gz"
    raw = truncated.read_bytes()
    truncated.unlink()
    truncated.write_bytes(raw[: len(raw) // 3])
    resized = root / "labelsTr" / "hippocampus_003.nii.gz"
    nii = nib.load(str(hippocampus / "labelsTr" / resized.name))
    resized.unlink()
    nib.save(nib.Nifti1Image(np.asanyarray(nii.dataobj)[:-2], nii.affine), str(resized))
    report = check_dataset(discover_dataset(root))
    named = {Path(p.path).name for p in report.problems}
    assert named == {"hippocampus_001.nii.gz", "hippocampus_003.nii.gz"}, lines(report)


@pytest.mark.parametrize(("name", "cases", "channels", "split"), [
    ("jsrt_scr", 247, 1, {"train": 124, "test": 123}),
    ("drive", 40, 3, {"train": 20, "test": 20}),
    ("isbi2012_em_membrane", 30, 1, None),
])
def test_real_2d_sets_check_clean(name, cases, channels, split):
    report = check_dataset(discover_dataset(shared(name)))
    assert report.ok, lines(report)
    summary = report.summary()
    assert summary["cases"] == cases and summary["channels"] == channels and summary["dim"] == 2
    assert summary["split"] == split


def test_an_unexpected_error_on_one_case_is_that_cases_problem(tmp_path, monkeypatch):
    from medseg.data import check as check_module

    root = make_decathlon(tmp_path / "ds", cases=3)
    real = check_module.analyse_case

    def flaky(case, declared, label_values=None):
        if case.case_id == "case_001":
            raise MemoryError("cannot allocate 40 GiB")
        return real(case, declared, label_values)

    monkeypatch.setattr(check_module, "analyse_case", flaky)
    report = check_dataset(discover_dataset(root), workers=1)
    (problem,) = report.problems
    assert problem.case_id == "case_001" and "MemoryError" in problem.what and "case_001_0000" in problem.path
    assert sorted(s.case_id for s in report.stats) == ["case_000", "case_002"]


def test_check_json_is_valid_utf8_for_file_names_that_are_not(tmp_path):
    import os
    import subprocess
    import sys

    root = make_2d(tmp_path / "ds", cases=2)
    odd = os.fsdecode(b"caf\xe9")  # a Latin-1 name on a UTF-8 system: Python keeps the byte as a lone surrogate
    (root / "images" / "img0.png").rename(root / "images" / f"{odd}.png")
    done = subprocess.run([sys.executable, "-m", "medseg", "check", str(root), "--json"], capture_output=True,
                          check=False, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 1, done.stderr.decode(errors="replace")  # that image has no mask now: a problem
    report = json.loads(done.stdout.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert any("caf\\xe9.png" in problem["path"] for problem in report["problems"])


def test_mixed_channel_counts_and_a_missing_channel_file_are_named(tmp_path):
    root = make_decathlon(tmp_path / "ds", cases=3, channels=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "FLAIR", "1": "T1c"}
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    report = check_dataset(discover_dataset(root), workers=1)
    text = lines(report)
    assert "case_001_0001.nii.gz: is missing: channel 1 (T1c) of case 'case_001'" in text
    assert "case_001_0000.nii.gz: channel count 1 differs from the data set's 2" in text


def test_label_values_outside_the_declared_regions_are_named(tmp_path):
    root = make_decathlon(tmp_path / "ds", cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": [2]}
    meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    label = nib.load(root / "labelsTr" / "case_000.nii.gz")
    data = np.asarray(label.dataobj).copy()
    data[data == 1] = 3
    nib.save(nib.Nifti1Image(data, label.affine), root / "labelsTr" / "case_000.nii.gz")
    text = lines(check_dataset(discover_dataset(root), workers=1))
    assert "case_000.nii.gz: mask has value(s) [3] outside the declared labels [0, 1, 2]" in text


def test_a_uint16_ct_with_a_rescale_slope_reads_as_hounsfield_units(tmp_path):
    from medseg.io import read_image

    stored = np.random.default_rng(0).integers(0, 2000, (16, 16, 8)).astype(np.uint16)
    nii = nib.Nifti1Image(stored, np.eye(4))
    nii.header.set_slope_inter(1.0, -1024.0)
    nib.save(nii, tmp_path / "ct.nii.gz")
    image = read_image(tmp_path / "ct.nii.gz")
    assert image.array.min() == int(stored.min()) - 1024 and image.array.max() == int(stored.max()) - 1024


def test_a_declared_label_absent_from_every_mask_is_a_warning_not_a_problem(tmp_path):
    root = make_decathlon(tmp_path / "ds", cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "tumour", "2": "edema", "3": "necrosis"}  # no case holds necrosis
    (root / "dataset.json").write_text(json.dumps(meta))
    report = check_dataset(discover_dataset(root), workers=1)
    assert report.ok  # trainable: one or two cases of a site may lack a tumour type
    (warning,) = report.warnings
    assert "declared label 3 (necrosis) occurs in no mask" in warning.what
    assert report.to_dict()["warnings"][0]["what"] == warning.what
