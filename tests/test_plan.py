"""Fingerprint and plan: deterministic, serialisable, sized for the machine, sensible on real data."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest
from typer.testing import CliRunner

from builders import make_2d_dataset, make_3d_dataset, shared
from medseg import runtime
from medseg.augment import AugmentConfig as AugmentConfigFromAugment
from medseg.cli import app
from medseg.data import check_dataset, discover_dataset
from medseg.data.check import boundary_counts
from medseg.errors import MedsegError
from medseg.losses import LOSS_NAMES
from medseg.models import MODEL_NAMES
from medseg.plan import (
    AugmentConfig,
    Fingerprint,
    LossName,
    Machine,
    ModelName,
    OptimizerName,
    Plan,
    Precision,
    fingerprint_from_report,
    make_plan,
)
from medseg.plan.fingerprint import ChannelIntensity
from medseg.plan.planner import estimate_training_bytes
from medseg.runtime import runtime_precision

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
    # halved along the largest axis while it does not fit: 64x64 -> 32x64 (still too big) -> 32x32
    assert small.patch_size == [32, 32] and small.batch_size == 2
    assert small.precision == "fp32" and small.notes.count("patch/batch reduced to fit memory") == 2
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
    assert plan.mirror_axes == (0, 2)  # anterior and posterior lie on opposite sides of axis 1


def test_gpu_plans_keep_nnunet_sgd_and_an_explicit_choice_wins(tmp_path):
    fp = fingerprint(make_3d_dataset(tmp_path / "ds"))
    gpu = Machine("cuda", cores=8, memory_bytes=40 << 30, bf16=True)
    assert (make_plan(fp, machine=gpu).optimizer, make_plan(fp, machine=gpu).learning_rate) == ("sgd", 0.01)
    assert make_plan(fp, machine=CPU, optimizer="sgd").optimizer == "sgd"
    with pytest.raises(MedsegError, match="plan field 'optimizer' has unknown value 'lbfgs'") as info:
        make_plan(fp, machine=CPU, optimizer="lbfgs")
    assert info.value.fix == "use one of: sgd, adamw"


def test_boundary_counts_measure_depth_of_squares_and_strips():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:12, 2:12] = 1  # a 10x10 square: its 36 rim pixels touch the background
    labels[15:17, 2:12] = 2  # a strip 2 wide: every one of its 20 pixels is on the boundary
    counts = boundary_counts(labels)
    assert counts[1] == 36 and counts[2] == 20
    assert counts[0] == 40 + 24  # the ring around the square (40) and around the strip (2 * 10 + 2 * 2)
    volume = np.zeros((6, 6, 6), np.uint8)
    volume[1:5, 1:5, 1:5] = 1  # a 4^3 cube: 56 of its 64 voxels are on its surface
    assert boundary_counts(volume)[1] == 64 - 8


def _xray_fingerprint(depth: dict[int, float], shape=(512, 512), spacing=(1.0, 1.0)) -> Fingerprint:
    return Fingerprint(
        dataset_name="xr", dim=2, channels=1, channel_names={}, labels={0: "background", 1: "organ"},
        num_cases=100, spacings=[list(spacing)] * 100, shapes=[list(shape)] * 100,
        intensities=[ChannelIntensity(100, 50, 0, 255, 0, 255)], class_voxels_median={1: 20000.0},
        class_depth_mm_median=depth)


def test_cpu_plans_coarsen_thick_structures_but_never_thin_ones():
    thick = make_plan(_xray_fingerprint({0: 80.0, 1: 40.0}), machine=CPU)
    assert thick.target_spacing == [4.0, 4.0] and thick.patch_size == [128, 128]  # the whole image in one patch
    assert thick.notes[0] == ("trained 4.00x coarser than the median spacing; the thinnest label stays at least 4 "
                              "voxels deep, and a patch covers the whole median image")
    assert len(thick.notes) == 2 and "coded as Tissue" in thick.notes[1]  # "organ": no SNOMED code in the table
    # capped at 2x by a thinner label, a 1024-pixel image is still 512 pixels wide: the note says how much a patch
    # sees, not that it sees everything (the plan of a big CT said so while its patch saw a tenth)
    capped = make_plan(_xray_fingerprint({0: 80.0, 1: 8.0}, shape=(1024, 1024)), machine=CPU)
    assert capped.patch_size == [256, 256]
    assert capped.notes[0] == ("trained 2.00x coarser than the median spacing; the thinnest label stays at least 4 "
                               "voxels deep; a patch covers 50%, 50% of the median image along each axis (array order)")
    # capped by the thinnest label: 8 mm deep stays 4 voxels deep at 2 mm
    assert make_plan(_xray_fingerprint({0: 80.0, 1: 8.0}), machine=CPU).target_spacing == [2.0, 2.0]
    # vessels two pixels deep keep the native grid; so does a GPU plan, and a fingerprint without depths
    assert make_plan(_xray_fingerprint({0: 80.0, 1: 1.9}), machine=CPU).target_spacing == [1.0, 1.0]
    gpu = Machine("cuda", cores=8, memory_bytes=40 << 30, bf16=True)
    assert make_plan(_xray_fingerprint({0: 80.0, 1: 40.0}), machine=gpu).target_spacing == [1.0, 1.0]
    assert make_plan(_xray_fingerprint({}), machine=CPU).target_spacing == [1.0, 1.0]
    # a small image already fits: unchanged
    small = make_plan(_xray_fingerprint({0: 80.0, 1: 40.0}, shape=(96, 96)), machine=CPU)
    assert small.target_spacing == [1.0, 1.0]
    # anisotropic 3D: only the fine axes are raised, the coarse one stays
    fp3 = dataclasses.replace(_xray_fingerprint({0: 80.0, 1: 40.0}), dim=3, spacings=[[5.0, 0.8, 0.8]] * 100,
                              shapes=[[30, 512, 512]] * 100)
    spacing = make_plan(fp3, machine=CPU).target_spacing
    assert spacing[0] == 5.0 and 0.8 < spacing[1] == spacing[2] <= 5.0


def test_real_drive_vessels_keep_native_resolution():
    """DRIVE's vessels are one or two pixels deep: coarsening would erase them, so the plan must not."""
    dataset = discover_dataset(shared("drive"))
    dataset = dataclasses.replace(dataset, cases=dataset.cases[:6])
    fp = fingerprint_from_report(check_dataset(dataset, workers=1))
    assert fp.class_depth_mm_median[1] < 4.0 < fp.class_depth_mm_median[0]
    assert make_plan(fp, machine=CPU).target_spacing == [1.0, 1.0]


