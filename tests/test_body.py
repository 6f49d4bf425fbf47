"""The body mask of CT plans: air around the patient is cropped away and never labelled."""

from __future__ import annotations

import json
import shutil

import numpy as np
from scipy import ndimage

from builders import blob_case, make_3d_dataset
from medseg.bundle import load_bundle
from medseg.data import check_dataset, discover_dataset
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import Image
from medseg.plan import Machine, fingerprint_from_report, make_plan
from medseg.preprocess import preprocess_image
from medseg.preprocess.body import body_mask

CPU = Machine("cpu", cores=2, memory_bytes=24 << 30, bf16=True)


def phantom() -> np.ndarray:
    """A 40 HU torso with a lung (-850 HU) inside, a separate table (200 HU) under it, in -1000 HU air."""
    ct = np.full((12, 64, 64), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    torso = ((yy - 28) / 20.0) ** 2 + ((xx - 32) / 26.0) ** 2 <= 1
    lung = ((yy - 26) / 8.0) ** 2 + ((xx - 22) / 6.0) ** 2 <= 1
    ct[:, torso] = 40
    ct[:, lung] = -850
    ct[:, 56:59, 4:60] = 200  # the table: apart from the body
    return ct


def test_body_is_the_torso_with_its_lungs_and_without_table_or_air():
    ct = phantom()
    body = body_mask(ct)
    yy, xx = np.mgrid[:64, :64]
    assert body[:, 26, 22].all()  # the lung inside the torso is body
    assert body[:, 28, 32].all() and not body[:, 57, 10:54].any()  # torso yes, table no
    assert not body[:, 2, 2].any() and not body[:, 30, 62].any()  # air around it
    torso = ((yy - 28) / 20.0) ** 2 + ((xx - 32) / 26.0) ** 2 <= 1
    assert ndimage.distance_transform_edt(~torso)[body[5]].max() <= 3.5  # grown by a coarse voxel, not more
    assert body_mask(np.full((4, 8, 8), -1000.0)).all()  # nothing above -500 HU: not masked at all


def test_ct_plans_crop_to_the_body(tmp_path):
    root = make_3d_dataset(tmp_path / "ds", cases=3)
    meta = json.loads((root / "dataset.json").read_text()) | {"channel_names": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    plan = make_plan(fingerprint_from_report(check_dataset(discover_dataset(root), workers=1)), machine=CPU)
    assert plan.body_channel == 0 and any("body" in n for n in plan.notes)
    _, _, props = preprocess_image(Image.from_array(phantom()[None], spacing=(1.0, 1.0, 1.5)), plan)
    (z0, z1), (y0, y1), (x0, x1) = props.crop_bbox
    assert (z0, z1) == (0, 12) and y0 > 2 and y1 < 56 and x0 > 2 and x1 <= 62  # air and table cropped away


def test_nothing_outside_the_body_is_labelled(tmp_path, bundle_3d):
    """A blob apart from the body (a second, smaller one) is labelled by the model, except by a CT plan."""
    rng = np.random.default_rng(3)
    scan = np.full((16, 32, 40), -1000.0, np.float32)
    for rows in (slice(0, 16), slice(16, 32)):  # the body: two blob cases side by side
        scan[:, rows, :16] = blob_case(rng, (16, 16, 16))[0] * 100 + 300
    scan[:, 8:24, 24:40] = blob_case(rng, (16, 16, 16))[0] * 100 + 300  # apart from it
    twin = tmp_path / "bundle"
    shutil.copytree(bundle_3d, twin)
    plan = json.loads((twin / "plan.json").read_text())
    plan["normalization"] = [{"scheme": "ct", "mean": 330.0, "std": 90.0, "clip_low": 200.0, "clip_high": 800.0}]
    (twin / "plan.json").write_text(json.dumps(plan))
    image = Image.from_array(scan[None], spacing=(1.0, 1.0, 1.5))
    without = Predictor(load_bundle(twin), PredictOptions(tta=False)).predict(image).labels.array[0]
    assert (without[:, 8:24, 24:40] > 0).any()  # the model labels the blob apart from the body

    (twin / "plan.json").write_text(json.dumps(plan | {"body_channel": 0}))
    result = Predictor(load_bundle(twin), PredictOptions(tta=False, probabilities=True)).predict(image)
    labels = result.labels.array[0]
    assert not (labels[:, 8:24, 22:40] > 0).any() and (labels[:, :, :16] > 0).any()
    assert np.all(result.probabilities.array[0][:, 8:24, 24:40] == 1.0)  # background, certain, outside
