"""Planning from measurement (medseg.train.measure): the choice on fake timings, and the real timer and a
channels-last plan on CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from builders import make_3d_dataset, tiny_plan
from medseg.bundle import load_bundle
from medseg.plan import Plan
from medseg.train import TrainConfig, TrainRequest, measure, train
from medseg.train.measure import MIN_STEPS, TRAIN_SHARE, StepTiming, choose, measured_plan, time_training_step

# a budget in which a step of 0.1 s gets exactly MIN_STEPS steps
BUDGET = MIN_STEPS * 0.1 / TRAIN_SHARE


def timing(base: int, seconds: float, precision: str = "bf16", layout: str = "contiguous") -> StepTiming:
    return StepTiming([base, base * 2], 2, precision, layout, seconds, 5)


def test_choose_takes_the_widest_network_that_still_gets_enough_steps():
    chosen, reason = choose([timing(8, 0.05), timing(16, 0.099), timing(32, 0.3)], BUDGET)
    assert chosen.features[0] == 16 and "widest" in reason and str(MIN_STEPS) in reason


def test_choose_falls_back_to_the_fastest_when_none_gets_enough_steps():
    chosen, reason = choose([timing(8, 0.5), timing(16, 0.2), timing(32, 0.9)], BUDGET)
    assert chosen.features[0] == 16 and reason.startswith("no candidate reaches")


class FakeTimer:
    """Seconds a step by (precision, layout, first width); records what was timed."""

    def __init__(self, seconds: dict[tuple[str, str, int], float]) -> None:
        self.seconds, self.calls = seconds, []

    def __call__(self, plan: Plan, device: torch.device, precision: str, layout: str) -> StepTiming:
        self.calls.append((precision, layout, plan.features[0]))
        return StepTiming(list(plan.features), plan.batch_size, precision, layout,
                          self.seconds[(precision, layout, plan.features[0])], 5)


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    data = make_3d_dataset(tmp_path / "data", cases=2)
    return replace(Plan.load(tiny_plan(data, tmp_path / "plan.json")), features=[8, 16, 32])


def test_bf16_channels_last_and_the_widest_affordable_network_are_chosen(plan, monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "native_bf16", lambda device_type: True)
    timer = FakeTimer({("fp32", "contiguous", 8): 0.08, ("bf16", "contiguous", 8): 0.04,
                       ("bf16", "channels_last", 8): 0.03, ("bf16", "channels_last", 16): 0.09,
                       ("bf16", "channels_last", 32): 0.2})
    measured = measured_plan(plan, BUDGET, torch.device("cpu"), timer)
    # x4 is timed (x2 still affords MIN_STEPS) but too slow; nothing wider than x4 is tried
    assert timer.calls == [("fp32", "contiguous", 8), ("bf16", "contiguous", 8), ("bf16", "channels_last", 8),
                           ("bf16", "channels_last", 16), ("bf16", "channels_last", 32)]
    assert (measured.precision, measured.memory_format, measured.features) == ("bf16", "channels_last", [16, 32, 64])
    assert measured.patch_size == plan.patch_size and measured.batch_size == plan.batch_size
    recorded = measured.measurements
    assert recorded["chosen"]["seconds_per_step"] == 0.09 and len(recorded["timings"]) == 5
    assert recorded["budget_s"] == BUDGET and recorded["min_steps"] == MIN_STEPS
    assert any(note.startswith("measured on this cpu: bf16, channels_last, widths 16-64") for note in measured.notes)
    back = Plan.load(measured.save(tmp_path / "measured.json"))  # what was measured travels in plan.json
    assert back.measurements == recorded and back.memory_format == "channels_last"


def test_a_slow_machine_stops_at_the_first_width_and_keeps_fp32_without_native_bf16(plan, monkeypatch):
    monkeypatch.setattr(measure, "native_bf16", lambda device_type: False)
    timer = FakeTimer({("fp32", "contiguous", 8): 0.5, ("fp32", "channels_last", 8): 0.7})
    measured = measured_plan(plan, BUDGET, torch.device("cpu"), timer)
    assert timer.calls == [("fp32", "contiguous", 8), ("fp32", "channels_last", 8)]  # no bf16, no wider net
    assert (measured.precision, measured.memory_format, measured.features) == ("fp32", "contiguous", [8, 16, 32])
    assert measured.measurements["reason"].startswith("no candidate reaches")


def test_a_wider_network_that_would_not_fit_memory_is_not_timed(plan, monkeypatch):
    monkeypatch.setattr(measure, "native_bf16", lambda device_type: False)
    monkeypatch.setattr(measure, "physical_memory", lambda: 1)  # nothing wider fits
    timer = FakeTimer({("fp32", "contiguous", 8): 0.01, ("fp32", "channels_last", 8): 0.02})
    measured = measured_plan(plan, BUDGET, torch.device("cpu"), timer)
    assert [call[2] for call in timer.calls] == [8, 8] and measured.features == [8, 16, 32]


def test_a_plan_with_an_unknown_memory_format_is_refused(plan):
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match="memory_format"):
        Plan.from_dict(plan.to_dict() | {"memory_format": "nhwc"})


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_real_timer_times_real_steps(plan, layout):
    torch.set_num_threads(1)
    result = time_training_step(plan, torch.device("cpu"), "fp32", layout)
    assert result.seconds_per_step > 0 and result.steps_timed >= measure.MIN_TIMED_STEPS
    assert (result.memory_format, result.features) == (layout, plan.features)


def test_a_channels_last_plan_trains_and_its_bundle_predicts(tmp_path):
    data = make_3d_dataset(tmp_path / "data")
    plan_path = tiny_plan(data, tmp_path / "plan.json", memory_format="channels_last")
    run = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=plan_path, cache_root=tmp_path / "cache",
                       workers=1, progress_bar=False, folds=3)
    torch.set_num_threads(1)
    loaded = load_bundle(train(run, TrainConfig(epochs=1, steps_per_epoch=2, validations=1)))
    assert loaded.plan.memory_format == "channels_last" and loaded.metrics["folds"]["0"]["steps"] == 2
    model = loaded.load_models()[0]
    x = torch.zeros(1, loaded.plan.channels, *loaded.plan.patch_size)
    assert torch.isfinite(model(x)).all()


def test_training_with_a_budget_measures_the_plan_on_this_machine(tmp_path):
    data = make_3d_dataset(tmp_path / "data")
    run = TrainRequest(data=data, run_dir=tmp_path / "run", cache_root=tmp_path / "cache", workers=1,
                       progress_bar=False, folds=3)
    from medseg.train.api import prepare_run

    torch.set_num_threads(1)
    plan, *_ = prepare_run(run, budget_s=30.0)
    assert plan.measurements["device"] == "cpu" and plan.measurements["timings"]
    assert plan.features == plan.measurements["chosen"]["features"]
    unmeasured, *_ = prepare_run(replace(run, measure=False), budget_s=30.0)
    assert unmeasured.measurements == {}