def test_labels_told_apart_by_side_are_not_mirrored_across_it(tmp_path):
    # a chest X-ray: right lung on the image's left, left lung on its right, heart in the middle
    xray = dataclasses.replace(_xray_fingerprint({0: 80.0, 1: 40.0}), labels={0: "bg", 1: "r", 2: "l", 3: "heart"},
                               class_centroid_median={0: [0.5, 0.5], 1: [0.45, 0.28], 2: [0.45, 0.72],
                                                      3: [0.6, 0.55]})
    plan = make_plan(xray, machine=CPU)
    assert plan.mirror_axes == (0,) and plan.augment.mirror_axes == (0,)
    assert plan.to_dict()["augment"]["mirror_axes"] == [0]  # plan.json keeps the plain dict
    assert "not mirrored along axes [1]" in " ".join(plan.notes)
    assert Plan.from_dict(json.loads(plan.to_json())).mirror_axes == (0,)
    # blobs anywhere: every axis mirrored, as nnU-Net does
    assert make_plan(fingerprint(make_2d_dataset(tmp_path / "ds")), machine=CPU).mirror_axes == (0, 1)


# ---- the typed plan ---------------------------------------------------------------------------------------


def test_plan_choices_are_checked_when_made_and_loaded(tmp_path):
    plan = make_plan(_xray_fingerprint({}), machine=CPU)
    cases = [("model", "unet3d", get_args(ModelName)), ("loss", "bce", get_args(LossName)),
             ("optimizer", "lbfgs", get_args(OptimizerName)), ("precision", "fp8", get_args(Precision))]
    for name, bad, allowed in cases:
        with pytest.raises(MedsegError) as made:
            dataclasses.replace(plan, **{name: bad})
        assert made.value.what == f"plan field {name!r} has unknown value {bad!r}"
        assert made.value.fix == f"use one of: {', '.join(allowed)}"
        (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict() | {name: bad}))
        with pytest.raises(MedsegError) as loaded:
            Plan.load(tmp_path / "plan.json")
        assert loaded.value.path == str(tmp_path / "plan.json") and loaded.value.what == made.value.what
    with pytest.raises(MedsegError, match="plan field 'model' has unknown value 'vit'"):
        make_plan(_xray_fingerprint({}), machine=CPU, model="vit")


def test_plan_augment_is_a_config_and_plan_json_keeps_its_dict(tmp_path):
    plan = make_plan(_xray_fingerprint({}), machine=CPU)
    assert isinstance(plan.augment, AugmentConfig) and AugmentConfigFromAugment is AugmentConfig
    data = json.loads(plan.to_json())
    assert data["augment"] == plan.augment.to_dict() == json.loads(json.dumps(plan.augment.to_dict()))
    assert set(data["augment"]) == {f.name for f in dataclasses.fields(AugmentConfig)}
    assert Plan.from_dict(data) == plan
    # an old plan.json: augment {} means every default, all axes mirrored
    old = Plan.from_dict(data | {"augment": {}})
    assert old.augment == AugmentConfig() and old.mirror_axes == (0, 1)
    with pytest.raises(MedsegError, match="unknown augmentation settings"):
        Plan.from_dict(data | {"augment": {"p_rotat": 0.2}}, tmp_path / "plan.json")


