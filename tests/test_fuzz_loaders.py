"""Fuzzed plan and bundle files: a damaged or hand-edited plan.json, metrics.json or weights file gives a clear
MedsegError naming the file, or loads as a valid plan; never a traceback from deep inside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.plan import Plan

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def plan_dict(bundle_3d) -> dict:
    return json.loads((Path(bundle_3d) / "plan.json").read_text())


@FUZZ
@given(data=st.data())
def test_a_plan_with_any_field_changed_loads_or_is_refused_clearly(plan_dict, data):
    changed = dict(plan_dict)
    for key in data.draw(st.lists(st.sampled_from(sorted(plan_dict)), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            changed[key] = data.draw(JSON)
        else:
            changed.pop(key)
    try:
        plan = Plan.from_dict(changed, "plan.json")
    except MedsegError as error:
        assert error.message
        return
    assert Plan.from_dict(plan.to_dict()) == plan  # what loads is a plan that round-trips


@FUZZ
@given(value=JSON)
def test_any_json_value_as_a_plan_is_refused_clearly(value):
    with pytest.raises(MedsegError):
        Plan.from_dict(value, "plan.json")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["plan.json", "metrics.json", "fold_0.safetensors"]),
       cut=st.floats(0, 1), junk=st.binary(max_size=64))
def test_a_damaged_bundle_file_is_named_in_a_clear_error(bundle_3d, tmp_path_factory, name, cut, junk):
    from medseg.infer.predict import Predictor

    folder = tmp_path_factory.mktemp("bundle") / "bundle"
    shutil.copytree(bundle_3d, folder)
    path = folder / name
    raw = path.read_bytes()
    at = int(len(raw) * cut)
    path.write_bytes(raw[:at] + junk + raw[at + len(junk):])
    try:
        Predictor(load_bundle(folder))
    except MedsegError as error:
        assert str(folder) in error.message
