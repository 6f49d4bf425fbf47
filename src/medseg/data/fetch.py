"""Getting the demo data: the official MSD Hippocampus archive (checksum-verified), or a synthetic phantom set.

Nothing here runs unless asked: ``medseg demo`` calls :func:`fetch_msd_task` only when no local copy was found,
and it accepts a local mirror (a folder holding ``Task04_Hippocampus.tar`` or the extracted task folder, or
another URL), for sites without internet access.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io import Image, write_image

# The archives MONAI's DecathlonDataset downloads, with its MD5 checksums.
MSD_TASKS = {
    "Task04_Hippocampus": ("https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
                           "9d24dba78a72977dbd1d2e110310f31b"),
}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, timeout: float) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as handle:  # noqa: S310
            shutil.copyfileobj(response, handle, length=1 << 20)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise MedsegError(f"could not download ({exc})", url,
                          "check the network, or pass --mirror with a folder holding the archive") from None
    part.replace(target)


def _extract(archive: Path, dest: Path) -> None:
    """Extract refusing members that would land outside ``dest`` (absolute paths, ``..``, links)."""
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedsegError(f"is not a readable task archive ({exc})", archive, "delete it and download again") from None
    inner = next((p for p in tmp.iterdir() if p.is_dir()), tmp)
    inner.replace(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def fetch_msd_task(task: str, cache_dir: str | Path, mirror: str | Path | None = None,
                   timeout: float = 30.0) -> Path:
    """The extracted task folder in ``cache_dir``, downloading and verifying the archive if needed."""
    if task not in MSD_TASKS:
        raise MedsegError(f"unknown task {task!r}", fix=f"use one of {', '.join(MSD_TASKS)}")
    url, md5 = MSD_TASKS[task]
    cache_dir = Path(cache_dir)
    dest = cache_dir / task
    if (dest / "imagesTr").is_dir():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / f"{task}.tar"
    if mirror is not None and not str(mirror).startswith(("http://", "https://")):
        local = Path(mirror)
        if (local / task / "imagesTr").is_dir():
            return local / task
        candidate = local / f"{task}.tar" if local.is_dir() else local
        if not candidate.is_file():
            raise MedsegError(f"holds neither {task}.tar nor {task}/imagesTr", local, "check the mirror path")
        shutil.copyfile(candidate, archive)
    elif not archive.exists():
        _download(str(mirror) if mirror else url, archive, timeout)
    actual = _md5(archive)
    if actual != md5:
        archive.unlink()
        raise MedsegError(f"has MD5 {actual}, expected {md5}: a corrupt or different file (deleted)", archive,
                          "download it again")
    _extract(archive, dest)
    return dest


def make_phantom_dataset(root: str | Path, cases: int = 24, shape: tuple[int, int, int] = (32, 40, 32),
                         seed: int = 0) -> Path:
    """A small synthetic MRI-like 3D set in the Decathlon layout: two touching ellipsoids on a noisy head.

    Only for trying medseg without data; say so wherever its figures are shown.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.asarray(shape, dtype=np.float32)[:, None, None, None] / 2
    for i in range(cases):
        head = (((grid - centre) / (centre * 0.9)) ** 2).sum(0) < 1
        image = rng.normal(0, 0.15, size=shape).astype(np.float32) + head * 1.0
        label = np.zeros(shape, np.uint8)
        middle = centre[:, 0, 0, 0] + rng.normal(0, 1.5, size=3)
        radii = np.asarray(shape, dtype=np.float32) * rng.uniform(0.12, 0.18, size=3)
        for value, offset in ((1, -0.5), (2, 0.5)):
            c = middle + np.asarray([0, offset * radii[1] * 1.6, 0])
            blob = (((grid - c[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
            label[blob & (label == 0)] = value
            image[blob] += 0.6 * value
        write_image(Image.from_array(image[None] * 200, spacing=(1.0, 1.0, 1.0)),
                    root / "imagesTr" / f"phantom_{i:03d}.nii.gz")
        write_image(Image.from_array(label[None], spacing=(1.0, 1.0, 1.0)),
                    root / "labelsTr" / f"phantom_{i:03d}.nii.gz")
    ids = [f"phantom_{i:03d}" for i in range(cases)]
    (root / "dataset.json").write_text(json.dumps({
        "name": "SyntheticPhantom", "description": "synthetic, not medical data",
        "labels": {"background": 0, "anterior": 1, "posterior": 2}, "channel_names": {"0": "MRI"},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    test = ids[: max(2, cases // 5)]
    (root / "split.json").write_text(json.dumps({"train": ids[len(test):], "test": test}))
    return root
