"""The web viewer of ``medseg serve``: its API (view, masks kept for download, examples by name) with TestClient,
and end to end in headless Chromium against a real service on loopback with tiny real bundles."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from builders import ViewerService as Service
from builders import blob_case, chromium, log_in, segment_in_viewer, shared
from medseg.errors import MedsegError
from medseg.io import Image, read_image, write_image
from medseg.serve import ServeConfig, create_app
from medseg.serve.routes.health import STATIC
from medseg.serve.viewer import ViewCache, display_flips, display_stride, view_payload

TOKEN = "viewer-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HIPPOCAMPUS = "hippocampus_003.nii.gz"
JSRT = "JPCLN001.png"


@pytest.fixture(scope="module")
def bundles(bundle_3d, bundle_2d) -> dict[int, Path]:
    """The session's tiny bundles (conftest)."""
    return {3: bundle_3d, 2: bundle_2d}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    (folder / "blobs.nii.gz").write_bytes(_nifti(folder.parent))
    (folder / ".hidden.nii.gz").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a scan")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.nii.gz").write_bytes(b"x")
    outside = folder.parent / "secret.nii.gz"
    outside.write_bytes(_nifti(folder.parent))
    (folder / "link.nii.gz").symlink_to(outside)  # leads outside the folder: not offered
    return folder


@pytest.fixture(scope="module")
def client(bundles, examples):
    config = ServeConfig(token=TOKEN, examples=examples, tta=False)
    with TestClient(create_app([bundles[3], bundles[2]], config)) as test_client:
        yield test_client


def _nifti(folder: Path, shape=(16, 16, 16)) -> bytes:
    image, _ = blob_case(np.random.default_rng(5), shape)
    path = folder / "viewer_scan.nii.gz"
    write_image(Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5)), path)
    return path.read_bytes()


def _model(client, dimension: int) -> str:
    return next(m["name"] for m in client.get("/v1/models", headers=AUTH).json() if m["dimension"] == dimension)


