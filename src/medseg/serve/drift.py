"""Input drift: does a scan look like the training data? Compared with the bundle's ``drift_reference.json``
(foreground intensity percentiles per channel, training spacing range; see :mod:`medseg.bundle`), or for a bundle
written before that file existed with the run's ``fingerprint.json`` when the bundle still sits in its run folder,
else with what the plan holds (the CT clip window, the target spacing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.bundle import Bundle, read_drift_reference
from medseg.io import Image

SPACING_FACTOR = 3.0  # a spacing more than 3x finer or coarser than any training spacing is drift


@dataclass
class DriftReference:
    source: str  # "drift_reference.json", "fingerprint.json" (an older bundle in its run folder), "plan" or "none"
    intervals: list[tuple[float, float] | None]  # per channel: expected foreground intensity range
    spacing_low: list[float]
    spacing_high: list[float]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> DriftReference:
        plan = bundle.plan
        found = read_drift_reference(bundle.folder)
        if found is not None:
            data, source = found
            intervals = [(float(low), float(high)) for low, high in data["foreground_percentiles"]]
            return cls(source, intervals, [float(s) for s in data["spacing_min"]],
                       [float(s) for s in data["spacing_max"]])
        intervals = [(n.clip_low, n.clip_high) if n.scheme == "ct" and n.clip_low is not None
                     and n.clip_high is not None else None for n in plan.normalization]
        source = "plan" if any(intervals) else "none"
        return cls(source, intervals, list(plan.target_spacing), list(plan.target_spacing))

    def check(self, image: Image, labels: np.ndarray) -> dict[str, Any]:
        """``{"flag", "reasons", "reference", "channels"}``: the foreground median of each channel (predicted
        labels > 0) against the training foreground's [0.5, 99.5] percentiles, and the spacing range."""
        reasons: list[str] = []
        channels = []
        foreground = labels > 0
        for c, interval in enumerate(self.intervals[: image.channels]):
            values = image.array[c][foreground] if foreground.any() else image.array[c].ravel()
            median = float(np.median(values)) if values.size else float("nan")
            entry: dict[str, Any] = {"channel": c, "median": round(median, 4),
                                     "region": "predicted foreground" if foreground.any() else "whole image"}
            if interval is not None:
                entry["expected"] = [round(interval[0], 4), round(interval[1], 4)]
                if not interval[0] <= median <= interval[1]:
                    reasons.append(f"channel {c} intensity {median:.4g} outside the training range "
                                   f"[{interval[0]:.4g}, {interval[1]:.4g}]")
            channels.append(entry)
        spacing = list(image.spacing_zyx)
        if len(spacing) == len(self.spacing_low):
            for axis, (s, low, high) in enumerate(zip(spacing, self.spacing_low, self.spacing_high)):
                if s < low / SPACING_FACTOR or s > high * SPACING_FACTOR:
                    reasons.append(f"spacing {s:.3g} mm on axis {axis} far from the training "
                                   f"{low:.3g}..{high:.3g} mm")
        return {"flag": bool(reasons), "reasons": reasons, "reference": self.source, "channels": channels}
