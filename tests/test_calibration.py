"""Temperature scaling: the ECE figure, the fit, the predictor's calibrated maps, and what training records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.evaluate.calibration import expected_calibration_error, top_label
from medseg.infer.calibration import Calibration, calibrate_probabilities_, read_calibration
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import read_image
from medseg.train.calibrate import CalibrationSample, VoxelSample, fit_calibration, sample_case


class _Plan:
    """The two plan fields the fit reads, for a softmax plan of ``k`` classes."""

    def __init__(self, k: int) -> None:
        self.num_outputs = self.num_classes = k
        self.regions: list = []


def overconfident_sample(n: int, k: int, true_temperature: float, seed: int) -> VoxelSample:
    """Logits whose labels are drawn from softmax(logits / true_temperature): T > 1 makes the raw logits
    overconfident by exactly that factor."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, n, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / true_temperature, 0).T, 1, generator=generator).squeeze(1)
    return VoxelSample(logits, labels)


def test_ece_agrees_with_monai_on_top_label_decisions() -> None:
    from monai.metrics import CalibrationErrorMetric

    rng = np.random.default_rng(0)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(0, 3, (3, 5000))), 0)
    target = torch.from_numpy(rng.integers(0, 3, 5000))
    confidence, correct = top_label(probabilities, target)
    ours = expected_calibration_error(confidence, correct, bins=15)
    metric = CalibrationErrorMetric(num_bins=15)
    monai = float(metric(confidence.view(1, 1, -1).float(), correct.view(1, 1, -1).float()).mean())
    assert ours == pytest.approx(monai, abs=1e-5)
    assert 0.0 < ours < 1.0
    assert np.isnan(expected_calibration_error(torch.empty(0), torch.empty(0, dtype=torch.bool)))


def test_the_fit_recovers_a_known_temperature_and_lowers_the_ece() -> None:
    fit, evaluation = overconfident_sample(60_000, 3, 2.5, 0), overconfident_sample(60_000, 3, 2.5, 1)
    calibration = fit_calibration(CalibrationSample(fit, evaluation), _Plan(3), ["0"])
    assert calibration.method == "temperature_per_predicted_class"
    assert calibration.temperatures == pytest.approx([2.5, 2.5, 2.5], rel=0.1)
    assert calibration.ece_after < calibration.ece_before / 3
    assert calibration.nll_after < calibration.nll_before
    assert calibration.fit_voxels == calibration.eval_voxels == 60_000


def test_calibrated_probabilities_keep_every_label_and_sum_to_one() -> None:
    logits = torch.randn(3, 7, 9, 11) * 5
    probabilities = torch.softmax(logits, 0)
    labels = probabilities.argmax(0)
    calibration = Calibration("temperature_per_predicted_class", [1.0, 3.0, 0.5])
    calibrated = calibrate_probabilities_(probabilities.clone(), calibration)
    assert torch.equal(calibrated.argmax(0), labels)
    assert torch.allclose(calibrated.sum(0), torch.ones(7, 9, 11), atol=1e-5)
    expected = torch.softmax(logits / torch.tensor([1.0, 3.0, 0.5])[labels], 0)  # one temperature a voxel
    assert torch.allclose(calibrated, expected, atol=1e-4)


def test_region_calibration_keeps_each_region_decision() -> None:
    # within +-12: float32 keeps such sigmoid probabilities below 1 (the module's docstring says what happens beyond)
    logits = (torch.randn(2, 6, 6, 6) * 6).clamp(-12, 12)
    probabilities = torch.sigmoid(logits)
    calibrated = calibrate_probabilities_(probabilities.clone(), Calibration("temperature_per_region", [2.0, 0.5]))
    assert torch.equal(calibrated > 0.5, probabilities > 0.5)
    assert torch.allclose(calibrated, torch.sigmoid(logits / torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)), atol=1e-4)


def test_a_case_sample_holds_each_predicted_class() -> None:
    logits = torch.randn(3, 20, 20, 20)
    logits[2, :2] += 10  # a small class: 800 of 8000 voxels
    predicted = logits.argmax(0)
    sample = sample_case(logits, predicted.clone(), predicted, torch.Generator().manual_seed(0))
    counts = torch.bincount(sample.fit.logits.argmax(0), minlength=3)
    assert (counts > 0).all() and int(counts.max()) <= 2000
    assert torch.equal(sample.fit.seg, sample.fit.logits.argmax(0))  # the voxels travel with their labels


def test_training_records_the_calibration_and_the_predictor_applies_it(bundle_3d: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_3d)
    recorded = bundle.metrics["inference"]["calibration"]
    assert len(recorded["temperatures"]) == bundle.plan.num_outputs
    assert sorted(recorded["folds"]) == sorted(bundle.metrics["folds"])
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(recorded)
    for fold in bundle.metrics["folds"].values():  # each fold's own fit too
        assert len(fold["calibration"]["temperatures"]) == bundle.plan.num_outputs
    card = (bundle_3d / "model_card.md").read_text()
    assert "expected calibration error" in card

    image = read_image(sorted((bundle_3d.parent.parent / "data" / "imagesTr").iterdir())[0])
    options = {"probabilities": True, "uncertainty": True, "tta": False}
    calibrated = Predictor(bundle, PredictOptions(**options)).predict(image)
    raw = Predictor(bundle, PredictOptions(**options, calibrate=False)).predict(image)
    assert np.array_equal(calibrated.labels.array, raw.labels.array)
    expected = calibrate_probabilities_(torch.from_numpy(raw.probabilities.array.copy()),
                                        read_calibration(bundle)).numpy()
    assert np.allclose(calibrated.probabilities.array, expected, atol=1e-4)


def test_a_damaged_calibration_is_refused_naming_the_file(bundle_3d: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(bundle_3d, tmp_path / "bundle")
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["inference"]["calibration"]["temperatures"] = [1.0]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(MedsegError, match="temperature") as error:
        read_calibration(load_bundle(copy))
    assert "metrics.json" in str(error.value)
    metrics["inference"]["calibration"]["temperatures"] = [1.0, -2.0]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(MedsegError, match="not all positive"):
        read_calibration(load_bundle(copy))
