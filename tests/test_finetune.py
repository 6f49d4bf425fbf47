"""Fine-tuning (``medseg train --init BUNDLE [--label-map]``): starts from the bundle's weights and plan, records
the parent and the learning rate, maps labels onto output heads, and warns when the data is far from the bundle's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from builders import make_2d_dataset, run_cli, shifted_copy
from medseg.bundle import bundle_version, load_bundle, read_drift_reference
from medseg.errors import MedsegError
from medseg.io import Image, read_image, write_image
from medseg.plan import Fingerprint, Plan
from medseg.train import TrainConfig, Trainer, TrainRequest, train
from medseg.train.finetune import fine_tune_config, fingerprint_differences, parse_label_map


@pytest.fixture
def first_step_weights(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The network's weights as each fold's first training step begins (before any update)."""
    seen: list[dict[str, torch.Tensor]] = []
    original = Trainer.train_step

    def train_step(self: Trainer) -> float:
        if self.state.step == 0:
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    torch.set_num_threads(1)
    return seen


def _data_of(bundle: Path) -> Path:
    return bundle.parent.parent / "data"  # train_tiny_bundle's layout: root/data, root/run/bundle


def test_fine_tuning_starts_from_the_bundle_records_parent_and_lr_and_warns_on_far_data(
        tmp_path, bundle_3d, first_step_weights, caplog):
    # another scanner: 3 mm slices instead of 1.5 mm, intensities doubled and shifted
    site = shifted_copy(_data_of(bundle_3d), tmp_path / "site", spacing=(1.0, 1.0, 3.0), scale=2.0, offset=500.0)
    parent = load_bundle(bundle_3d)
    with caplog.at_level(logging.WARNING, logger="medseg.train"):
        bundle = train(TrainRequest(data=site, run_dir=tmp_path / "run", init=bundle_3d, cache_root=tmp_path / "cache",
                                    workers=1, progress_bar=False, folds=3),
                       TrainConfig(epochs=1, steps_per_epoch=2, validations=1))
    stored = load_file(str(parent.fold_weights(parent.folds[0])))
    assert len(first_step_weights) == 1 and set(first_step_weights[0]) == set(stored)
    for name, tensor in stored.items():
        assert torch.equal(first_step_weights[0][name], tensor), name
    plan = Plan.load(tmp_path / "run" / "plan.json")
    assert plan.init_from == parent.version == bundle_version(bundle_3d)
    assert plan.learning_rate == pytest.approx(parent.plan.learning_rate * 0.1)
    assert plan.fine_tune["lr_scale"] == 0.1 and plan.fine_tune["parent_learning_rate"] == parent.plan.learning_rate
    assert plan.fine_tune["steps"] >= 1 and plan.fine_tune["fresh_classes"] == []
    assert plan.target_spacing == parent.plan.target_spacing and plan.normalization == parent.plan.normalization
    assert plan.features == parent.plan.features and Plan.from_dict(plan.to_dict()) == plan
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("spacing of axis 0" in w and "3 mm" in w for w in warnings), warnings
    assert any("foreground intensities of channel 0" in w for w in warnings), warnings
    assert len(plan.fine_tune["fingerprint_differences"]) == 2
    lineage = json.loads((bundle / "lineage.json").read_text())
    assert lineage["parent"] == parent.version and lineage["version"] == bundle_version(bundle) != parent.version
    assert lineage["version"] in (bundle / "model_card.md").read_text()


