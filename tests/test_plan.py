"""Fingerprint and plan: deterministic, serialisable, sized for the machine, sensible on real data."""

from __future__ import annotations

import json

import pytest

from medseg.data import check_dataset, discover_dataset
from medseg.errors import MedsegError
from medseg.plan import Fingerprint, Machine, Plan, fingerprint_from_report, make_plan
from medseg.plan.planner import estimate_training_bytes
from synthetic import make_2d_dataset, make_3d_dataset

CPU = Machine("cpu", cores=2, memory_bytes=24 << 30, bf16=True)


def fingerprint(root, workers=1):
    report = check_dataset(discover_dataset(root), workers=workers)
    assert report.ok
    return fingerprint_from_report(report)


def test_plan_is_deterministic_and_round_trips(tmp_path):
    fp = fingerprint(make_3d_dataset(tmp_path / "ds"))
    plan_a = make_plan(fp, machine=CPU)
    plan_b = make_plan(Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))), machine=CPU)
    assert plan_a.to_json() == plan_b.to_json()
    path = plan_a.save(tmp_path / "plan.json")
    back = Plan.load(path)
    assert back == plan_a
    assert back.labels == {0: "background", 1: "small", 2: "bright"} and back.num_classes == 3
    assert back.target_spacing == [1.5, 1.0, 1.0]  # array order (z, y, x)
    assert back.normalization[0].scheme == "zscore"
    assert back.precision == "bf16"
    for axis, size in enumerate(back.patch_size):  # patch divisible by the network's downsampling
        divisor = 1
        for stride in back.strides:
            divisor *= stride[axis]
        assert size % divisor == 0


def test_plan_2d_and_memory_fallback(tmp_path):
    fp = fingerprint(make_2d_dataset(tmp_path / "ds", shape=(64, 64)))
    plan = make_plan(fp, machine=CPU)
    assert plan.dim == 2 and plan.patch_size == [64, 64]
    # Memory for a 32x32 patch but not for 64x64: a smaller plan, not a crash.
    fits_half = estimate_training_bytes([32, 32], plan.strides, plan.features, plan.batch_size) / 0.4
    small = make_plan(fp, machine=Machine("cpu", cores=2, memory_bytes=int(fits_half * 1.05), bf16=False))
    assert small.patch_size == [32, 64] or small.patch_size == [32, 32], small.patch_size
    assert small.precision == "fp32" and "reduced to fit memory" in " ".join(small.notes)
    with pytest.raises(MedsegError, match="not enough memory"):
        make_plan(fp, machine=Machine("cpu", cores=2, memory_bytes=1000, bf16=False))


def test_unknown_plan_version_is_refused(tmp_path):
    fp = fingerprint(make_2d_dataset(tmp_path / "ds"))
    data = make_plan(fp, machine=CPU).to_dict() | {"version": 99}
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(MedsegError, match="plan version 99"):
        Plan.load(tmp_path / "plan.json")


def test_ct_channels_get_ct_normalisation(tmp_path):
    root = make_3d_dataset(tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text()) | {"channel_names": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    norm = make_plan(fingerprint(root), machine=CPU).normalization[0]
    assert norm.scheme == "ct" and norm.clip_low < norm.mean < norm.clip_high


def test_real_hippocampus_plan_matches_the_median_case(hippocampus):
    plan = make_plan(fingerprint(hippocampus, workers=None), machine=CPU)
    assert plan.patch_size == [40, 56, 40]  # covers the median case (36x50x35), divisible by 8
    assert plan.target_spacing == [1.0, 1.0, 1.0] and plan.features[0] == 8
    assert (plan.optimizer, plan.learning_rate) == ("adamw", 3e-3)  # a CPU budget is a few hundred steps
    assert plan.labels == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_gpu_plans_keep_nnunet_sgd_and_an_explicit_choice_wins(tmp_path):
    fp = fingerprint(make_3d_dataset(tmp_path / "ds"))
    gpu = Machine("cuda", cores=8, memory_bytes=40 << 30, bf16=True)
    assert (make_plan(fp, machine=gpu).optimizer, make_plan(fp, machine=gpu).learning_rate) == ("sgd", 0.01)
    assert make_plan(fp, machine=CPU, optimizer="sgd").optimizer == "sgd"
    with pytest.raises(MedsegError, match="unknown optimizer"):
        make_plan(fp, machine=CPU, optimizer="lbfgs")
