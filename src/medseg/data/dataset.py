"""Finding the cases of a data set on disk: the 2D folder layout and the Decathlon / nnU-Net layout.

2D folder layout::

    DATA/images/<case>.png|jpg|tif   (grey or RGB; or <case>_0000.png, <case>_0001.png ... one file a channel)
    DATA/masks/<case>.png            (integer label map, 0 = background)
    DATA/split.json                  (optional: {"train": [...], "test": [...]})
    DATA/dataset.json                (optional: {"labels": {...}, "channel_names": {...}})

Decathlon / nnU-Net v2 layout::

    DATA/dataset.json                (labels, channel_names or modality, file_ending)
    DATA/imagesTr/<case>_0000.nii.gz ...  or  <case>.nii.gz (4D: channels last in the file)
    DATA/labelsTr/<case>.nii.gz
    DATA/imagesTs/...                (optional, unlabelled)

Discovery never reads pixel data; problems with the file set (a mask without an image, an image without a
mask, duplicate case ids) are collected as :class:`Problem` s for ``medseg check`` instead of stopping at the
first one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.case import Case, Problem
from medseg.data.label_values import consecutive_labels, to_class_values
from medseg.data.layout_checks import check_training_list, missing_channel_files
from medseg.data.regions import Region, is_region_labels, load_regions_file, parse_regions
from medseg.errors import DatasetError, ImageReadError
from medseg.io import CHANNEL_FILE, IMAGE_SUFFIXES, Image, image_stem, image_suffix, read_image

IGNORED_NAMES = {".DS_Store", "Thumbs.db", "dataset.json", "split.json", "splits.json"}


@dataclass
class Dataset:
    """A discovered data set: labelled cases, unlabelled test images, label and channel names, split."""

    root: Path
    layout: str  # "2d-folder" or "decathlon"
    cases: list[Case]
    test_images: list[Case] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    channel_names: dict[int, str] = field(default_factory=dict)
    split: dict[str, list[str]] | None = None
    problems: list[Problem] = field(default_factory=list)
    name: str = ""
    regions: list[Region] = field(default_factory=list)  # region-based classes (see medseg.data.regions); [] if none
    # class value -> value on disk where the declared label values are not 0..K (see consecutive_labels); {} if they are
    label_values: dict[int, int] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


def discover_dataset(root: str | Path, labels: dict[int, str] | None = None,
                     regions_file: str | Path | None = None) -> Dataset:
    """Find the layout and cases of the data set in ``root``.

    ``labels`` overrides dataset.json's label names; ``regions_file`` (a JSON file with region ``labels`` and
    ``regions_class_order``, see :mod:`medseg.data.regions`) makes the classes regions without editing the data set.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError("does not exist", root, "check the path to the data set folder")
    if not root.is_dir():
        raise DatasetError("is not a folder", root, "give the data set folder, not a file")
    if (root / "imagesTr").is_dir():
        dataset = _discover_decathlon(root)
    elif (root / "images").is_dir():
        dataset = _discover_2d_folder(root)
    else:
        entries = [p.name for p in root.iterdir() if p.name not in IGNORED_NAMES]
        what = "is empty" if not entries else "has neither imagesTr/ (Decathlon layout) nor images/ (2D layout)"
        raise DatasetError(
            what, root, "put images in images/ and masks in masks/, or use imagesTr/, labelsTr/, dataset.json"
        )
    if labels:
        dataset.labels = dict(labels)
    if regions_file is not None:
        named, dataset.regions = load_regions_file(regions_file)
        # values the regions file leaves unnamed keep dataset.json's names
        dataset.labels = {v: dataset.labels.get(v, name) if name == f"label {v}" else name for v, name in named.items()}
    if dataset.labels and not dataset.regions:
        dataset.labels, dataset.label_values = consecutive_labels(dataset.labels)
    if not dataset.cases and not dataset.problems:
        raise DatasetError("holds no images", root, "add image files to images/ or imagesTr/")
    dataset.split = _read_split(root, dataset)
    return dataset


