"""Corrections from the web viewer (``medseg serve --corrections DIR``): changes on the display grid mapped back
to the scan's grid, saved as a case of a standard data set that ``check`` and ``train --init`` read as is; the
worklist of examples ranked by uncertainty; and the whole loop in headless Chromium (draw, undo, save, reload)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from builders import ViewerService as Service
from builders import blob_case, chromium, log_in, segment_in_viewer, shared
from medseg.data import check_dataset, discover_dataset
from medseg.errors import MedsegError
from medseg.io import Image, read_image, write_image
from medseg.serve import ServeConfig, create_app
from medseg.serve.corrections import Changes, CorrectionError, apply_display_changes
from medseg.serve.viewer import display_flips
from medseg.train import TrainConfig, TrainRequest, train

TOKEN = "corrections-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _scan(folder: Path, name: str, seed: int, shape=(16, 16, 16)) -> Path:
    image, _ = blob_case(np.random.default_rng(seed), shape)
    path = folder / name
    write_image(Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5)), path)
    return path


@pytest.fixture
def examples(tmp_path) -> Path:
    folder = tmp_path / "examples"
    folder.mkdir()
    for seed in range(3):
        _scan(folder, f"scan{seed}.nii.gz", seed)
    return folder


def _changes(index: list[int], value: list[int]) -> dict[str, str]:
    return {"index": base64.b64encode(np.asarray(index, "<u4").tobytes()).decode(),
            "value": base64.b64encode(np.asarray(value, "<u2").tobytes()).decode()}


def _model(client, dimension: int) -> str:
    return next(m["name"] for m in client.get("/v1/models", headers=AUTH).json() if m["dimension"] == dimension)


def test_saving_corrections_needs_a_token(tmp_path, bundle_3d):
    with pytest.raises(MedsegError, match="no API token"):
        create_app([bundle_3d], ServeConfig(corrections=tmp_path / "corrections"))


def test_a_correction_is_saved_as_a_case_that_check_and_fine_tuning_read(tmp_path, bundle_3d, examples):
    folder = tmp_path / "corrections"
    config = ServeConfig(token=TOKEN, examples=examples, corrections=folder, tta=False)
    with TestClient(create_app([bundle_3d], config)) as client:
        name = _model(client, 3)
        saved = []
        for seed in range(3):
            body = client.post(f"/v1/models/{name}/view?example=scan{seed}.nii.gz", headers=AUTH).json()
            predicted = np.frombuffer(base64.b64decode(body["view"]["labels"]["data"]), np.uint8).reshape(16, 16, 16)
            # paint label 2 on a 3x3 patch of slice 8, erase whatever label 1 slice 3 holds
            patch = [np.ravel_multi_index((8, y, x), (16, 16, 16)) for y in range(3) for x in range(3)]
            erased = [int(i) for i in np.flatnonzero(predicted.ravel() == 1) if i // 256 == 3]
            index, value = patch + erased, [2] * len(patch) + [0] * len(erased)
            answer = client.post(body["correction_url"], headers=AUTH,
                                 json={"corrected_by": "A. Reader", **_changes(index, value)})
            assert answer.status_code == 200, answer.text
            expected = predicted.copy()
            expected.ravel()[index] = value
            saved.append((answer.json(), expected, body, predicted))
            assert answer.json()["changed_voxels"] == int((expected != predicted).sum()) > 0
        # saving the same result again replaces its case
        again = client.post(saved[0][2]["correction_url"], headers=AUTH,
                            json={"corrected_by": "A. Reader", **_changes([0], [1])})
        assert again.status_code == 200 and again.json()["case"] == saved[0][0]["case"]
        saved[0][1][...] = saved[0][3]  # the page always sends every change from the model's result
        saved[0][1].ravel()[0] = 1
        # refused: no name, a bad index or label, a malformed array, an unknown or expired result, no token
        url = saved[1][2]["correction_url"]
        for bad, text in [({"corrected_by": "", **_changes([0], [1])}, "who made the correction"),
                          ({"corrected_by": "x", **_changes([16**3], [1])}, "outside the display grid"),
                          ({"corrected_by": "x", **_changes([0], [7])}, "not this model's"),
                          ({"corrected_by": "x", "index": "!!", "value": ""}, "not valid base64"),
                          ({"corrected_by": "x", **_changes([0, 1], [1])}, "holds 2 voxels")]:
            response = client.post(url, headers=AUTH, json=bad)
            assert response.status_code == 400 and text in response.json()["detail"], response.text
        assert client.post("/v1/views/nope/correction", headers=AUTH, json={"corrected_by": "x"}).status_code == 404
        assert client.post(url, json={"corrected_by": "x", **_changes([0], [1])}).status_code == 401
    dataset = folder / name
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"] == {"0": "background", "1": "small", "2": "bright"}
    for (answer, expected, *_), seed in zip(saved, range(3)):
        case = answer["case"]
        scan = read_image(dataset / "imagesTr" / f"{case}_0000.nii.gz")
        original = read_image(examples / f"scan{seed}.nii.gz")
        assert np.array_equal(scan.array, original.array) and scan.same_geometry(original)
        mask = read_image(dataset / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(mask.array[0], expected) and mask.same_geometry(original)
        sidecar = json.loads((dataset / "corrections" / f"{case}.json").read_text())
        assert sidecar["corrected_by"] == "A. Reader" and sidecar["example"] == f"scan{seed}.nii.gz"
        assert sidecar["token_id"] and TOKEN not in json.dumps(sidecar) and str(tmp_path) not in json.dumps(sidecar)
        assert sidecar["bundle_version"] and sidecar["saved_at"].endswith("+00:00")
    report = check_dataset(discover_dataset(dataset))
    assert report.ok, report.problems
    bundle = train(TrainRequest(data=dataset, run_dir=tmp_path / "run", init=bundle_3d, cache_root=tmp_path / "cache",
                                workers=1, progress_bar=False, folds=3), TrainConfig(epochs=1, steps_per_epoch=1))
    assert (bundle / "plan.json").is_file()


def test_a_service_without_corrections_offers_none(bundle_3d, examples):
    with TestClient(create_app([bundle_3d], ServeConfig(token=TOKEN, examples=examples, tta=False))) as client:
        body = client.post(f"/v1/models/{_model(client, 3)}/view?example=scan0.nii.gz", headers=AUTH).json()
        assert body["correction_url"] is None
        key = body["mask_url"].split("/")[3]
        response = client.post(f"/v1/views/{key}/correction", headers=AUTH, json={"corrected_by": "x"})
        assert response.status_code == 403 and "--corrections" in response.json()["detail"]


def test_changes_on_a_subsampled_flipped_display_set_the_blocks_they_stand_for():
    labels = np.zeros((1030, 6), np.uint8)  # over 1024 pixels: shown at stride 2
    scan = Image.from_array(np.zeros((1, 1030, 6), np.float32), direction=(-1.0, 0.0, 0.0, 1.0))
    assert display_flips(scan) == [False, True]  # x runs right to left: flipped for display
    shown = (515, 3)
    # display pixel (row 0, column 0) is x = 5..4 after the flip; row 514 holds the last full row alone
    index = [np.ravel_multi_index((0, 0), shown), np.ravel_multi_index((514, 2), shown)]
    corrected, changed = apply_display_changes(labels, scan, Changes(np.array(index), np.array([1, 2])), {0, 1, 2})
    expected = labels.copy()
    expected[0:2, 4:6] = 1
    expected[1028:1030, 0:2] = 2
    assert np.array_equal(corrected, expected) and changed == 8
    with pytest.raises(CorrectionError, match="outside"):
        apply_display_changes(labels, scan, Changes(np.array([515 * 3]), np.array([1])), {0, 1})


def test_the_worklist_ranks_examples_by_uncertainty_and_puts_corrected_ones_last(tmp_path, bundle_3d, examples):
    config = ServeConfig(token=TOKEN, examples=examples, corrections=tmp_path / "corrections", tta=False)
    with TestClient(create_app([bundle_3d], config)) as client:
        name = _model(client, 3)
        ranked = client.post(f"/v1/models/{name}/worklist", headers=AUTH).json()["cases"]
        assert sorted(e["name"] for e in ranked) == ["scan0.nii.gz", "scan1.nii.gz", "scan2.nii.gz"]
        scores = [e["score"] for e in ranked]
        assert scores == sorted(scores, reverse=True) and not any(e["corrected"] for e in ranked)
        for entry in ranked:  # each score is the one the service answers for that scan
            body = client.post(f"/v1/models/{name}/segment?format=json&uncertainty=true&example={entry['name']}",
                               headers=AUTH).json()
            assert body["uncertainty"]["score"] == pytest.approx(entry["score"])
        top = ranked[0]["name"]
        view = client.post(f"/v1/models/{name}/view?example={top}", headers=AUTH).json()
        assert client.post(view["correction_url"], headers=AUTH,
                           json={"corrected_by": "R", **_changes([0], [1])}).status_code == 200
        again = client.post(f"/v1/models/{name}/worklist", headers=AUTH).json()["cases"]
        assert again[-1] == {**ranked[0], "corrected": True}
        assert [e["name"] for e in again[:-1]] == [e["name"] for e in ranked[1:]]


def test_correcting_in_chromium_draw_undo_save_and_reload(tmp_path, bundle_3d):
    sync_playwright, executable = chromium()
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copyfile(shared("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz", folder / "hippo.nii.gz")
    corrections = tmp_path / "corrections"
    app = create_app([bundle_3d], ServeConfig(token=TOKEN, examples=folder, corrections=corrections, tta=False))
    with Service(app) as service, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu",
                                                                                 "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(180_000)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            log_in(page, service.url, TOKEN)
            page.wait_for_selector("#app:not([hidden])")
            model = page.locator("#model").input_value()
            segment_in_viewer(page, model, 1, example="hippo.nii.gz")
            assert page.locator("#correct").is_visible()
            canvas = page.locator("#canvas")
            box = canvas.bounding_box()
            plane, index = canvas.get_attribute("data-plane"), int(canvas.get_attribute("data-slice"))
            page.locator("input[name=tool][value=brush]").check()
            page.locator("#edit-label").select_option(index=1)  # the second label
            label = int(page.locator("#edit-label").input_value())
            page.locator("#brush-size").fill("2")

            def stroke(y: float) -> None:
                page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * y)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * y, steps=12)
                page.mouse.up()

            stroke(0.4)
            first = int(canvas.get_attribute("data-edits"))
            assert first > 0
            stroke(0.6)
            both = int(canvas.get_attribute("data-edits"))
            assert both > first
            page.locator("#undo").click()
            assert int(canvas.get_attribute("data-edits")) == first
            page.locator("#corrected-by").fill("Dr Test")
            page.locator("#save-correction").click()
            page.wait_for_selector("#correction-status[data-saved='1']")
            case = page.locator("#correction-status").get_attribute("data-case")

            # reload: a fresh page (same tab session) ranks the examples; the corrected one is marked
            page.reload()
            page.wait_for_selector("#app:not([hidden])")
            page.locator("#rank").click()
            page.wait_for_selector("#worklist button")
            assert "corrected" in page.locator("#worklist li").last.inner_text()
            assert not errors, errors
        finally:
            browser.close()
    _check_saved(corrections / model, case, folder / "hippo.nii.gz", bundle_3d, first, (plane, index), label)


def _check_saved(dataset: Path, case: str, source_file: Path, bundle: Path, strokes: int,
                 where: tuple[str, int], label: int) -> None:
    """The case on disk: the scan as given, the mask the model's but for the kept stroke's voxels, on the slice
    shown and all of the brush's label; the sidecar says who; the folder checks clean."""
    mask = read_image(dataset / "labelsTr" / f"{case}.nii.gz")
    scan = read_image(dataset / "imagesTr" / f"{case}_0000.nii.gz")
    source = read_image(source_file)
    assert np.array_equal(scan.array, source.array) and mask.same_geometry(source)
    changed = mask.array[0] != _predicted(bundle, source)
    assert int(changed.sum()) == strokes  # exactly the voxels of the stroke kept, the undone one gone
    flips = tuple(i for i, f in enumerate(display_flips(source)) if f)
    shown_changed = np.flip(changed, flips) if flips else changed
    plane, index = where
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    assert np.flatnonzero(shown_changed.any(axis=tuple(a for a in range(3) if a != axis))).tolist() == [index]
    assert set(np.unique(mask.array[0][changed])) == {label}
    sidecar = json.loads((dataset / "corrections" / f"{case}.json").read_text())
    assert sidecar["corrected_by"] == "Dr Test" and sidecar["changed_voxels"] == strokes
    assert check_dataset(discover_dataset(dataset)).ok


def _predicted(bundle: Path, image: Image) -> np.ndarray:
    from medseg.bundle import load_bundle
    from medseg.infer.predict import PredictOptions, Predictor

    return Predictor(load_bundle(bundle), PredictOptions(tta=False)).predict(image).labels.array[0]
