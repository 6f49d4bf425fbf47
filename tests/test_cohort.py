"""A cohort survives bad cases, restarts where it stopped (``--resume``, also after ``kill -9``) and splits over
``torchrun`` ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders import blob_case, run_cli, run_ranks
from medseg.bundle import load_bundle
from medseg.infer import cohort
from medseg.infer.cohort import JOURNAL_FOLDER, MANIFEST_FILE, predict_paths
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import Image, read_image, write_image


def write_scans(folder: Path, count: int, shape: tuple[int, int, int] = (12, 20, 16), seed: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        image, _ = blob_case(rng, shape)
        path = folder / f"scan{k:02d}.nii.gz"
        write_image(Image.from_array((image[None] * 100 + 300).astype(np.float32), spacing=(1.0, 1.0, 1.5)), path)
        paths.append(path)
    return paths


def test_one_bad_case_is_listed_and_every_other_case_is_written(tmp_path, bundle_3d):
    scans = write_scans(tmp_path / "in", 3)
    nan = read_image(scans[1])
    nan.array[0, 2, 3, 4] = np.nan
    write_image(nan, scans[1])
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_image(Image.from_array(np.zeros((1, 12, 20, 16), np.complex64)), tmp_path / "in" / "complex.nii.gz")
    code = run_cli("predict", str(bundle_3d), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress")
    assert code == 1  # some case failed
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert sorted(c["case"] for c in manifest["cases"]) == ["scan00", "scan02"]
    failed = {f["case"]: f["error"] for f in manifest["failed"]}
    assert set(failed) == {"broken", "complex", "scan01"}
    assert "complex voxel values" in failed["complex"]
    assert "NaN" in failed["scan01"] and "scan01.nii.gz" in failed["scan01"]
    assert "broken.nii.gz" in failed["broken"]
    for case in manifest["cases"]:
        assert read_image(case["output"]).shape == (12, 20, 16)


def test_an_unexpected_error_on_one_case_does_not_stop_the_others(tmp_path, bundle_3d, monkeypatch):
    scans = write_scans(tmp_path / "in", 3)
    real = Predictor.predict

    def flaky(self, image, source=None, should_stop=None):
        if Path(source).name == scans[0].name:
            raise MemoryError("cannot allocate 40 GiB")
        return real(self, image, source, should_stop)

    monkeypatch.setattr(Predictor, "predict", flaky)
    manifest = predict_paths(load_bundle(bundle_3d), scans, tmp_path / "out", PredictOptions(tta=False))
    assert [c["case"] for c in manifest["cases"]] == ["scan01", "scan02"]
    (failure,) = manifest["failed"]
    assert failure["case"] == "scan00" and failure["internal"] and "MemoryError" in failure["error"]


def test_resume_predicts_only_what_is_missing_and_lists_every_case(tmp_path, bundle_3d, monkeypatch):
    scans = write_scans(tmp_path / "in", 4)
    out = tmp_path / "out"
    bundle = load_bundle(bundle_3d)
    first = predict_paths(bundle, scans[:3], out, PredictOptions(tta=False))
    gone = Path(first["cases"][1]["output"])
    gone.unlink()  # an output deleted since: predicted again
    leftover = out / f".{scans[3].name}.abc123.nii.gz"  # what a kill during the rename-to-be leaves
    leftover.write_bytes(b"half")
    seen: list[str] = []
    real = Predictor.predict

    def spy(self, image, source=None, should_stop=None):
        seen.append(Path(source).name)
        return real(self, image, source, should_stop)

    monkeypatch.setattr(Predictor, "predict", spy)
    again = predict_paths(bundle, scans, out, PredictOptions(tta=False), resume=True)
    assert seen == [scans[1].name, scans[3].name]
    assert again["resumed"] == 2
    assert [c["case"] for c in again["cases"]] == ["scan00", "scan01", "scan02", "scan03"]
    assert not leftover.exists() and gone.exists()
    seen.clear()
    predict_paths(bundle, scans, out, PredictOptions(tta=False))  # without --resume everything runs again
    assert len(seen) == 4


def test_a_journal_line_cut_short_by_a_kill_only_repeats_that_case(tmp_path, bundle_3d):
    scans = write_scans(tmp_path / "in", 2)
    out = tmp_path / "out"
    bundle = load_bundle(bundle_3d)
    predict_paths(bundle, scans, out, PredictOptions(tta=False))
    journal = out / JOURNAL_FOLDER / "journal-0.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    again = predict_paths(bundle, scans, out, PredictOptions(tta=False), resume=True)
    assert again["resumed"] == 1 and len(again["cases"]) == 2


def test_temporaries_of_other_cases_are_not_touched(tmp_path):
    (tmp_path / ".scan1.nii.gz.x1.nii.gz").write_bytes(b"")
    (tmp_path / ".scan10.nii.gz.x2.nii.gz").write_bytes(b"")  # another case, maybe another rank writing now
    (tmp_path / ".scan1_uncertainty.nii.gz.x3.nii.gz").write_bytes(b"")
    cohort.remove_temporaries(tmp_path / "scan1.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scan10.nii.gz.x2.nii.gz"]


def _medseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg", *args]


def test_kill_9_during_a_cohort_then_resume_loses_nothing_and_leaves_nothing_half_written(tmp_path, bundle_3d):
    scans = write_scans(tmp_path / "in", 10, shape=(40, 64, 64))
    out = tmp_path / "out"
    command = _medseg("predict", str(bundle_3d), str(tmp_path / "in"), "-o", str(out), "--no-progress", "--no-tta",
                      "--resume")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / JOURNAL_FOLDER / "journal-0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the cohort ended before it could be killed: make the cases larger"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(journal.read_text().splitlines())
    assert 2 <= done_before < 10 and not (out / MANIFEST_FILE).exists()
    finished = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["resumed"] >= 2 and not manifest["failed"]
    assert sorted(c["case"] for c in manifest["cases"]) == [p.name.split(".")[0] for p in scans]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.is_file()]  # no temporaries left
    for case in manifest["cases"]:
        assert read_image(case["output"]).shape == (40, 64, 64)  # every mask complete and readable


@pytest.mark.skipif(sys.platform != "linux", reason="gloo ranks are exercised on Linux")
def test_torchrun_ranks_split_the_inputs_and_join_the_manifest(tmp_path, bundle_3d):
    """Two ranks of ``python -m medseg predict`` with the environment torchrun gives them."""
    scans = write_scans(tmp_path / "in", 5)
    out = tmp_path / "out"
    command = _medseg("predict", str(bundle_3d), str(tmp_path / "in"), "-o", str(out), "--no-progress", "--no-tta")
    outputs = run_ranks(command, timeout=300)
    parts = [json.loads((out / f"predictions.part-{rank}.json").read_text()) for rank in (0, 1)]
    assert [len(p["cases"]) for p in parts] == [3, 2]  # every second input from each rank
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert sorted(c["case"] for c in manifest["cases"]) == [p.name.split(".")[0] for p in scans]
    assert manifest["world_size"] == 2
    assert [o.count("case(s) predicted") for o, _ in outputs] == [1, 0]  # rank 0 reports the whole cohort
