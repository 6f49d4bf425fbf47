"""Demo data: checksum-verified archive fetching from a mirror, safe extraction, the synthetic phantom set."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from medseg.data import check_dataset, discover_dataset, fetch
from medseg.errors import MedsegError


def _task_tar(path, task="Task04_Hippocampus", evil=False):
    with tarfile.open(path, "w") as tar:
        for name in (f"{task}/imagesTr/a.nii.gz", f"{task}/dataset.json"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if evil:
            info = tarfile.TarInfo("../escape.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"!"))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mirror_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = _task_tar(mirror / "Task04_Hippocampus.tar")
    monkeypatch.setitem(fetch.MSD_TASKS, "Task04_Hippocampus", ("http://unused", md5))
    folder = fetch.fetch_msd_task("Task04_Hippocampus", tmp_path / "cache", mirror=mirror)
    assert (folder / "imagesTr" / "a.nii.gz").read_bytes() == b"x"
    assert fetch.fetch_msd_task("Task04_Hippocampus", tmp_path / "cache") == folder  # cached: no second fetch


def test_checksum_mismatch_deletes_the_archive(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _task_tar(mirror / "Task04_Hippocampus.tar")
    monkeypatch.setitem(fetch.MSD_TASKS, "Task04_Hippocampus", ("http://unused", "0" * 32))
    with pytest.raises(MedsegError, match="MD5"):
        fetch.fetch_msd_task("Task04_Hippocampus", tmp_path / "cache", mirror=mirror)
    assert not (tmp_path / "cache" / "Task04_Hippocampus.tar").exists()


def test_archive_members_outside_the_folder_are_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = _task_tar(mirror / "Task04_Hippocampus.tar", evil=True)
    monkeypatch.setitem(fetch.MSD_TASKS, "Task04_Hippocampus", ("http://unused", md5))
    with pytest.raises(MedsegError, match="not a readable task archive"):
        fetch.fetch_msd_task("Task04_Hippocampus", tmp_path / "cache", mirror=mirror)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()


def test_unreachable_download_fails_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.MSD_TASKS, "Task04_Hippocampus", ("http://127.0.0.1:9/Task04.tar", "0" * 32))
    with pytest.raises(MedsegError, match="could not download"):
        fetch.fetch_msd_task("Task04_Hippocampus", tmp_path / "cache", timeout=5)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_phantom_set_is_a_valid_decathlon_data_set(tmp_path):
    root = fetch.make_phantom_dataset(tmp_path / "phantom", cases=6, shape=(16, 20, 16))
    report = check_dataset(discover_dataset(root), workers=1)
    assert report.ok and len(discover_dataset(root).cases) == 6
    assert discover_dataset(root).split["test"]