def parse_labels(text: str) -> dict[int, str]:
    """Parse ``--labels`` text: ``"0:background,1:liver,2:tumour"`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return _labels_from_json(json.loads(text), Path("--labels"))
    labels: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, _, name = item.partition(":")
        if not value.strip().isdigit() or not name.strip():
            raise DatasetError(
                f"cannot parse label '{item}'", "--labels", "write labels as 0:background,1:liver,2:tumour"
            )
        labels[int(value)] = name.strip()
    return labels


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"is not valid JSON ({exc})", path, "fix or remove the file") from None
    if not isinstance(data, dict):
        raise DatasetError("must hold a JSON object", path, "see the Decathlon dataset.json format")
    return data


def _labels_from_meta(meta: dict, path: Path) -> tuple[dict[int, str], list[Region]]:
    """``dataset.json``'s labels: plain names, or nnU-Net v2 regions (a name mapped to a list of values)."""
    if "labels" not in meta:
        return {}, []
    raw = meta["labels"]
    if not isinstance(raw, dict):
        raise DatasetError("'labels' is not an object", path, 'write "labels": {"0": "background", "1": "liver"}')
    if is_region_labels(raw):
        return parse_regions(raw, meta.get("regions_class_order"), path)
    return _labels_from_json(raw, path), []


def _labels_from_json(raw: dict, path: Path) -> dict[int, str]:
    """Accept MSD style ``{"0": "background"}`` and nnU-Net v2 style ``{"background": 0}``."""
    labels: dict[int, str] = {}
    for key, value in raw.items():
        if str(key).isdigit() and isinstance(value, str):
            labels[int(key)] = value
        elif isinstance(value, int):
            labels[value] = str(key)
        else:
            raise DatasetError(
                f"label entry {key!r}: {value!r} is not understood",
                path,
                'write labels as {"0": "background", "1": "liver"}',
            )
    return dict(sorted(labels.items()))


def _channel_names(meta: dict) -> dict[int, str]:
    raw = meta.get("channel_names") or meta.get("modality") or {}
    return {int(k): str(v) for k, v in raw.items() if str(k).isdigit()}


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name not in IGNORED_NAMES and not p.name.startswith(".") and (p.is_file() or p.is_dir())
    )


def _group_channels(files: list[Path], folder: Path, problems: list[Problem]) -> dict[str, list[Path]]:
    """Group image files into cases: ``<case>_0000.ext`` channel files when every file is named so."""
    unknown = [f for f in files if f.is_file() and image_suffix(f) not in IMAGE_SUFFIXES]
    for f in unknown:
        problems.append(Problem(str(f), "is not an image file medseg reads", "remove it or convert it"))
    files = [f for f in files if f not in unknown]
    stems = [image_stem(f) for f in files]
    channel_naming = bool(stems) and all(CHANNEL_FILE.match(s) for s in stems)
    groups: dict[str, list[Path]] = defaultdict(list)
    for f, stem in zip(files, stems):
        case_id = CHANNEL_FILE.match(stem)["case"] if channel_naming else stem  # type: ignore[index]
        groups[case_id].append(f)
    for case_id, group in groups.items():
        if channel_naming:
            numbers = sorted(int(CHANNEL_FILE.match(image_stem(f))["channel"]) for f in group)  # type: ignore
            if numbers != list(range(len(numbers))):
                problems.append(Problem(
                    str(folder / f"{case_id}_*"), f"channel files {numbers} are not 0..{len(numbers) - 1}",
                    "name channel files <case>_0000, <case>_0001, ... without gaps", case_id,
                ))
            group.sort()
        elif len(group) > 1:
            problems.append(Problem(
                ", ".join(str(f) for f in group), f"duplicate case id '{case_id}' ({len(group)} files)",
                "keep one file per case id, or rename the others", case_id,
            ))
            del group[1:]  # check the first; the duplicates are reported, not stacked as channels
    return dict(groups)


def _pair_cases(
    images: dict[str, list[Path]], masks: list[Path], image_dir: Path, mask_dir: Path, problems: list[Problem]
) -> list[Case]:
    masks_by_id: dict[str, list[Path]] = defaultdict(list)
    for m in masks:
        masks_by_id[image_stem(m)].append(m)
    cases = []
    for case_id, files in sorted(images.items()):
        found = masks_by_id.get(case_id, [])
        if not found:
            problems.append(Problem(
                str(files[0]), f"has no mask in {mask_dir.name}/",
                f"add {mask_dir.name}/{case_id}{image_suffix(files[0]) if mask_dir.name == 'labelsTr' else '.png'}"
                " or remove the image", case_id,
            ))
        elif len(found) > 1:
            problems.append(Problem(
                ", ".join(map(str, found)), f"several masks for case '{case_id}'", "keep exactly one", case_id
            ))
        cases.append(Case(case_id, files, found[0] if found else None))
    for case_id, found in sorted(masks_by_id.items()):
        if case_id not in images:
            problems.append(Problem(
                str(found[0]), f"is a mask without an image in {image_dir.name}/",
                "add the image or remove the mask", case_id,
            ))
    return cases


