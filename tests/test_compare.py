"""``medseg compare``: two bundles on the same cases, paired differences with a bootstrap interval, the verdict as
the exit code, and the HTML and JSON reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders import run_cli, zero_output_bundle
from medseg.bundle import bundle_version
from medseg.evaluate.compare import paired_bootstrap
from medseg.report import compare_bundles


def test_the_bootstrap_interval_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    noisy = rng.normal(0, 1, 40)
    low, high = paired_bootstrap(noisy, seed=3)
    assert (low, high) == paired_bootstrap(noisy, seed=3) and low < noisy.mean() < high and low < 0 < high
    assert paired_bootstrap(np.full(10, -0.2)) == pytest.approx((-0.2, -0.2))
    assert paired_bootstrap(noisy - 3)[1] < 0  # clearly worse: the whole interval below 0
    assert all(np.isnan(paired_bootstrap(np.array([]))))


def test_a_bundle_compared_with_itself_differs_by_nothing_and_exits_0(tmp_path, bundle_3d):
    data = bundle_3d.parent.parent / "data"
    report = tmp_path / "same.html"
    assert run_cli("compare", str(bundle_3d), str(bundle_3d), str(data), "-o", str(report)) == 0
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["b_significantly_worse"] is False and result["worse_cases"] == []
    assert len(result["cases"]) == 6 and result["version_a"] == result["version_b"] == bundle_version(bundle_3d)
    dice = [d for d in result["differences"] if d["metric"] == "dice"]
    assert [d["label"] for d in dice] == ["small", "bright"]
    for d in dice:
        assert d["difference"] == 0 and d["ci_low"] <= 0 <= d["ci_high"] and d["cases"] == 6
    page = report.read_text()
    assert "not significantly worse" in page and page.count("data:image/png") == 2  # one case, A beside B


def test_a_broken_candidate_is_significantly_worse_and_exits_1_unless_allowed(tmp_path, bundle_3d):
    data = bundle_3d.parent.parent / "data"
    broken = zero_output_bundle(bundle_3d, tmp_path / "broken")  # predicts background everywhere
    result = compare_bundles(bundle_3d, broken, data, tmp_path / "broken.html", predictions=tmp_path / "masks")
    dice = {d.label: d for d in result.differences if d.metric == "dice"}
    assert all(d.mean_b == 0 for d in dice.values())
    assert any(d.mean_a > 0 for d in dice.values()), "the tiny bundle must overlap its blobs somewhere"
    assert result.b_worse and all(dice[name].ci_high < 0 for name in result.worse_classes)
    assert result.worse_cases and result.worse_cases[0]["difference"] <= result.worse_cases[-1]["difference"] < 0
    assert result.version_b == bundle_version(broken) != result.version_a  # no lineage.json: hashed on load
    assert sorted(p.name for p in (tmp_path / "masks" / "b").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in result.cases)
    page = (tmp_path / "broken.html").read_text()
    assert "B is significantly worse on" in page and page.count("data:image/png") >= 2
    args = ["compare", str(bundle_3d), str(broken), str(data), "-o", str(tmp_path / "cli.html")]
    assert run_cli(*args) == 1
    assert run_cli(*args, "--allow-worse") == 0
    assert json.loads((tmp_path / "cli.json").read_text())["b_significantly_worse"] is True
