"""A bundle's version (content hash of plan.json and the weights) and lineage: written with the bundle, shown in
the model card, computed on load for old bundles, and listed by the service (``/v1/models``, ``/metrics``)."""

from __future__ import annotations

import datetime
import json
import shutil

from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from medseg import __version__
from medseg.bundle import LINEAGE_FILE, bundle_version, fingerprint_hash, load_bundle
from medseg.serve import ServeConfig, create_app
from medseg.serve.admission import Metrics
from medseg.serve.cases import load_models


def test_a_trained_bundle_records_its_version_and_lineage(bundle_3d):
    lineage = json.loads((bundle_3d / LINEAGE_FILE).read_text())
    assert lineage["version"] == bundle_version(bundle_3d) and len(lineage["version"]) == 12
    assert lineage["parent"] is None and lineage["medseg_version"] == __version__
    fingerprint = json.loads((bundle_3d.parent / "fingerprint.json").read_text())
    assert lineage["data_fingerprint"] == fingerprint_hash(fingerprint)
    assert datetime.datetime.fromisoformat(lineage["created"]).tzinfo is not None
    card = (bundle_3d / "model_card.md").read_text()
    assert f"Version `{lineage['version']}`" in card and "trained from scratch" in card
    assert load_bundle(bundle_3d).version == lineage["version"]


def test_the_version_follows_the_content_and_old_bundles_get_theirs_on_load(tmp_path, bundle_3d):
    old = tmp_path / "old_bundle"
    shutil.copytree(bundle_3d, old)
    (old / LINEAGE_FILE).unlink()  # written before lineage.json existed
    bundle = load_bundle(old)
    assert bundle.version == bundle_version(bundle_3d)  # same bytes, same version, wherever the folder is
    assert bundle.lineage["computed_on_load"] is True and bundle.lineage["parent"] is None
    (old / "metrics.json").write_text("{}")  # not part of the version
    assert bundle_version(old) == bundle_version(bundle_3d)
    weights = old / "fold_0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert bundle_version(old) != bundle_version(bundle_3d)


def test_the_service_lists_each_models_version_in_models_and_metrics(bundle_3d):
    version = bundle_version(bundle_3d)
    with TestClient(create_app([bundle_3d], ServeConfig())) as client:
        (model,) = client.get("/v1/models").json()
        assert model["bundle_version"] == version and model["lineage"]["parent"] is None
    metrics = Metrics()
    (name,) = load_models([bundle_3d], ServeConfig(), metrics)
    text = generate_latest(metrics.registry).decode()
    line = next(row for row in text.splitlines() if row.startswith("medseg_model_info{"))
    assert f'model="{name}"' in line and f'version="{version}"' in line and line.endswith(" 1.0")


def test_the_running_service_shows_each_models_version_in_metrics(bundle_3d):
    from fastapi.testclient import TestClient

    from medseg.bundle import load_bundle
    from medseg.serve import create_app

    version = load_bundle(bundle_3d).version
    with TestClient(create_app([bundle_3d])) as client:
        text = client.get("/metrics").text
    assert f'version="{version}"' in text and "medseg_model_info" in text
