"""Small generated data sets for tests: bright blobs on noise, with their label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.io import Image, write_image


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