def test_a_label_map_adding_a_class_gives_one_more_output_started_from_the_parent(
        tmp_path, bundle_3d, first_step_weights):
    data = shifted_copy(_data_of(bundle_3d), tmp_path / "more", labels={"background": 0, "small": 1, "bright": 2,
                                                                           "corner": 3})
    for path in (data / "labelsTr").glob("*.nii.gz"):  # a new structure in a corner, away from the blobs
        mask = read_image(path)
        array = mask.array.copy()
        array[0, :3, :3, :3] = 3
        write_image(Image(array, mask.spacing, mask.origin, mask.direction), path)
    assert run_cli("train", str(data), "-o", str(tmp_path / "run"), "--init", str(bundle_3d), "--label-map",
                   "1:1,2:2", "--epochs", "1", "--folds", "3", "--cache", str(tmp_path / "cache"),
                   "--workers", "1", "--no-progress") == 0
    parent = load_bundle(bundle_3d)
    stored = load_file(str(parent.fold_weights(parent.folds[0])))
    start = first_step_weights[0]
    levels = range(len(parent.plan.features) - 2)
    heads = ["output_block.conv.conv"] + [f"deep_supervision_heads.{i}.conv.conv" for i in levels]
    for head in heads:
        for part in ("weight", "bias"):
            name = f"{head}.{part}"
            assert stored[name].shape[0] == 3 and start[name].shape[0] == 4, name
            assert torch.equal(start[name][:3], stored[name]), name
        assert start[f"{head}.weight"][3].abs().sum() > 0  # a fresh (He-initialised) row, not zeros
    assert all(torch.equal(start[n], t) for n, t in stored.items() if not n.startswith(tuple(heads)))
    tuned = load_bundle(tmp_path / "run" / "bundle")
    assert tuned.plan.num_outputs == 4 and tuned.plan.labels[3] == "corner"
    assert tuned.plan.fine_tune["label_map"] == {"0": 0, "1": 1, "2": 2}
    assert tuned.plan.fine_tune["fresh_classes"] == [3]
    assert tuned.load_models()[0](torch.zeros(1, 1, 16, 16, 16)).shape[1] == 4


def test_fine_tuning_on_data_of_another_dimension_is_refused_with_a_clear_message(tmp_path, bundle_3d):
    data = make_2d_dataset(tmp_path / "xrays")
    with pytest.raises(MedsegError, match="cannot fine-tune a 3D bundle of 1 channel.* on 2D data"):
        train(TrainRequest(data=data, run_dir=tmp_path / "run", init=bundle_3d, cache_root=tmp_path / "cache",
                           workers=1, progress_bar=False), TrainConfig(epochs=1))


def test_the_bundles_own_data_is_not_far_from_it(bundle_3d):
    own = Fingerprint.from_dict(json.loads((bundle_3d.parent / "fingerprint.json").read_text()))
    assert fingerprint_differences(read_drift_reference(bundle_3d), own) == []
    assert "no drift reference" in fingerprint_differences(None, own)[0]


def test_the_default_fine_tuning_schedule_trains_the_plans_steps(bundle_3d):
    plan = load_bundle(bundle_3d).plan
    assert fine_tune_config(TrainConfig(), plan, 10).epochs is None  # not fine-tuning: the user must say
    plan.fine_tune = {"steps": 12}
    assert fine_tune_config(TrainConfig(), plan, 10).epochs == 3  # 5 steps an epoch (10 cases, batch 2)
    assert fine_tune_config(TrainConfig(epochs=7), plan, 10).epochs == 7  # what the user says wins
    assert fine_tune_config(TrainConfig(budget_s=60), plan, 10).epochs is None


def test_label_maps_are_parsed_and_bad_ones_named():
    assert parse_label_map("1:1, 2:3") == {1: 1, 2: 3} and parse_label_map(None) is None
    with pytest.raises(MedsegError, match="cannot read label map entry '2-3'"):
        parse_label_map("1:1,2-3")


def test_a_label_map_naming_a_missing_label_is_refused(tmp_path, bundle_3d):
    data = shifted_copy(_data_of(bundle_3d), tmp_path / "same")
    with pytest.raises(MedsegError, match="label map 7:1 does not fit"):
        train(TrainRequest(data=data, run_dir=tmp_path / "run", init=bundle_3d, cache_root=tmp_path / "cache",
                           workers=1, progress_bar=False, label_map={7: 1}), TrainConfig(epochs=1))
