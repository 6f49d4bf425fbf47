"""Region-based labels, as nnU-Net v2 has them: overlapping classes made of several label values.

BraTS scores whole tumour (labels 1, 2, 3, 4), tumour core (1, 3, 4) and enhancing tumour (4), not the four labels
one by one. ``dataset.json`` says so by mapping a name to a list of values, with ``regions_class_order`` giving the
label painted for each region when predictions are turned back into one label map::

    "labels": {"background": 0, "whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing": [4]},
    "regions_class_order": [2, 1, 4]

A network for regions has one sigmoid output per region (they overlap, so not one softmax); its label map paints
the regions in the listed order, each over the ones before (:func:`paint_regions`). Scores are per region,
computed on label maps (:func:`region_masks`), so a prediction file and a reference file score the same way.

The same object can come from a separate JSON file (``--regions FILE``) holding ``labels`` and
``regions_class_order``, so a data set is trained on regions without editing its ``dataset.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DatasetError

REGIONS_FIX = ('write "labels": {"background": 0, "whole tumour": [1, 2, 3, 4], ...} with one '
               '"regions_class_order" value per region')


@dataclass(frozen=True)
class Region:
    """One scored, trained class made of several label values; ``paint`` is its label in a predicted map."""

    name: str
    values: tuple[int, ...]
    paint: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values), "paint": self.paint}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        return cls(str(data["name"]), tuple(int(v) for v in data["values"]), int(data["paint"]))


def is_region_labels(raw: dict[str, Any]) -> bool:
    """Whether a ``dataset.json`` ``labels`` object declares regions (some name maps to a list of values)."""
    return any(isinstance(value, list) for value in raw.values())


def parse_regions(raw: dict[str, Any], order: Any, source: str | Path) -> tuple[dict[int, str], list[Region]]:
    """The label values (named) and the regions of an nnU-Net v2 region ``labels`` object.

    ``raw`` maps names to a value or a list of values (``{"background": 0, "whole tumour": [1, 2, 3]}``);
    ``order`` is ``regions_class_order``, one painted label per region in the order the regions are listed.
    Label values that no single-value entry names are called ``label K``.
    """
    named: dict[int, str] = {}
    regions_raw: list[tuple[str, tuple[int, ...]]] = []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DatasetError(f"label {name!r}: {value!r} is not a label value or a list of them", source,
                               REGIONS_FIX)
        if values == [0]:
            named[0] = str(name)
            continue
        if 0 in values:
            raise DatasetError(f"region {name!r} includes the background value 0", source, REGIONS_FIX)
        if len(values) == 1 and not isinstance(value, list):
            named.setdefault(values[0], str(name))
        regions_raw.append((str(name), tuple(sorted(set(values)))))
    if not isinstance(order, list) or len(order) != len(regions_raw) or \
            not all(isinstance(v, int) and v > 0 for v in order):
        raise DatasetError(f"regions_class_order {order!r} must list one label value > 0 for each of the "
                           f"{len(regions_raw)} regions", source, REGIONS_FIX)
    regions = [Region(name, values, int(paint)) for (name, values), paint in zip(regions_raw, order)]
    for region in regions:
        if region.paint not in region.values:
            raise DatasetError(f"region {region.name!r} paints label {region.paint}, which is not one of its values "
                               f"{list(region.values)}", source, REGIONS_FIX)
    values = sorted({0, *(v for r in regions for v in r.values)})
    labels = {v: named.get(v, "background" if v == 0 else f"label {v}") for v in values}
    return labels, regions


def load_regions_file(path: str | Path) -> tuple[dict[int, str], list[Region]]:
    """Labels and regions from a JSON file holding ``labels`` and ``regions_class_order`` (``--regions``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read the regions file ({exc})", path, REGIONS_FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict) or not is_region_labels(data["labels"]):
        raise DatasetError("holds no region labels (a name mapped to a list of values)", path, REGIONS_FIX)
    return parse_regions(data["labels"], data.get("regions_class_order"), path)


def region_masks(labels: np.ndarray, regions: list[Region]) -> np.ndarray:
    """Boolean ``(R, *spatial)`` masks, one per region, of an integer label map ``(*spatial)``."""
    labels = np.asarray(labels)
    return np.stack([np.isin(labels, region.values) for region in regions]) if regions else \
        np.zeros((0, *labels.shape), bool)


def paint_regions(masks: np.ndarray, regions: list[Region], dtype: Any = np.uint8) -> np.ndarray:
    """One label map from ``(R, *spatial)`` region masks: each region's ``paint`` over the regions before it."""
    masks = np.asarray(masks)
    labels = np.zeros(masks.shape[1:], dtype)
    for mask, region in zip(masks, regions):
        labels[mask.astype(bool, copy=False)] = region.paint
    return labels
