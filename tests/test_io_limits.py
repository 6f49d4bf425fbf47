"""Readers check the size a header declares before they allocate (``medseg.io.limits``).

Small crafted files claim huge images: each read must end in an ImageReadError that names the file and the limit,
with bounded memory. The crafted files are read in one child process, which reports its peak RSS after each read.
Real data must still read under the default limits, and the limits can be raised and lowered.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from builders import shared, write_series, write_small_images, zip_folder
from medseg.errors import ImageReadError, MedsegError
from medseg.io import Image, ReadLimits, read_image, write_image

GIB = 1 << 30

# ---- crafted files: tiny headers that claim huge images ---------------------------------------------------


def nifti_header(shape: tuple[int, ...], version: int = 1) -> bytes:
    """A NIfTI-1/-2 header (plus the 4-byte extension flag) for uint8 data of ``shape``, with no data."""
    header = nib.Nifti1Header() if version == 1 else nib.Nifti2Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header["vox_offset"] = header.sizeof_hdr + 4
    return header.binaryblock + b"\0" * 4


def gzip_bomb_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A .nii.gz that really inflates to the size it declares: the header, then gzip members of 8 MiB of zeros."""
    zeros = gzip.compress(bytes(8 << 20), compresslevel=9)
    members = -(-int(np.prod(shape)) // (8 << 20))
    path.write_bytes(gzip.compress(nifti_header(shape)) + zeros * members)
    return path


def zip_bomb(path: Path, member_bytes: int = GIB) -> Path:
    """A zip with one member of ``member_bytes`` zeros, deflated as it is written in chunks."""
    chunk = bytes(4 << 20)
    with (zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
          archive.open("bomb.dcm", "w", force_zip64=True) as member):
        for _ in range(member_bytes // len(chunk)):
            member.write(chunk)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 2x2 PNG whose IHDR is patched to ``width`` x ``height`` (CRC recomputed)."""
    PILImage.fromarray(np.zeros((2, 2), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def bmp_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 2x2 BMP whose info header is patched to ``width`` x ``height``."""
    PILImage.fromarray(np.zeros((2, 2), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[18:26] = struct.pack("<ii", width, height)
    path.write_bytes(bytes(data))
    return path


def mha_claiming(path: Path, sizes: str, compressed: bool) -> Path:
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = {compressed}\n"
              f"DimSize = {sizes}\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + (zlib.compress(bytes(1 << 16)) if compressed else bytes(64)))
    return path


def nrrd_detached(path: Path, sizes: str) -> Path:
    """A .nhdr naming a detached raw data file of 10 bytes."""
    (path.parent / "tiny.raw").write_bytes(bytes(10))
    path.write_text(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: raw\ndata file: tiny.raw\n")
    return path


def dicom_claiming(folder: Path, rows: int, columns: int) -> Path:
    """A one-slice series whose header claims ``rows`` x ``columns`` 16-bit pixels (the data stays 6x5)."""
    write_series(folder, n=1)
    path = next(folder.iterdir())
    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.save_as(path)
    return path


def build_crafted(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file to read, the text its error must contain: the limit that refuses it)."""
    def nii(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return {
        "nii.gz 32767^3": (nii("claims.nii.gz", gzip.compress(nifti_header((32767,) * 3))), "ReadLimits.max_voxels"),
        "nifti-2 100000^3": (nii("claims2.nii", nifti_header((100000,) * 3, 2) + bytes(900)), "ReadLimits.max_voxels"),
        "nii 1500^3": (nii("claims1500.nii", nifti_header((1500,) * 3)), "ReadLimits.max_voxels"),
        "nii 1000^3 truncated": (nii("claims1000.nii", nifti_header((1000,) * 3)), "the file holds only 352"),
        "nii.gz bomb 2 GB": (gzip_bomb_nifti(folder / "bomb.nii.gz", (1600, 1600, 800)), "ReadLimits.max_expansion"),
        "zip 1 GiB member": (zip_bomb(folder / "bomb.zip"), "ReadLimits.max_expansion"),
        "png 20000^2": (png_claiming(folder / "claims.png", 20000, 20000), "ReadLimits.max_expansion"),
        "bmp 20000^2": (bmp_claiming(folder / "claims.bmp", 20000, 20000), "MAX_IMAGE_PIXELS"),
        "mha 100000^3": (mha_claiming(folder / "claims.mha", "100000 100000 100000", False), "ReadLimits.max_voxels"),
        "mha zlib 1024^3": (mha_claiming(folder / "bomb.mha", "1024 1024 1024", True), "ReadLimits.max_expansion"),
        "nhdr detached 1000^3": (nrrd_detached(folder / "claims.nhdr", "1000 1000 1000"),
                                 "its data file tiny.raw holds only 10"),
        "dicom 65535^2": (dicom_claiming(folder / "dicom_huge", 65535, 65535), "ReadLimits.max_voxels"),
        "dicom 20000^2 truncated": (dicom_claiming(folder / "dicom_big", 20000, 20000), "the file holds only"),
    }


# One child reads every crafted file and reports each outcome with its peak RSS so far (bytes). The peak is the
# kernel's VmHWM of the child's own memory: ru_maxrss would also count the parent's (a large pytest process), as
# Linux carries the high-water mark of the forking process across exec.
CHILD = """
import json, sys
from medseg.errors import MedsegError
from medseg.io import read_image

def peak_rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

results = {}
for path in json.loads(sys.argv[1]):
    try:
        outcome = ["read", str(read_image(path).array.shape)]
    except MedsegError as error:
        outcome = [type(error).__name__, str(error)]
    except BaseException as error:
        outcome = ["crash", f"{type(error).__name__}: {error}"]
    results[path] = outcome + [peak_rss()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, list]]:
    cases = build_crafted(tmp_path_factory.mktemp("crafted"))
    paths = [str(path) for path, _ in cases.values()]
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: (path, expected, results[str(path)]) for name, (path, expected) in cases.items()}


CASES = ["nii.gz 32767^3", "nifti-2 100000^3", "nii 1500^3", "nii 1000^3 truncated", "nii.gz bomb 2 GB",
         "zip 1 GiB member", "png 20000^2", "bmp 20000^2", "mha 100000^3", "mha zlib 1024^3", "nhdr detached 1000^3",
         "dicom 65535^2", "dicom 20000^2 truncated"]


@pytest.mark.parametrize("name", CASES)
def test_crafted_file_is_refused_from_its_header(name: str, crafted: dict) -> None:
    path, expected, (kind, message, peak_rss) = crafted[name]
    assert kind == "ImageReadError", f"{name}: {kind} {message}"
    assert str(path) in message and expected in message, message
    assert peak_rss < GIB, f"{name}: peak RSS {peak_rss / 2**20:.0f} MiB"


def test_crafted_cases_are_all_tested(crafted: dict) -> None:
    assert set(crafted) == set(CASES)


def test_huge_png_is_refused_in_process_as_well(tmp_path: Path) -> None:
    """Pillow's own DecompressionBombError never escapes: 20000^2 trips our check first, 15000^2 Pillow's."""
    with pytest.raises(ImageReadError, match="max_expansion"):
        read_image(png_claiming(tmp_path / "a.png", 20000, 20000))
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image(bmp_claiming(tmp_path / "b.bmp", 15000, 15000))


# ---- 16-bit colour ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_keeps_16_bits(tmp_path: Path, channels: int) -> None:
    values = (np.arange(5 * 7 * channels).reshape(5, 7, channels) * 1000 + 300).astype(np.uint16)
    path = tmp_path / "colour16.png"
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), str(path))
    image = read_image(path)
    assert image.array.dtype == np.uint16 and image.array.shape == (3, 5, 7)  # alpha dropped, as for 8 bits
    np.testing.assert_array_equal(image.array, np.moveaxis(values[..., :3], -1, 0))


def test_16_bit_grey_png_still_reads_with_pillow(tmp_path: Path) -> None:
    values = (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)
    write_image(Image.from_array(values[None]), tmp_path / "grey16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.png").array[0], values)


