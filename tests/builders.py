"""Builders shared by the tests: generated data sets, tiny plans and bundles, synthetic DICOM series, the real data
sets under ../shared/data (skipping when absent), and small helpers. Test modules import from here, never from
each other."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.io import Image, write_image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MR_T1POST_UID = "1.3.6.1.4.1.14519.5.2.1.4429.7055.250698293053013179878447218670"


def shared(name: str) -> Path:
    """Path of a real data set under ../shared/data; skips the test when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {name} not found at {path} (../shared/data is only on developer/CI machines)")
    return path


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Generated images: bright blobs on noise, with their label maps


def blob_case(rng: np.random.Generator, shape: tuple[int, ...], classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """An image with one bright box per class and its label map (class k brighter for higher k)."""
    label = np.zeros(shape, np.uint8)
    image = rng.normal(0, 0.3, size=shape).astype(np.float32)
    for k in range(1, classes + 1):
        size = [max(2, s // 4) for s in shape]
        start = [int(rng.integers(0, s - z)) for s, z in zip(shape, size)]
        box = tuple(slice(a, a + z) for a, z in zip(start, size))
        label[box] = k
        image[box] += 1.0 + k
    return image, label


def make_3d_dataset(root: Path, cases: int = 6, shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        image, label = blob_case(rng, shape)
        write_image(Image.from_array(image[None] * 100 + 300, spacing=(1.0, 1.0, 1.5)),
                    root / "imagesTr" / f"blob_{i:03d}_0000.nii.gz")
        write_image(Image.from_array(label[None], spacing=(1.0, 1.0, 1.5)), root / "labelsTr" / f"blob_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Blobs3D", "labels": {"background": 0, "small": 1, "bright": 2}, "channel_names": {"0": "MRI"},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}


def make_region_dataset(root: Path, cases: int = 6, shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0,
                        declare_regions: bool = True) -> Path:
    """Two-channel volumes with nested boxes (label 1 around 2 around 3), BraTS-like, listed MONAI-style.

    ``dataset.json`` lists each case's channel files as a list, and with ``declare_regions`` declares the nested
    regions whole (1-3), core (2-3) and enhancing (3), painted back in that order (so painting is exact).
    """
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(cases):
        label = np.zeros(shape, np.uint8)
        centre = [int(rng.integers(s // 3, s - s // 3)) for s in shape]
        for value, half in ((1, 5), (2, 3), (3, 1)):
            label[tuple(slice(max(c - half, 0), c + half + 1) for c in centre)] = value
        flair = rng.normal(0, 0.3, size=shape).astype(np.float32) + (label > 0) * 2.0
        t1c = rng.normal(0, 0.3, size=shape).astype(np.float32) + (label == 3) * 3.0 + (label == 2) * 1.0
        names = []
        for channel, array in enumerate((flair, t1c)):
            name = f"imagesTr/tumour_{i:03d}_{channel:04d}.nii.gz"
            write_image(Image.from_array(array[None], spacing=(1.0, 1.0, 1.0)), root / name)
            names.append(f"./{name}")
        label_name = f"labelsTr/tumour_{i:03d}.nii.gz"
        write_image(Image.from_array(label[None], spacing=(1.0, 1.0, 1.0)), root / label_name)
        training.append({"image": names, "label": f"./{label_name}"})
    labels = REGION_LABELS if declare_regions else {"background": 0, "edema": 1, "core": 2, "enhancing": 3}
    meta = {"name": "Tumours", "channel_names": {"0": "FLAIR", "1": "T1c"}, "labels": labels,
            "numTraining": cases, "file_ending": ".nii.gz", "training": training}
    if declare_regions:
        meta["regions_class_order"] = [1, 2, 3]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_2d_dataset(root: Path, cases: int = 6, shape: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(cases):
        image, label = blob_case(rng, shape, classes=1)
        grey = np.clip(image * 60 + 60, 0, 255).astype(np.uint8)
        write_image(Image.from_array(grey[None]), root / "images" / f"img{i:02d}.png")
        write_image(Image.from_array(label[None]), root / "masks" / f"img{i:02d}.png")
    return root


# Tiny plans and bundles (imports of torch and the trainer stay inside: modules that only need data stay light)
def cpu_machine():
    """A fixed 2-core CPU without native bf16, so plans do not depend on the machine that runs the tests."""
    from medseg.plan import Machine

    return Machine("cpu", cores=2, memory_bytes=24 << 30, bf16=False)


def tiny_plan(data: Path, path: Path, **changes) -> Path:
    """The plan of ``data`` on :func:`cpu_machine`, shrunk to widths 4-16 and batch 2 (seconds to train)."""
    from medseg.data import check_dataset, discover_dataset
    from medseg.plan import fingerprint_from_report, make_plan

    report = check_dataset(discover_dataset(data), workers=1)
    plan = make_plan(fingerprint_from_report(report), machine=cpu_machine())
    plan.features = [4, 8, 16]
    plan.strides = [[2] * plan.dim, [2] * plan.dim]
    plan.batch_size = 2
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan.save(path)


def train_tiny_bundle(root: Path, maker) -> Path:
    """A data set made by ``maker(folder)``, trained for two steps per fold on 3 folds; returns the bundle."""
    import torch

    from medseg.train import TrainConfig, TrainRequest, train

    data = maker(root / "data")
    request = TrainRequest(data=data, run_dir=root / "run", plan_path=tiny_plan(data, root / "plan.json"),
                           cache_root=root / "cache", workers=1, progress_bar=False, folds=3)
    torch.set_num_threads(1)
    return train(request, TrainConfig(epochs=1, steps_per_epoch=2, validations=1))


def run_cli(*args: str) -> int:
    """``medseg ARGS`` in this process; its exit code (errors raise, as typer's standalone_mode=False does)."""
    from medseg.cli import app

    return app(list(args), standalone_mode=False) or 0


# Synthetic DICOM series (no real data needed) and SimpleITK as an independent reader
def sitk_series(folder: Path) -> sitk.Image:
    """The same folder read by SimpleITK/GDCM, an independent reader to compare against."""
    reader = sitk.ImageSeriesReader()
    series_id = reader.GetGDCMSeriesIDs(str(folder))[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


def assert_same_as_sitk(image: Image, reference: sitk.Image, check_array: bool = True) -> None:
    assert image.shape == sitk.GetArrayViewFromImage(reference).shape
    np.testing.assert_allclose(image.spacing, reference.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.direction, reference.GetDirection(), atol=1e-3)
    if check_array:
        np.testing.assert_array_equal(image.array[0], sitk.GetArrayFromImage(reference))


def assert_orthonormal(image: Image) -> None:
    matrix = image.direction_matrix
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(3), atol=1e-5)


OBLIQUE_IOP = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), -np.sin(0.3))


def write_slice(
    path: Path,
    pixels: np.ndarray,
    position: tuple[float, float, float],
    instance: int,
    series_uid: str,
    orientation: tuple[float, ...] = OBLIQUE_IOP,
    slope: float | None = None,
    intercept: float | None = None,
) -> None:
    """One single-frame MR slice with the geometry attributes a series reader needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesDescription = "synthetic"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = ["0.5", "0.75"]  # row spacing (y), column spacing (x)
    ds.SliceThickness = "2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if slope is not None:
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept or 0)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path, n: int = 4, gap: float = 2.0, series_uid: str | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` slices of 6x5 pixels along the oblique normal, written in reverse order under shuffled names.

    Returns the stored volume (Z, Y, X) in ascending slice order and the position of the first slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    iop = np.asarray(OBLIQUE_IOP)
    normal = np.cross(iop[:3], iop[3:])
    first = np.array([-10.0, 20.0, 30.0])
    volume = np.arange(n * 6 * 5, dtype=np.int16).reshape(n, 6, 5)
    for k in reversed(range(n)):
        position = first + k * gap * normal
        write_slice(
            folder / f"img{(7 * k) % n:03d}_{k}.dcm", volume[k], tuple(position), k + 1, series_uid, **kwargs
        )
    return volume, first


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"{prefix}{file.name}")
    return archive


def count_zip_opens(monkeypatch: pytest.MonkeyPatch) -> list:
    """Patch ``zipfile.ZipFile`` to record each archive opened; returns the (live) list of what was opened."""
    opened: list = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, *args, **kwargs) -> None:
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", CountingZipFile)
    return opened


# Small valid files of every format the readers take (the limit and fuzz tests mutate or inflate them)
def write_small_images(folder: Path) -> dict[str, Path]:
    """One small valid file per reader, keyed by format: nii, nii.gz, nrrd, mha, png, tif, dcm (a one-slice
    series alone in its folder) and zip (a three-slice series)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    volume = Image.from_array(rng.integers(0, 200, (1, 3, 4, 5)).astype(np.int16), spacing=(0.5, 0.75, 2.0))
    plane = Image.from_array(rng.integers(0, 255, (1, 6, 7)).astype(np.uint8))
    files = {name: write_image(volume, folder / f"small.{name}") for name in ("nii", "nii.gz", "nrrd", "mha")}
    files.update({name: write_image(plane, folder / f"small.{name}") for name in ("png", "tif")})
    write_series(folder / "one_slice", n=1)
    files["dcm"] = next((folder / "one_slice").iterdir())
    write_series(folder / "series", n=3)
    files["zip"] = zip_folder(folder / "series", folder / "series.zip")
    return files


def run_ranks(command: list[str], world_size: int = 2, timeout: float = 900) -> list[tuple[str, str]]:
    """Run ``command`` as ``world_size`` ranks with the environment torchrun gives each (env:// rendezvous on
    loopback, one thread each); asserts every rank exits 0 and returns their (stdout, stderr).

    torchrun's whole contract with the script is that environment; launching the ranks directly saves the
    launcher's own torch import, which costs a minute or more on a loaded 2-core CI machine.
    """
    import os
    import subprocess

    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world_size),
                  "LOCAL_WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **rendezvous, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(world_size)]
    try:
        outputs = [rank.communicate(timeout=timeout) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    for rank, (stdout, stderr) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return outputs


# A PACS side for the DICOM node tests: an axial CT series as pydicom datasets, a non-image object, and a real
# Orthanc started on loopback ports with its own storage (skipping where Debian's orthanc is not installed)
def ct_series_datasets(n: int = 6, shape: tuple[int, int] = (24, 20), gap: float = 2.0, shift: float = 0.0,
                       seed: int = 0) -> list[pydicom.Dataset]:
    """``n`` axial CT slices (a bright box on noise, HU rescale, patient and study attributes) as pydicom datasets
    with file meta, in slice order. ``shift`` moves slice ``k`` by ``k * shift`` mm along y: a gantry tilt."""
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    volume = rng.normal(0, 20, size=(n, *shape)) + 1024
    volume[n // 4: 3 * n // 4 + 1, shape[0] // 4: shape[0] // 2, shape[1] // 3: 2 * shape[1] // 3] += 400
    datasets = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"ct{k}", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "MEDSEG-TEST-1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20240101", "120000", "1", "", ""
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription, ds.SeriesNumber = "CT", "ABDOMEN", "portal", 3
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-10.0, -20.0 + k * shift, -30.0 + k * gap]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], gap
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.clip(volume[k], 0, 4000).astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets


def write_datasets(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    """Save datasets as ``folder/im<k>.dcm`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"im{k:03d}.dcm" for k in range(len(datasets))]
    for ds, path in zip(datasets, paths):
        ds.save_as(path, enforce_file_format=True)
    return paths


def sr_dataset(study_uid: str | None = None) -> pydicom.Dataset:
    """A minimal Basic Text SR: a DICOM object without pixels, which a segmentation node must refuse."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("sr", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "SR", "MEDSEG-TEST-1", "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    return ds


class Orthanc:
    """A real Orthanc (Debian's ``Orthanc`` binary) with a temporary config and storage, on free loopback ports;
    ``modalities`` maps a name to ``[AET, host, port]``. Use as a context manager; skips when not installed."""

    def __init__(self, folder: Path, modalities: dict[str, list], aet: str = "ORTHANC", dicomweb: bool = False) -> None:
        import shutil

        binary = shutil.which("Orthanc")
        if binary is None:
            pytest.skip("Orthanc is not installed (apt-get install orthanc; .ci/run does it as root)")
        plugins = [str(p) for p in Path("/usr/share/orthanc/plugins").glob("libOrthancDicomWeb.so*")]
        if dicomweb and not plugins:
            pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
        self.binary, self.folder, self.aet = binary, folder, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = self.url + "/dicom-web"
        config = {"Name": "medseg-test", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
                  "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomModalities": modalities, "Plugins": plugins[:1] if dicomweb else [],
                  "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"}, "DicomScuTimeout": 10, "StableAge": 1,
                  "ConcurrentJobs": 1, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
                  "HttpTimeout": 30}
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.process = None

    def __enter__(self) -> Orthanc:
        import subprocess
        import time

        self.log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except Exception:
                self.process.kill()
        self.log.close()

    def request(self, method: str, path: str, body: object = None) -> bytes:
        import urllib.request

        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.read()

    def get(self, path: str) -> object:
        content = self.request("GET", path)
        try:
            return json.loads(content)
        except ValueError:
            return content

    def post(self, path: str, body: object) -> object:
        return json.loads(self.request("POST", path, body) or b"null")

    def find(self, level: str, query: dict) -> list[dict]:
        return self.post("/tools/find", {"Level": level, "Query": query, "Expand": True})


def wait_for(check, timeout: float, what: str):
    """Poll ``check()`` until it gives something truthy (returned), or fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


# Model updates (fine-tuning, compare): data sets derived from another, bundles altered by construction
def shifted_copy(source: Path, target: Path, spacing: tuple[float, ...] | None = None, scale: float = 1.0,
                 offset: float = 0.0, relabel: dict[int, int] | None = None, labels: dict[str, int] | None = None,
                 ) -> Path:
    """A copy of the decathlon-style data set ``source`` with every image on ``spacing`` (x, y, z; default
    kept) and intensities ``image * scale + offset``; ``relabel`` renumbers mask values and ``labels`` replaces
    ``dataset.json``'s labels."""
    from medseg.io import read_image

    for folder in ("imagesTr", "labelsTr"):
        (target / folder).mkdir(parents=True)
        for path in sorted((source / folder).glob("*.nii.gz")):
            image = read_image(path)
            array = image.array
            if folder == "imagesTr":
                array = array * scale + offset
            elif relabel:
                array = np.vectorize(lambda v: relabel.get(int(v), int(v)))(array).astype(array.dtype)
            write_image(Image.from_array(array, spacing=tuple(spacing or image.spacing)), target / folder / path.name)
    meta = json.loads((source / "dataset.json").read_text())
    if labels is not None:
        meta["labels"] = labels
    (target / "dataset.json").write_text(json.dumps(meta))
    return target


def zero_output_bundle(bundle: Path, target: Path) -> Path:
    """A copy of ``bundle`` whose every fold predicts background everywhere (output convolutions zeroed, the
    background bias 1), without ``lineage.json``: an old-style bundle, its version computed on load."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(bundle, target)
    (target / "lineage.json").unlink(missing_ok=True)
    for weights in target.glob("fold_*.safetensors"):
        state = load_file(str(weights))
        for name in [n for n in state if n.startswith("output_block.")]:
            state[name] = state[name] * 0
            if name.endswith("bias"):
                state[name][0] = 1.0
        save_file(state, str(weights))
    return target


# The web viewer in headless Chromium, against a real service on loopback
def chromium():
    """playwright's sync API and the chromium on PATH, or skip saying what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[dev]')")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium; .ci/run does this)")
    return sync_playwright, executable


class ViewerService:
    """``create_app`` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ViewerService:
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def log_in(page, url: str, token: str) -> None:
    page.goto(url)
    page.locator("#token-input").fill(token)
    page.locator("#token-form button[type=submit]").click()


def segment_in_viewer(page, model: str, generation: int, file: Path | None = None, example: str | None = None) -> None:
    page.locator("#model").select_option(model)
    if file is not None:
        page.locator("#file").set_input_files(str(file))
    if example is not None:
        page.locator("#example").select_option(example)
    page.locator("#run").click()
    page.wait_for_selector(f"#canvas[data-generation='{generation}']", timeout=300_000)
