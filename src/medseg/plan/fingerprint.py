"""The data set fingerprint: what planning needs to know, computed from ``medseg check``'s single read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medseg.data.check import CheckReport
from medseg.data.regions import Region


@dataclass
class ChannelIntensity:
    """Foreground intensity statistics of one channel over the whole data set."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float
    min: float
    max: float


@dataclass
class Fingerprint:
    dataset_name: str
    dim: int
    channels: int
    channel_names: dict[int, str]
    labels: dict[int, str]
    num_cases: int
    spacings: list[list[float]]  # per case, array order
    shapes: list[list[int]]  # per case, array order
    intensities: list[ChannelIntensity]
    class_voxels_median: dict[int, float] = field(default_factory=dict)
    integer_images: bool = False
    # per label (background included), median over cases of voxels / boundary voxels times the finest spacing:
    # about half the structure's thickness in mm (see medseg.data.check.boundary_counts)
    class_depth_mm_median: dict[int, float] = field(default_factory=dict)
    # per label, median over cases of its centre of mass per axis (fraction of the extent, array order)
    class_centroid_median: dict[int, list[float]] = field(default_factory=dict)
    regions: list[Region] = field(default_factory=list)  # region-based classes of the data set, if any
    label_values: dict[int, int] = field(default_factory=dict)  # class value -> value on disk (see Plan)
    # median over cases of the share of the image inside the box of its content (medseg.data.check.content_mask)
    content_box_fraction_median: float = 1.0

    @property
    def median_spacing(self) -> list[float]:
        return np.median(np.asarray(self.spacings), axis=0).tolist()

    @property
    def median_shape(self) -> list[float]:
        return np.median(np.asarray(self.shapes), axis=0).tolist()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channel_names"] = {str(k): v for k, v in self.channel_names.items()}
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        data["class_voxels_median"] = {str(k): v for k, v in self.class_voxels_median.items()}
        data["class_depth_mm_median"] = {str(k): v for k, v in self.class_depth_mm_median.items()}
        data["class_centroid_median"] = {str(k): v for k, v in self.class_centroid_median.items()}
        data["regions"] = [r.to_dict() for r in self.regions]
        data["label_values"] = {str(k): v for k, v in self.label_values.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        data = dict(data)
        data["channel_names"] = {int(k): v for k, v in data["channel_names"].items()}
        data["labels"] = {int(k): v for k, v in data["labels"].items()}
        data["class_voxels_median"] = {int(k): v for k, v in data.get("class_voxels_median", {}).items()}
        data["class_depth_mm_median"] = {int(k): v for k, v in data.get("class_depth_mm_median", {}).items()}
        data["class_centroid_median"] = {int(k): v for k, v in data.get("class_centroid_median", {}).items()}
        data["intensities"] = [ChannelIntensity(**c) for c in data["intensities"]]
        data["regions"] = [Region.from_dict(r) for r in data.get("regions", [])]
        data["label_values"] = {int(k): int(v) for k, v in data.get("label_values", {}).items()}
        return cls(**data)


def fingerprint_from_report(report: CheckReport) -> Fingerprint:
    """Summarise a clean check report: spacings, shapes, foreground intensities per channel, class sizes."""
    stats = report.stats
    channels = stats[0].channels
    intensities = []
    for c in range(channels):
        sample = np.concatenate([np.asarray(s.foreground_sample[c], np.float64) for s in stats
                                 if len(s.foreground_sample) > c] or [np.zeros(1)])
        intensities.append(ChannelIntensity(
            mean=float(sample.mean()), std=float(sample.std()),
            percentile_00_5=float(np.percentile(sample, 0.5)), percentile_99_5=float(np.percentile(sample, 99.5)),
            min=float(min(s.intensity_min[c] for s in stats)), max=float(max(s.intensity_max[c] for s in stats)),
        ))
    labels = dict(report.dataset.labels) or {
        v: ("background" if v == 0 else f"label_{v}") for v in sorted({v for s in stats for v in s.label_counts})
    }
    class_voxels = {
        v: float(np.median([s.label_counts.get(v, 0) for s in stats])) for v in labels if v != 0
    }
    depth = {}
    for v in labels:
        ratios = [s.label_counts[v] / s.label_boundary[v] * min(s.spacing) for s in stats
                  if s.label_counts.get(v, 0) > 0 and s.label_boundary.get(v, 0) > 0]
        if ratios:
            depth[v] = float(np.median(ratios))
    centroid = {v: np.median([s.label_centroid[v] for s in stats if v in s.label_centroid], axis=0).tolist()
                for v in labels if any(v in s.label_centroid for s in stats)}
    return Fingerprint(
        dataset_name=report.dataset.name or report.dataset.root.name,
        dim=stats[0].dim,
        channels=channels,
        channel_names=dict(report.dataset.channel_names),
        labels=labels,
        num_cases=len(stats),
        spacings=[list(s.spacing) for s in stats],
        shapes=[list(s.shape) for s in stats],
        intensities=intensities,
        class_voxels_median=class_voxels,
        class_depth_mm_median=depth,
        class_centroid_median=centroid,
        regions=list(report.dataset.regions),
        label_values=dict(report.dataset.label_values),
        content_box_fraction_median=float(np.median([s.content_box_fraction for s in stats])),
    )