def _decode(entry: dict, dtype, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _read(data: bytes, path: Path) -> Image:
    path.write_bytes(data)
    return read_image(path)


# ---- the API behind the page ---------------------------------------------------------------------------------


def test_view_answers_the_segmentation_with_a_display_copy(tmp_path, client):
    name = _model(client, 3)
    files = {"file": ("scan.nii.gz", _nifti(tmp_path), "application/octet-stream")}
    view = client.post(f"/v1/models/{name}/view?uncertainty=true", files=files, headers=AUTH)
    assert view.status_code == 200, view.text
    assert view.headers["cache-control"] == "no-store"
    body = view.json()
    plain = client.post(f"/v1/models/{name}/segment?format=json", files=files, headers=AUTH).json()
    assert body["result"]["volumes"] == plain["volumes"] and body["result"]["volume_unit"] == "ml"
    shown = body["view"]
    assert shown["shape"] == [16, 16, 16] and shown["stride"] == 1 and shown["spacing"] == [1.5, 1.0, 1.0]
    assert shown["legend"] == [{"value": 1, "name": "small", "color": "#e6194b"},
                               {"value": 2, "name": "bright", "color": "#3cb44b"}]
    mask = client.get(body["mask_url"], headers=AUTH)
    assert mask.status_code == 200 and mask.headers["cache-control"] == "no-store"
    reference = client.post(f"/v1/models/{name}/segment", files=files, headers=AUTH).content
    labels = _read(mask.content, tmp_path / "a.nii.gz").array[0]
    assert np.array_equal(labels, _read(reference, tmp_path / "b.nii.gz").array[0])
    assert np.array_equal(_decode(shown["labels"], np.uint8, shown["shape"]), labels)  # identity direction: no flip
    scan = read_image(tmp_path / "viewer_scan.nii.gz").array[0]
    channel = shown["channels"][0]
    values = _decode(channel, np.int16, shown["shape"]) * channel["slope"] + channel["intercept"]
    assert np.allclose(values, scan, atol=channel["slope"]) and channel["min"] == pytest.approx(scan.min())
    uncertainty = _decode(shown["uncertainty"], np.uint8, shown["shape"])
    assert uncertainty.max() <= 255 and body["result"]["uncertainty"]["mean"] >= 0
    assert client.get(body["mask_url"]).status_code == 401
    assert client.get("/v1/views/unknown/mask", headers=AUTH).status_code == 404
    assert not list(client.app.state.root.iterdir())  # the private case folders are gone


def test_examples_are_listed_and_picked_by_name_only(tmp_path, client):
    assert client.get("/v1/examples").status_code == 401
    listing = client.get("/v1/examples", headers=AUTH).json()["examples"]
    assert [e["name"] for e in listing] == ["blobs.nii.gz"]  # no hidden file, text, sub-folder or outside link
    name = _model(client, 3)
    url = f"/v1/models/{name}/segment"
    by_name = client.post(f"{url}?example=blobs.nii.gz&format=json", headers=AUTH)
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["shape"] == [16, 16, 16]
    viewed = client.post(f"/v1/models/{name}/view?example=blobs.nii.gz", headers=AUTH)
    assert viewed.status_code == 200 and viewed.json()["result"]["volumes"] == by_name.json()["volumes"]
    for bad in ("../secret.nii.gz", "link.nii.gz", "sub/inner.nii.gz", "/etc/passwd", ".hidden.nii.gz",
                "%2e%2e/secret.nii.gz", "notes.txt"):
        response = client.post(url, params={"example": bad}, headers=AUTH)
        assert response.status_code == 404 and "no such example" in response.json()["detail"], bad
    files = {"file": ("scan.nii.gz", _nifti(tmp_path), "application/octet-stream")}
    both = client.post(f"{url}?example=blobs.nii.gz", files=files, headers=AUTH)
    assert both.status_code == 400 and "either" in both.json()["detail"]
    assert client.post(url, headers=AUTH).status_code == 400
    job = client.post(f"/v1/models/{name}/jobs?example=blobs.nii.gz", headers=AUTH)
    assert job.status_code == 202
    with pytest.raises(MedsegError, match="not a folder"):
        create_app([], ServeConfig(examples=tmp_path / "missing"))


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/static/viewer.js" in page.text and "http" not in page.text.replace("http-equiv", "")  # no CDN
    for asset in ("viewer.js", "viewer.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and len(response.content) == (STATIC / asset).stat().st_size
    assert "sessionStorage" in client.get("/static/viewer.js").text
    assert client.get("/static/../app.py").status_code == 404


def test_mask_cache_is_bounded_and_expires():
    cache = ViewCache(ttl_s=0.2, size=2)
    first, second, third = (cache.put(bytes([i]), ".png") for i in range(3))
    assert cache.get(first) is None and cache.get(second).mask == b"\x01" and cache.get(third).mask == b"\x02"
    assert len(first) >= 32  # unguessable
    time.sleep(0.25)
    assert cache.get(third) is None and not cache.items


def test_display_copy_is_subsampled_and_flipped_for_display_only():
    assert display_stride((512, 512)) == 1 and display_stride((2048, 2048)) == 2
    assert display_stride((300, 512, 512)) == 2  # 78.6 M voxels -> 9.8 M
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[0, 0, 0] = 2
    scan = Image.from_array(np.arange(4 * 6 * 8, dtype=np.float32).reshape(1, 4, 6, 8) * 1000.5,
                            direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))  # NIfTI RAS identity read as LPS
    assert display_flips(scan) == [False, True, True]
    view = view_payload(scan, labels, np.full((4, 6, 8), 0.5, np.float32), {0: "bg", 1: "a", 2: "b"}, "ct")
    shown = _decode(view["labels"], np.uint8, view["shape"])
    assert shown[0, 5, 7] == 2 and shown.sum() == 2 and view["orientation"] == "radiological"
    channel = view["channels"][0]
    values = _decode(channel, np.int16, view["shape"]) * channel["slope"] + channel["intercept"]
    assert np.allclose(values, np.flip(scan.array[0], (1, 2)), atol=channel["slope"])
    assert set(_decode(view["uncertainty"], np.uint8, view["shape"]).ravel()) == {128}
    oblique = Image.from_array(np.zeros((1, 2, 2, 2)), direction=(0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1))
    assert display_flips(oblique) is None


# ---- end to end in a browser ---------------------------------------------------------------------------------


def _artefacts(tmp_path: Path) -> Path:
    folder = tmp_path / "artefacts"
    folder.mkdir()
    return folder


def _keep(folder: Path) -> None:
    target = os.environ.get("MEDSEG_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            shutil.copy2(path, Path(target) / path.name)


def _shown_volumes(page) -> dict[str, float]:
    cells = page.locator("td.volume")
    return {cells.nth(i).get_attribute("data-label"): float(cells.nth(i).get_attribute("data-value"))
            for i in range(cells.count())}


def _download(page, button: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.locator(button).click()
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_viewer_end_to_end_in_chromium(tmp_path, bundles):
    sync_playwright, executable = chromium()
    hippocampus = shared("msd_hippocampus") / "imagesTr" / HIPPOCAMPUS
    jsrt = shared("jsrt_scr") / "images" / JSRT
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copyfile(hippocampus, folder / "hippocampus.nii.gz")
    artefacts = _artefacts(tmp_path)
    app = create_app([bundles[3], bundles[2]], ServeConfig(token=TOKEN, examples=folder, tta=False))
    with Service(app) as service, sync_playwright() as playwright, httpx.Client(base_url=service.url, headers=AUTH,
                                                                                  timeout=300) as api:
        models = {m["dimension"]: m["name"] for m in api.get("/v1/models").json()}

        def reference(path: Path, model: str) -> tuple[dict, Image]:
            """The API's answer: the mask, with the volumes and the drift flag in its headers."""
            response = api.post(f"/v1/models/{model}/segment", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            body = {"volumes": json.loads(response.headers["x-medseg-volumes"]),
                    "drift": response.headers["x-medseg-drift"] == "true"}
            return body, _read(response.content, tmp_path / f"reference_{path.name}")

        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu",
                                                                                 "--disable-dev-shm-usage"])
        # Generous limits: they catch a hang, not slowness (a loaded 2-core CI machine segments slowly).
        context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        context.set_default_timeout(180_000)
        try:
            desktop = context.new_page()
            errors: list[str] = []
            desktop.on("pageerror", lambda error: errors.append(str(error)))
            log_in(desktop, service.url, TOKEN)
            desktop.wait_for_selector("#app:not([hidden])")
            assert desktop.evaluate("sessionStorage.getItem('medseg-token')") == TOKEN
            assert desktop.evaluate("localStorage.length") == 0

            # a 3D MRI: overlay, slices by slider and wheel, planes, volumes, mask and snapshot
            segment_in_viewer(desktop, models[3], 1, file=hippocampus)
            body, mask = hippocampus_answer = reference(hippocampus, models[3])
            labels = np.flip(mask.array[0], tuple(i for i, f in enumerate(display_flips(mask)) if f))
            canvas = desktop.locator("#canvas")
            middle = labels.shape[0] // 2
            assert canvas.get_attribute("data-plane") == "axial" and canvas.get_attribute("data-slice") == str(middle)
            assert int(canvas.get_attribute("data-overlay")) == int((labels[middle] > 0).sum())
            desktop.locator("#slice").fill("3")
            assert canvas.get_attribute("data-slice") == "3"
            assert int(canvas.get_attribute("data-overlay")) == int((labels[3] > 0).sum())
            canvas.hover()
            desktop.mouse.wheel(0, 120)
            desktop.wait_for_selector("#canvas[data-slice='4']")
            desktop.locator("#planes button[data-plane=coronal]").click()
            assert canvas.get_attribute("data-plane") == "coronal"
            assert int(canvas.get_attribute("data-overlay")) == int((labels[:, labels.shape[1] // 2] > 0).sum())
            desktop.locator("#planes button[data-plane=axial]").click()
            filled = int(canvas.get_attribute("data-overlay"))
            desktop.locator("input[name=style][value=outline]").check()
            assert int(canvas.get_attribute("data-overlay")) <= filled
            desktop.locator("#show-uncertainty").check()
            desktop.locator("#opacity").fill("80")
            level = desktop.locator("#level-label").inner_text()
            desktop.locator("#level").fill("100")
            assert desktop.locator("#level-label").inner_text() != level
            desktop.locator("#show-uncertainty").uncheck()
            desktop.locator("input[name=style][value=filled]").check()
            desktop.locator("#preset").select_option("auto")
            assert _shown_volumes(desktop) == body["volumes"]
            assert "ml" in desktop.locator("td.volume").first.inner_text()
            assert desktop.locator("#drift").is_visible() == body["drift"]
            downloaded = _download(desktop, "#download-mask", artefacts)
            assert downloaded.name == "hippocampus_003_mask.nii.gz"
            got = read_image(downloaded)
            assert np.array_equal(got.array, mask.array) and got.same_geometry(mask)
            snapshot = _download(desktop, "#snapshot", artefacts)
            assert snapshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            desktop.evaluate("window.scrollTo(0, 0)")
            desktop.screenshot(path=str(artefacts / "viewer_3d_1280x800.png"))

            # a 2D chest X-ray (PNG): areas in mm^2, the mask as PNG
            segment_in_viewer(desktop, models[2], 2, file=jsrt)
            body, mask = reference(jsrt, models[2])
            assert desktop.locator("#slice-box").is_hidden() and desktop.locator("#planes").is_hidden()
            assert int(canvas.get_attribute("data-overlay")) == int((mask.array[0] > 0).sum())
            assert _shown_volumes(desktop) == body["volumes"]
            assert "mm²" in desktop.locator("#unit-header").inner_text()
            downloaded = _download(desktop, "#download-mask", artefacts)
            assert downloaded.name == "JPCLN001_mask.png"
            assert np.array_equal(read_image(downloaded).array, mask.array)
            desktop.evaluate("window.scrollTo(0, 0)")
            desktop.screenshot(path=str(artefacts / "viewer_2d_1280x800.png"))

            # an example from the server's folder, by name
            desktop.locator("#file").set_input_files([])
            segment_in_viewer(desktop, models[3], 3, example="hippocampus.nii.gz")
            assert _shown_volumes(desktop) == hippocampus_answer[0]["volumes"]
            assert not errors, errors

            # a phone: one column, nothing wider than the screen (the same tab, resized: no second segmentation)
            desktop.set_viewport_size({"width": 390, "height": 844})
            desktop.wait_for_function("document.getElementById('canvas').getBoundingClientRect().width <= 390")
            assert desktop.evaluate("document.documentElement.scrollWidth") <= 390
            desktop.evaluate("window.scrollTo(0, 0)")
            desktop.screenshot(path=str(artefacts / "viewer_3d_390x844.png"), full_page=True)

            # a wrong token: a message in plain words, not a blank page
            stranger = browser.new_context(viewport={"width": 1280, "height": 800})  # nothing shared with desktop
            stranger.set_default_timeout(180_000)
            wrong = stranger.new_page()
            log_in(wrong, service.url, "not-the-token")
            message = wrong.locator("#error")
            message.wait_for(state="visible")
            assert "token was not accepted" in message.inner_text()
            assert wrong.locator("#token-form").is_visible() and wrong.locator("#app").is_hidden()
            wrong.screenshot(path=str(artefacts / "viewer_wrong_token.png"))
        finally:
            browser.close()
            _keep(artefacts)
    for name in ("viewer_3d_1280x800.png", "viewer_2d_1280x800.png", "viewer_3d_390x844.png"):
        assert (artefacts / name).stat().st_size > 1000
