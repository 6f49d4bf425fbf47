"""`medseg demo` end to end on a tiny synthetic set: check, train, predict the test list, evaluate, report."""

from __future__ import annotations

import json

import pytest

from medseg.data.fetch import make_phantom_dataset
from medseg.demo import as_dict, result_lines, run_demo
from medseg.errors import MedsegError


def test_demo_runs_the_whole_job_and_reports_the_test_list_dice(tmp_path, monkeypatch):
    data = make_phantom_dataset(tmp_path / "phantom", cases=8, shape=(16, 20, 16))

    def read_again(*args, **kwargs):
        raise AssertionError("training checked the data set again instead of reusing the demo's check")

    monkeypatch.setattr("medseg.train.api.check_dataset", read_again)
    said: list[str] = []
    # one epoch, not a budget: the budget check would refuse a few seconds on a loaded machine
    result = run_demo(data, tmp_path / "run", budget_s=None, epochs=1, cache=tmp_path / "cache", say=said.append,
                      progress_bar=False)
    test_ids = json.loads((data / "split.json").read_text())["test"]
    assert not result.synthetic  # given with --data: a real folder as far as the demo can tell
    assert sorted(p.name for p in result.predictions.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in test_ids)
    summary = json.loads((result.evaluation / "summary.json").read_text())
    assert summary["cases"] == len(test_ids)
    assert set(result.dice) == {"anterior", "posterior"}
    assert all(0.0 <= d <= 1.0 for d in result.dice.values())
    assert result.report.is_file() and result.report.stat().st_size > 1000
    assert any((tmp_path / "cache" / "preprocessed").iterdir())  # the cache asked for, not the home folder
    assert any(line.startswith("[1/5]") for line in said) and any("8 cases, no problems" in line for line in said)
    assert any(" steps, validation Dice " in line for line in said)
    lines = result_lines(result)
    assert lines[-2] == f"report: {result.report}"
    assert json.loads(json.dumps(as_dict(result)))["mean_dice"] == pytest.approx(result.mean_dice)


def test_demo_refuses_a_data_set_that_fails_the_check(tmp_path):
    data = make_phantom_dataset(tmp_path / "phantom", cases=4, shape=(16, 20, 16))
    (data / "labelsTr" / "phantom_003.nii.gz").unlink()
    with pytest.raises(MedsegError, match="fails `medseg check` with 1 problem.*phantom_003.*has no mask"):
        run_demo(data, tmp_path / "run", budget_s=None, epochs=1, cache=tmp_path / "cache", say=lambda _: None,
                 progress_bar=False)
