"""ONNX export with a parity check, the onnxruntime backend, and `medseg predict --format dicom-seg` (the SEG
writer itself is tested in test_dicom_seg)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import blob_case, run_cli, write_series
from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.export.onnx import export_onnx, onnx_paths, parity_check
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import read_image, write_image
from medseg.io.dicom_seg import read_dicom_seg
from medseg.preprocess import preprocess_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS = SHARED / "msd_hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"


def _sample_case(plan) -> np.ndarray:
    """A real hippocampus MRI preprocessed by the bundle's plan when the shared data is there, else synthetic."""
    if HIPPOCAMPUS.exists():
        return preprocess_image(read_image(HIPPOCAMPUS), plan)[0]
    image, _ = blob_case(np.random.default_rng(5), (24, 20, 28))
    return image[None]


def test_onnx_paths_one_file_a_fold():
    class Fake:
        folder = Path("b")
        folds = ["0", "1"]

    assert onnx_paths(Fake(), None) == {"0": Path("b/fold_0.onnx"), "1": Path("b/fold_1.onnx")}
    assert onnx_paths(Fake(), "m.onnx") == {"0": Path("m_fold_0.onnx"), "1": Path("m_fold_1.onnx")}
    assert onnx_paths(Fake(), "m.onnx", ["1"]) == {"1": Path("m.onnx")}


def test_onnx_matches_torch_on_a_real_case_with_dynamic_axes(tmp_path, bundle_3d):
    import onnxruntime as ort

    bundle = load_bundle(bundle_3d)
    paths = export_onnx(bundle, tmp_path / "model.onnx")
    assert list(paths.values()) == [tmp_path / "model.onnx"]  # one fold: the name given
    data = _sample_case(bundle.plan)
    (parity,) = parity_check(bundle, paths, data)
    print(parity.line())
    assert parity.max_abs_logit_diff < 1e-3 and parity.label_agreement >= 0.999
    session = ort.InferenceSession(str(paths["0"]), providers=["CPUExecutionProvider"])
    model = bundle.load_models()[0]
    for shape in [(2, 1, 16, 16, 16), (1, 1, 8, 24, 32)]:  # other batch and spatial sizes than traced
        x = torch.randn(*shape)
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == (shape[0], bundle.plan.num_classes, *shape[2:])  # only the full-resolution logits
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-3)


def test_onnxruntime_backend_predicts_like_torch_and_needs_an_export(tmp_path, bundle_3d):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_3d, copy)
    bundle = load_bundle(copy)
    with pytest.raises(MedsegError, match="run `medseg export"):
        Predictor(bundle, PredictOptions(backend="onnxruntime"))
    with pytest.raises(MedsegError, match="unknown backend"):
        Predictor(bundle, PredictOptions(backend="tensorrt"))
    assert run_cli("export", str(copy)) == 0
    assert (copy / "fold_0.onnx").exists()
    image_array, _ = blob_case(np.random.default_rng(1), (18, 16, 20))
    source = tmp_path / "scan.nii.gz"
    from medseg.io import Image

    write_image(Image.from_array(image_array[None] * 100 + 300, spacing=(1.0, 1.0, 1.5)), source)
    image = read_image(source)
    torch_result = Predictor(bundle, PredictOptions(postprocess=False)).predict(image)
    onnx_result = Predictor(bundle, PredictOptions(postprocess=False, backend="onnxruntime")).predict(image)
    agreement = (torch_result.labels.array == onnx_result.labels.array).mean()
    assert agreement >= 0.999
    assert run_cli("predict", str(copy), str(source), "-o", str(tmp_path / "out"), "--backend", "onnxruntime",
                   "--no-progress") == 0
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert manifest["backend"] == "onnxruntime" and len(manifest["cases"]) == 1


def test_predict_writes_dicom_seg_for_a_dicom_series(tmp_path, bundle_3d):

    write_series(tmp_path / "series", n=4)
    out = tmp_path / "out"
    assert run_cli("predict", str(bundle_3d), str(tmp_path / "series"), "-o", str(out), "--format", "dicom-seg",
                   "--no-progress") == 0
    seg_path = out / "series.seg.dcm"
    assert seg_path.exists()
    labels = read_dicom_seg(seg_path, tmp_path / "series")
    names = load_bundle(bundle_3d).plan.labels
    assert set(labels.meta["segment_labels"].values()) <= {names[1], names[2]}
    reference = Predictor(load_bundle(bundle_3d)).predict(read_image(tmp_path / "series"))
    np.testing.assert_array_equal(labels.array[0], reference.labels.array[0])
    nifti = tmp_path / "scan.nii.gz"
    write_image(read_image(tmp_path / "series"), nifti)
    assert run_cli("predict", str(bundle_3d), str(nifti), "-o", str(tmp_path / "out2"), "--format", "dicom-seg",
                   "--no-progress") == 1  # a DICOM SEG needs a DICOM source: the case is listed as failed
