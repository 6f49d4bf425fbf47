"""Prediction from tiny real bundles: geometry kept, formats, side outputs, bad input, bounded restoration."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builders import blob_case, make_2d_dataset, make_3d_dataset, run_cli
from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.infer import restore
from medseg.infer.cohort import collect_inputs, predict_paths
from medseg.infer.predict import PredictOptions, Predictor, case_uncertainty_score
from medseg.io import Image, read_image, write_image


@pytest.mark.parametrize("shape", [(7, 9, 11), (40, 6, 5), (13, 12, 9)])  # the last: the same grid
def test_slab_restoration_equals_trilinear_interpolation(monkeypatch, shape):
    monkeypatch.setattr(restore, "SLAB_VOXELS", 20)  # many slabs of a few slices each
    maps = torch.rand(3, *shape)
    crop, original = [[2, 15], [1, 13], [0, 9]], [17, 14, 9]
    expected = torch.zeros(3, *original)
    expected[0] = 1
    size = [b - a for a, b in crop]
    expected[:, 2:15, 1:13, 0:9] = F.interpolate(maps[None], size=size, mode="trilinear", align_corners=False)[0]
    got = restore.restore_maps(maps, crop, original, [1.0, 0.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    labels = restore.restore_labels(maps, crop, original)
    np.testing.assert_array_equal(labels, expected.argmax(0).numpy())


def test_nifti_prediction_keeps_the_affine_bit_for_bit(tmp_path, bundle_3d):
    rng = np.random.default_rng(3)
    image, _ = blob_case(rng, (16, 16, 16))
    angle = 0.3
    affine = np.array([[np.cos(angle) * 1.0, -np.sin(angle) * 1.5, 0, -12.5],
                       [np.sin(angle) * 1.0, np.cos(angle) * 1.5, 0, 40.25],
                       [0, 0, -1.5, 7.0], [0, 0, 0, 1]])
    source = tmp_path / "in" / "scan.nii.gz"
    source.parent.mkdir()
    nib.save(nib.Nifti1Image(np.transpose(image * 100 + 300), affine), source)  # nibabel is x, y, z
    code = run_cli("predict", str(bundle_3d), str(source), "-o", str(tmp_path / "out"), "--no-progress",
                   "--probabilities", "--uncertainty")
    assert code == 0
    written = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert np.array_equal(written.affine, nib.load(source).affine)
    assert written.shape == (16, 16, 16) and written.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    record = manifest["cases"][0]
    assert record["case"] == "scan" and record["output"].endswith("scan.nii.gz") and manifest["failed"] == []
    assert set(record["volumes"]) == {"small", "bright"} and record["seconds"] > 0
    assert set(record["components"]) == {"small", "bright"} and record["size_unit"] == "ml"
    for found in record["components"].values():  # centroids in LPS mm on the oblique grid, checked with nibabel's
        for component in found["components"]:
            index = [*reversed(component["centroid_voxel"]), 1.0]  # x, y, z, 1
            lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine @ index  # the affine is RAS
            assert component["centroid_mm"] == pytest.approx(lps[:3].tolist(), abs=0.02)
    probs = read_image(record["probabilities"])
    assert probs.channels == 3 and probs.same_geometry(read_image(source))
    np.testing.assert_allclose(probs.array.astype(np.float32).sum(0), 1.0, atol=1e-2)
    uncertainty = read_image(record["uncertainty"]).array
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1.0 + 1e-3
    assert record["uncertainty_score"] == pytest.approx(case_uncertainty_score(uncertainty[0], read_image(
        record["output"]).array[0]), abs=1e-6) and 0 < record["uncertainty_score"] <= 1


def test_the_case_score_counts_the_boundary_and_doubtful_voxels_not_confident_background():
    labels = np.zeros((20, 20), np.uint8)
    labels[8:12, 8:12] = 1
    uncertainty = np.zeros((20, 20), np.float32)
    uncertainty[8:12, 8:12] = 0.4  # the object: 16 voxels; its one-voxel rim (16 more, no corners) is sure
    assert case_uncertainty_score(uncertainty, labels) == pytest.approx(0.2, abs=1e-5)
    doubtful = uncertainty.copy()
    doubtful[0:2, 0:2] = 0.9  # a doubtful spot far from the object raises the score
    assert case_uncertainty_score(doubtful, labels) > case_uncertainty_score(uncertainty, labels)
    assert case_uncertainty_score(np.zeros((5, 5)), np.zeros((5, 5), np.uint8)) == 0.0


def test_fold_ensemble_averages_folds_and_tta_keeps_the_grid(tmp_path, bundle_3d):
    import shutil

    twin = tmp_path / "bundle"
    shutil.copytree(bundle_3d, twin)
    shutil.copyfile(twin / "fold_0.safetensors", twin / "fold_1.safetensors")  # two identical folds
    rng = np.random.default_rng(4)
    image, _ = blob_case(rng, (12, 20, 16))
    scan = Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5))
    single = Predictor(load_bundle(bundle_3d), PredictOptions(tta=False, probabilities=True)).predict(scan)
    ensemble = Predictor(load_bundle(twin), PredictOptions(tta=False, probabilities=True)).predict(scan)
    assert load_bundle(twin).folds == ["0", "1"]
    np.testing.assert_allclose(ensemble.probabilities.array, single.probabilities.array, atol=1e-5)
    mirrored = Predictor(load_bundle(bundle_3d), PredictOptions(tta=True)).predict(scan)
    assert single.labels.shape == mirrored.labels.shape == (12, 20, 16)
    assert mirrored.labels.same_geometry(scan)


def test_2d_png_and_jpeg_inputs_give_png_masks_of_the_input_size(tmp_path, bundle_2d):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    image, _ = blob_case(rng, (40, 28), classes=1)
    grey = Image.from_array(np.clip(image * 60 + 60, 0, 255).astype(np.uint8)[None])
    write_image(grey, folder / "a.png")
    from PIL import Image as PILImage

    PILImage.fromarray(grey.array[0]).save(folder / "b.jpg", quality=90)
    manifest = predict_paths(load_bundle(bundle_2d), [folder], tmp_path / "out")
    outputs = sorted(Path(c["output"]).name for c in manifest["cases"])
    assert outputs == ["a.png", "b.png"]
    for name in outputs:
        mask = read_image(tmp_path / "out" / name)
        assert mask.shape == (40, 28) and mask.channels == 1


def test_wrong_channels_named_and_bad_files_listed_while_others_are_predicted(tmp_path, bundle_3d):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(6)
    image, _ = blob_case(rng, (16, 16, 16))
    write_image(Image.from_array(image[None], spacing=(1, 1, 1.5)), folder / "good.nii.gz")
    write_image(Image.from_array(np.stack([image, image]), spacing=(1, 1, 1.5)), folder / "two.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    code = run_cli("predict", str(bundle_3d), str(folder), "-o", str(tmp_path / "out"), "--no-progress")
    assert code == 1
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["case"] for c in manifest["cases"]] == ["good"]
    failed = {f["case"]: f["error"] for f in manifest["failed"]}
    assert set(failed) == {"two", "broken"}
    assert "expects 1" in failed["two"]
    assert not [p for p in (tmp_path / "out").glob(".*") if p.is_file()]  # no half-written temporaries left


def test_2d_image_given_to_a_3d_bundle_is_refused_with_what_it_expects(bundle_3d):
    predictor = Predictor(load_bundle(bundle_3d))
    with pytest.raises(MedsegError, match="segments 3D images"):
        predictor.predict(Image.from_array(np.zeros((1, 8, 8), np.float32)), "flat.png")


def test_bundle_errors_name_the_problem(tmp_path, bundle_3d):
    with pytest.raises(MedsegError, match="no plan.json"):
        load_bundle(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plan.json").write_text((bundle_3d / "plan.json").read_text())
    (broken / "fold_0.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(MedsegError, match="fold_0.safetensors"):
        load_bundle(broken).load_models()
    old = json.loads((bundle_3d / "plan.json").read_text()) | {"version": 999}
    (broken / "plan.json").write_text(json.dumps(old))
    with pytest.raises(MedsegError, match="version"):
        load_bundle(broken)


def test_collect_inputs_groups_channel_files_and_reads_test_lists(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0000.nii.gz", "p2_0001.nii.gz"):
        (folder / name).write_bytes(b"")
    items = collect_inputs([folder])
    assert [(i.case_id, len(i.files)) for i in items] == [("p1", 2), ("p2", 2)]
    data = make_3d_dataset(tmp_path / "data")
    (data / "split.json").write_text(json.dumps({"train": ["blob_000"], "test": ["blob_004", "blob_005"]}))
    assert [i.case_id for i in collect_inputs([data])] == ["blob_004", "blob_005"]
    flat = make_2d_dataset(tmp_path / "flat")  # the 2D layout (images/, masks/) reads its test list too
    (flat / "split.json").write_text(json.dumps({"train": ["img00"], "test": ["img02"]}))
    assert [(i.case_id, [f.parent.name for f in i.files]) for i in collect_inputs([flat])] == [("img02", ["images"])]
    (flat / "split.json").write_text(json.dumps({"train": ["img00"], "test": ["img02", "img99"]}))
    with pytest.raises(MedsegError, match="img99"):
        collect_inputs([flat])


def test_bundle_postprocessing_is_applied_and_can_be_turned_off(tmp_path, bundle_3d):
    import shutil

    from medseg.postprocess import PostprocessConfig, save_postprocessing

    twin = tmp_path / "bundle"
    shutil.copytree(bundle_3d, twin)
    config = PostprocessConfig(keep_largest_foreground=True)
    config.set_class(1, threshold=0.999)  # class 1 only where the model is all but certain
    save_postprocessing(config, twin / "postprocess.json")
    rng = np.random.default_rng(7)
    image, _ = blob_case(rng, (16, 16, 16))
    scan = Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5))
    raw = Predictor(load_bundle(twin), PredictOptions(postprocess=False)).predict(scan).labels.array
    cleaned = Predictor(load_bundle(twin)).predict(scan).labels.array
    assert (cleaned == 1).sum() <= (raw == 1).sum()
    assert (cleaned > 0).sum() <= (raw > 0).sum()
    from scipy import ndimage

    assert ndimage.label(cleaned[0] > 0)[1] <= 1  # one foreground component at most
    # a choice given instead of the bundle's (what `medseg predict --keep-largest/--fill-holes/--min-size` pass)
    override = PostprocessConfig()
    override.set_class(1, min_size_mm=1e9)  # no component of class 1 is that large
    without_1 = Predictor(load_bundle(twin), PredictOptions(postprocess=override)).predict(scan).labels.array
    assert not (without_1 == 1).any() and np.array_equal(without_1 == 2, raw == 2)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_bundle_predicts_in_fp32_on_a_cpu_without_native_bf16(tmp_path, bundle_3d, monkeypatch, native):
    """A bundle trained where bf16 is fast (GPU, AVX512-BF16) must not run emulated bf16 on a CPU without it."""
    import medseg.infer.predict as predict_module
    from medseg import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    used: list[str] = []
    real = predict_module.predict_logits

    def spy(*args, **kwargs):
        used.append(kwargs["precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_logits", spy)
    bundle = load_bundle(bundle_3d)
    bundle.plan.precision = "bf16"
    scan_path = tmp_path / "scan.nii.gz"
    image, _ = blob_case(np.random.default_rng(5), (12, 20, 16))
    write_image(Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5)), scan_path)
    manifest = predict_paths(bundle, [scan_path], tmp_path / "out", PredictOptions(tta=False))
    expected = "bf16" if native else "fp32"
    assert used == [expected]
    assert manifest["precision"] == expected
    bundle.plan.precision = "fp32"  # a bundle that trained in fp32 stays fp32 everywhere
    assert Predictor(bundle, PredictOptions(tta=False)).precision == "fp32"


def test_the_device_is_cuda_where_present_and_a_missing_gpu_is_refused_clearly(bundle_3d, monkeypatch):
    from medseg.errors import MedsegError
    from medseg.infer.predict import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(MedsegError, match="no CUDA GPU"):
        Predictor(load_bundle(bundle_3d), PredictOptions(device="cuda"))
    with pytest.raises(MedsegError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    predictor = Predictor(load_bundle(bundle_3d), PredictOptions(device="cpu"))
    assert {p.device.type for model in predictor.models for p in model.parameters()} == {"cpu"}