# ---- the limits can be lowered and raised -----------------------------------------------------------------


def test_lowered_max_voxels_refuses_every_format(tmp_path: Path) -> None:
    for kind, path in write_small_images(tmp_path).items():
        assert read_image(path).array.size <= 90, kind
        with pytest.raises(ImageReadError, match="ReadLimits.max_voxels") as caught:
            read_image(path, limits=ReadLimits(max_voxels=10))
        assert path.name in str(caught.value) or str(path.parent) in str(caught.value), kind


def test_expansion_limit_can_be_raised_for_a_genuine_mask(tmp_path: Path) -> None:
    mask = np.zeros((1, 40, 64, 64), np.uint8)
    mask[0, 10:20, 20:30, 20:30] = 1
    path = write_image(Image.from_array(mask), tmp_path / "mask.nii.gz")
    strict = ReadLimits(expansion_floor_bytes=1024)
    with pytest.raises(ImageReadError, match="ReadLimits.max_expansion"):
        read_image(path, limits=strict)
    raised = ReadLimits(expansion_floor_bytes=1024, max_expansion=100_000)
    np.testing.assert_array_equal(read_image(path, limits=raised).array, mask)


def test_zip_member_count_and_total_are_limited(tmp_path: Path) -> None:
    write_series(tmp_path / "series", n=3)
    archive = zip_folder(tmp_path / "series", tmp_path / "series.zip")
    assert read_image(archive).shape == (3, 6, 5)
    with pytest.raises(ImageReadError, match="ReadLimits.max_zip_members"):
        read_image(archive, limits=ReadLimits(max_zip_members=2))
    with pytest.raises(ImageReadError, match="ReadLimits.max_zip_bytes"):
        read_image(archive, limits=ReadLimits(max_zip_bytes=1000))