def test_registries_and_cli_choices_match_the_plan_literals():
    """The registries keep their own lookup (build_model, build_loss); their names are the plan's choices."""
    assert set(MODEL_NAMES) == set(get_args(ModelName)) and len(MODEL_NAMES) == len(get_args(ModelName))
    assert set(LOSS_NAMES) == set(get_args(LossName)) and len(LOSS_NAMES) == len(get_args(LossName))
    runner = CliRunner()
    for command, option, literal in (("train", "--model", ModelName), ("train", "--loss", LossName),
                                     ("train", "--optimizer", OptimizerName), ("plan", "--model", ModelName)):
        extra = ["-o", "run", "--epochs", "1"] if command == "train" else []
        result = runner.invoke(app, [command, "missing_data", *extra, option, "bogus"])
        text = " ".join(result.output.replace("│", " ").split())  # the error box, unwrapped
        assert result.exit_code == 2 and option in text, text  # refused by the option parser, before any work
        assert f"one of {', '.join(repr(v) for v in get_args(literal))}." in text, text


@pytest.mark.parametrize("native", [True, False])
def test_runtime_precision_keeps_bf16_only_on_native_hardware(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime_precision("bf16") == ("bf16" if native else "fp32")
    assert runtime_precision("fp32") == "fp32"


@pytest.mark.parametrize(("planned", "device", "native", "runs"), [
    ("bf16", "cuda", True, "bf16"), ("bf16", "cuda", False, "fp16"),  # pre-Ampere GPU: fp16 tensor cores
    ("fp16", "cuda", True, "fp16"), ("fp16", "cuda", False, "fp16"),
    ("fp16", "cpu", True, "bf16"), ("fp16", "cpu", False, "fp32"),  # a CPU never runs fp16
    ("fp32", "cuda", True, "fp32"),
])
def test_runtime_precision_on_each_device(monkeypatch, planned, device, native, runs):
    monkeypatch.setattr(runtime, "native_bf16", lambda kind: native)
    assert runtime_precision(planned, device) == runs


def test_a_gpu_without_bf16_is_planned_in_fp16(tmp_path):
    fp = fingerprint(make_3d_dataset(tmp_path / "ds"))
    old_gpu = Machine("cuda", cores=8, memory_bytes=16 << 30, bf16=False)
    assert make_plan(fp, machine=old_gpu).precision == "fp16"
    assert make_plan(fp, machine=Machine("cpu", cores=2, memory_bytes=8 << 30, bf16=False)).precision == "fp32"


def test_planning_imports_no_torch():
    """`medseg plan` needs torch only for Machine.detect's GPU question, and the CLI starts without the planner."""
    code = """if True:
        import sys
        import medseg.cli
        assert not {"numpy", "torch", "medseg.plan.planner"} & set(sys.modules), sorted(sys.modules)
        from medseg.plan import ChannelIntensity, Fingerprint, Machine, make_plan
        fp = Fingerprint(dataset_name="xr", dim=2, channels=1, channel_names={}, labels={0: "bg", 1: "organ"},
                         num_cases=10, spacings=[[1.0, 1.0]] * 10, shapes=[[64, 64]] * 10,
                         intensities=[ChannelIntensity(100, 50, 0, 255, 0, 255)], class_voxels_median={1: 200.0})
        make_plan(fp, machine=Machine("cpu", cores=2, memory_bytes=8 << 30, bf16=False)).to_json()
        print(sorted({"torch", "medseg.augment.batch"} & set(sys.modules)))
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_zero_background_mri_is_normalised_inside_the_nonzero_voxels(tmp_path):
    """nnU-Net's use_mask_for_norm: a skull-stripped scan's zeros are background, not tissue."""
    from medseg.io import Image, write_image
    from medseg.preprocess import normalize

    root = make_3d_dataset(tmp_path / "ds", cases=3, shape=(16, 24, 24))
    assert not make_plan(fingerprint(root), machine=CPU).normalization[0].nonzero_mask  # signal everywhere
    for path in sorted((root / "imagesTr").iterdir()):  # keep a 10x12x12 "brain" and zero the rest
        image = Image.from_array(np.zeros((1, 16, 24, 24), np.float32), spacing=(1.0, 1.0, 1.5))
        image.array[0, 3:13, 6:18, 6:18] = 300 + np.random.default_rng(0).normal(0, 50, (10, 12, 12))
        write_image(image, path)
    norm = make_plan(fingerprint(root), machine=CPU).normalization[0]
    assert norm.scheme == "zscore" and norm.nonzero_mask

    data = np.zeros((1, 16, 24, 24), np.float32)
    data[0, 3:13, 6:18, 6:18] = np.random.default_rng(1).normal(300, 50, (10, 12, 12))
    out = normalize(data, [norm])[0]
    inside = data[0] != 0
    assert abs(out[inside].mean()) < 1e-4 and abs(out[inside].std() - 1) < 1e-4
    assert np.all(out[~inside] == 0)
    unmasked = normalize(data, [dataclasses.replace(norm, nonzero_mask=False)])[0]
    assert unmasked[~inside].mean() < -0.4  # over the whole box the background would be tissue far below mean


def test_real_brats_plan_normalises_inside_the_brain():
    root = shared("brats_2ch")
    plan = make_plan(fingerprint(root, workers=None), machine=CPU)
    assert [(n.scheme, n.nonzero_mask) for n in plan.normalization] == [("zscore", True), ("zscore", True)]
