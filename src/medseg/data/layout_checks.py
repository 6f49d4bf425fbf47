"""Checks of a Decathlon/nnU-Net layout beyond finding its files: the ``dataset.json`` training list and the
channel files each case should have."""

from __future__ import annotations

from pathlib import Path

from medseg.data.case import Case, Problem
from medseg.io import CHANNEL_FILE, image_stem, image_suffix


def missing_channel_files(cases: list[Case], channel_names: dict[int, str]) -> list[Problem]:
    """A case of channel files (``<case>_0000``, ...) lacking some of the channels ``dataset.json`` names: the
    file that is missing, not only a channel count that differs."""
    problems = []
    for case in cases:
        numbers = [CHANNEL_FILE.match(image_stem(f)) for f in case.image_files]
        if not channel_names or not all(numbers):
            continue
        have = {int(m["channel"]) for m in numbers if m}
        first = case.image_files[0]
        for channel in sorted(set(channel_names) - have):
            name = f"{case.case_id}_{channel:04d}{image_suffix(first)}"
            problems.append(Problem(str(first.parent / name), f"is missing: channel {channel} "
                                    f"({channel_names[channel]}) of case '{case.case_id}'",
                                    "add the file, or remove the case's other channel files", case.case_id))
    return problems


def check_training_list(meta: dict, root: Path, meta_path: Path) -> list[Problem]:
    """Problems of ``dataset.json``'s ``training`` list: MSD's ``{"image": "x", "label": "y"}`` entries, or the
    MONAI/Auto3DSeg datalist form where ``image`` is a list of channel files. Listed files must exist."""
    training = meta.get("training", [])
    if not isinstance(training, list):
        return [Problem(str(meta_path), "'training' is not a list", 'write "training": [{"image": ..., "label": ...}]')]
    problems = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict):
            problems.append(Problem(str(meta_path), f"training entry {index} is not an object",
                                    'write {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}'))
            continue
        for key in ("image", "label"):
            value = entry.get(key)
            paths = value if isinstance(value, list) else [value]
            for rel in paths:
                if rel is None:
                    continue
                if not isinstance(rel, str):
                    problems.append(Problem(str(meta_path), f"training entry {index}: {key} {rel!r} is not a file "
                                            "name", "give a path relative to the data set folder, or a list of them"))
                elif not (root / rel).exists() and not channel_file_exists(root / rel):
                    problems.append(Problem(str(meta_path), f"lists {rel}, which does not exist",
                                            "fix the 'training' list or add the file"))
    return problems


def channel_file_exists(path: Path) -> bool:
    """MSD lists ``imagesTr/x.nii.gz`` even where the files are ``x_0000.nii.gz``."""
    stem, suffix = image_stem(path), image_suffix(path)
    return (path.parent / f"{stem}_0000{suffix}").exists()