def test_series_total_is_limited(tmp_path: Path) -> None:
    write_series(tmp_path / "series", n=3)  # 3 slices of 6x5: 90 voxels in all, 30 per slice
    with pytest.raises(ImageReadError, match="headers of 3 files declare") as caught:
        read_image(tmp_path / "series", limits=ReadLimits(max_voxels=60))
    assert "ReadLimits.max_voxels" in str(caught.value)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_voxels"):
        ReadLimits(max_voxels=0)


def test_decoder_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zlib's error on a corrupt deflate stream, and a MemoryError, become ImageReadErrors naming the file."""
    path = write_image(Image.from_array(np.arange(4000, dtype=np.int16).reshape(1, 10, 20, 20)), tmp_path / "a.nii.gz")
    data = bytearray(path.read_bytes())
    data[10] = 0xFF  # the first deflate block now has the reserved block type
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="cannot read NIfTI header") as caught:
        read_image(path)
    assert str(path) in str(caught.value)

    def no_memory(*args, **kwargs):
        raise MemoryError

    path = write_image(Image.from_array(np.ones((1, 4, 4, 4), np.int16)), tmp_path / "b.nii.gz")
    monkeypatch.setattr(nib, "load", no_memory)
    with pytest.raises(ImageReadError, match="ran out of memory") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


# ---- resampling to the plan's spacing ---------------------------------------------------------------------


def tiny_plan(target_spacing: list[float]):
    from medseg.plan import ChannelNorm, Plan

    return Plan(dataset_name="t", dim=3, data_dim=3, channels=1, channel_names={0: "CT"}, labels={0: "bg", 1: "fg"},
                target_spacing=target_spacing, normalization=[ChannelNorm("zscore")], patch_size=[8, 8, 8],
                batch_size=1, crop_to_nonzero=False)


def test_resampling_to_a_huge_shape_is_refused() -> None:
    from medseg.preprocess import preprocess_image

    image = Image.from_array(np.ones((1, 20, 20, 20), np.float32), spacing=(50.0, 50.0, 50.0))
    with pytest.raises(MedsegError, match="2000, 2000, 2000") as caught:
        preprocess_image(image, tiny_plan([0.5, 0.5, 0.5]), case_id="case_7")
    assert "ReadLimits.max_voxels" in str(caught.value) and "case_7" in str(caught.value)
    with pytest.raises(MedsegError, match="over the limit of 1,000"):
        preprocess_image(image, tiny_plan([25.0, 25.0, 25.0]), max_voxels=1000)
    data, _, props = preprocess_image(image, tiny_plan([25.0, 25.0, 25.0]))
    assert data.shape == (1, 40, 40, 40) and props.resampled_shape == [40, 40, 40]


# ---- real data still reads under the default limits -------------------------------------------------------


def test_real_nifti_reads_under_default_limits() -> None:
    ct = read_image(shared("ircadb_ct") / "imagesTr" / "ircadb_01_0000.nii.gz")
    assert ct.shape[1:] == (512, 512)
    for folder in ("labelsTr", "masks_per_structure/ircadb_01"):
        for path in sorted((shared("ircadb_ct") / folder).glob("*.nii.gz"))[:3]:
            assert read_image(path).shape[1:] == (512, 512), path
    brats = sorted((shared("brats_2ch") / "imagesTr").glob("*.nii.gz"))[0]
    assert read_image(brats).shape == (155, 240, 240)
    assert read_image(next((shared("msd_hippocampus") / "labelsTr").glob("*.nii.gz"))).channels == 1


def test_real_dicom_folders_and_zips_read_under_default_limits(tmp_path: Path) -> None:
    for name, sub, slices in (("dicom_ct_series_totalseg", "dicom", 20), ("dicom_ct_liver_seg", "ct", 3)):
        folder = shared(name) / sub
        archive = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.iterdir()):
                zf.write(file, file.name)
        image = read_image(folder)
        assert image.shape == (slices, 512, 512)
        np.testing.assert_array_equal(read_image(archive).array, image.array)


def test_real_nrrd_and_png_read_under_default_limits() -> None:
    for path in sorted((shared("dicom_ct_liver_seg") / "nrrd").glob("*.nrrd")):
        assert read_image(path).ndim == 3
    for name in ("jsrt_scr", "drive"):
        root = shared(name)
        for path in sorted((root / "masks").glob("*.png"))[:2] + sorted((root / "images").glob("*"))[:2]:
            assert read_image(path).ndim == 2, path