def _discover_2d_folder(root: Path) -> Dataset:
    problems: list[Problem] = []
    meta = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    images = _group_channels(_image_files(root / "images"), root / "images", problems)
    if not (root / "masks").is_dir():
        problems.append(Problem(str(root / "masks"), "is missing", "put one label map per image in masks/"))
    cases = _pair_cases(images, _image_files(root / "masks"), root / "images", root / "masks", problems)
    labels, regions = _labels_from_meta(meta, root / "dataset.json")
    return Dataset(root, "2d-folder", cases, [], labels, _channel_names(meta), None, problems,
                   meta.get("name", root.name), regions)


def _discover_decathlon(root: Path) -> Dataset:
    problems: list[Problem] = []
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = _read_json(meta_path)
    else:
        meta = {}
        problems.append(Problem(str(meta_path), "is missing", "write dataset.json with labels and channel_names"))
    images = _group_channels(_image_files(root / "imagesTr"), root / "imagesTr", problems)
    cases = _pair_cases(images, _image_files(root / "labelsTr"), root / "imagesTr", root / "labelsTr", problems)
    test_groups = _group_channels(_image_files(root / "imagesTs"), root / "imagesTs", problems)
    test_images = [Case(cid, files) for cid, files in sorted(test_groups.items())]
    labels, regions = _labels_from_meta(meta, meta_path)
    if meta and "labels" not in meta:
        problems.append(Problem(str(meta_path), "has no 'labels'", 'add "labels": {"0": "background", ...}'))
    expected = meta.get("numTraining")
    if isinstance(expected, int) and expected != len(cases):
        problems.append(Problem(
            str(meta_path), f"says numTraining {expected} but imagesTr/ holds {len(cases)} cases",
            "fix numTraining or add the missing cases",
        ))
    problems.extend(check_training_list(meta, root, meta_path))
    channel_names = _channel_names(meta)
    problems.extend(missing_channel_files(cases + test_images, channel_names))
    return Dataset(root, "decathlon", cases, test_images, labels, channel_names, None, problems,
                   meta.get("name", root.name), regions)


def _read_split(root: Path, dataset: Dataset) -> dict[str, list[str]] | None:
    path = root / "split.json"
    if not path.is_file():
        return None
    data = _read_json(path)
    known = set(dataset.case_ids)
    split: dict[str, list[str]] = {}
    for key in ("train", "test"):
        ids = data.get(key, [])
        if not isinstance(ids, list):
            raise DatasetError(f"'{key}' must be a list of case ids", path, 'write {"train": [...], "test": [...]}')
        split[key] = [str(i) for i in ids]
        unknown = [i for i in split[key] if i not in known]
        if unknown:
            dataset.problems.append(Problem(
                str(path), f"'{key}' names {len(unknown)} unknown case(s): {', '.join(unknown[:5])}",
                "fix the case ids or add the cases",
            ))
    overlap = sorted(set(split["train"]) & set(split["test"]))
    if overlap:
        dataset.problems.append(Problem(
            str(path), f"{len(overlap)} case(s) are in both train and test: {', '.join(overlap[:5])}",
            "a case must be in one list only",
        ))
    return split


def load_case_image(case: Case) -> Image:
    """Read a case's channel files and stack them channels first; they must share one grid."""
    parts = [read_image(f) for f in case.image_files]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for f, part in zip(case.image_files[1:], parts[1:]):
        diff = first.geometry_difference(part)
        if diff:
            raise ImageReadError(
                f"channel grid differs from {case.image_files[0].name}: {diff}", f,
                "resample all channels of a case onto one grid",
            )
    return first.with_array(np.concatenate([p.array for p in parts], axis=0))


def load_case_label(case: Case, label_values: dict[int, int] | None = None) -> Image:
    """Read a case's label map as a one-channel integer image; ``label_values`` (class -> disk value, see
    :func:`consecutive_labels`) turns the values on disk into class values."""
    if case.label_file is None:
        raise DatasetError(f"case '{case.case_id}' has no label", case.image_files[0], "add its mask")
    label = read_image(case.label_file)
    if label.channels != 1:
        if label.meta.get("format") == "raster" and label.channels in (3, 4):
            raise ImageReadError(
                f"is an {label.channels}-channel colour image, not a label map", case.label_file,
                "save masks as single-channel integer images (0 = background)",
            )
        raise ImageReadError(f"has {label.channels} channels", case.label_file, "a label map has one channel")
    if label_values:
        label = label.with_array(to_class_values(label.array, label_values))
    return label
