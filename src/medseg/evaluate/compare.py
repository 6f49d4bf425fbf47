"""Two models scored on the same cases: paired differences per class with a paired bootstrap confidence interval.

The statistics alone (no prediction, no torch): :func:`compare_evaluations` takes the two
:class:`~medseg.evaluate.metrics.EvaluationResult` of the same cases; ``medseg.report.compare.compare_bundles``
predicts with both bundles, evaluates and calls it (predicting belongs to a higher layer than evaluating).

For each class and metric (Dice, HD95) the cases where both values are finite are paired, the mean of B - A is
the difference, and its 95 % interval comes from resampling the cases with replacement (``resamples`` times,
seeded, so the figures repeat). B is *significantly worse* on a class when the Dice interval lies entirely below
0; HD95 intervals are reported, not judged (an empty mask gives no distance, so its pairs are fewer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medseg.evaluate.metrics import EvaluationResult

COMPARED_METRICS = ("dice", "hd95_mm")
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass
class PairedDifference:
    """One class, one metric: means of A and B over the paired cases, the mean of B - A and its interval."""

    label_value: int
    label: str
    metric: str
    cases: int  # pairs with both values finite
    mean_a: float | None
    mean_b: float | None
    difference: float | None  # mean of B - A
    ci_low: float | None
    ci_high: float | None

    @property
    def b_worse(self) -> bool:
        """B significantly worse: for Dice the whole interval below 0 (HD95 is not judged)."""
        return self.metric == "dice" and self.ci_high is not None and self.ci_high < 0


@dataclass
class ComparisonResult:
    """What ``medseg compare`` found: per class differences, the cases where B is worse, the verdict."""

    bundle_a: str
    bundle_b: str
    version_a: str
    version_b: str
    cases: list[str]
    differences: list[PairedDifference]
    worse_cases: list[dict[str, Any]]  # per case where B's mean Dice is below A's: case, dice_a, dice_b, difference
    resamples: int = RESAMPLES
    seed: int = 0
    confidence: float = CONFIDENCE
    notes: list[str] = field(default_factory=list)

    @property
    def worse_classes(self) -> list[str]:
        return [d.label for d in self.differences if d.b_worse]

    @property
    def b_worse(self) -> bool:
        return bool(self.worse_classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worse_classes"], data["b_significantly_worse"] = self.worse_classes, self.b_worse
        return data


def paired_bootstrap(differences: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean of ``differences`` (one per case) over case resamples."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _values(result: EvaluationResult, metric: str) -> dict[tuple[str, int], float]:
    return {(row["case"], int(row["label_value"])): _number(row.get(metric)) for row in result.rows}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _mean(values: np.ndarray) -> float | None:
    return _finite_or_none(float(np.mean(values))) if len(values) else None


def compare_evaluations(a: EvaluationResult, b: EvaluationResult, bundle_a: str = "A", bundle_b: str = "B",
                        version_a: str = "", version_b: str = "", resamples: int = RESAMPLES,
                        seed: int = 0) -> ComparisonResult:
    """Paired differences (B - A) on the cases and classes both evaluations hold."""
    cases = [c for c in a.cases if c in set(b.cases)]
    labels = {v: name for v, name in sorted(a.labels.items()) if v in b.labels}
    notes = []
    if set(a.labels) != set(b.labels):
        notes.append(f"classes scored by only one model are left out: A {sorted(a.labels)}, B {sorted(b.labels)}")
    differences = []
    for value, name in labels.items():
        for metric in COMPARED_METRICS:
            va, vb = _values(a, metric), _values(b, metric)
            pairs = np.array([(va.get((c, value), np.nan), vb.get((c, value), np.nan)) for c in cases],
                             dtype=np.float64).reshape(-1, 2)
            pairs = pairs[np.isfinite(pairs).all(axis=1)]
            diff = pairs[:, 1] - pairs[:, 0]
            low, high = paired_bootstrap(diff, resamples, seed)
            differences.append(PairedDifference(value, name, metric, int(len(pairs)), _mean(pairs[:, 0]),
                                                _mean(pairs[:, 1]), _mean(diff), _finite_or_none(low),
                                                _finite_or_none(high)))
    return ComparisonResult(bundle_a, bundle_b, version_a, version_b, cases, differences,
                            _worse_cases(a, b, cases, list(labels)), resamples, seed, CONFIDENCE, notes)


def _worse_cases(a: EvaluationResult, b: EvaluationResult, cases: list[str], labels: list[int]) -> list[dict]:
    """Cases where B's mean Dice over the classes is below A's, the largest drop first."""
    va, vb = _values(a, "dice"), _values(b, "dice")
    worse = []
    for case in cases:
        da = np.array([va.get((case, v), np.nan) for v in labels])
        db = np.array([vb.get((case, v), np.nan) for v in labels])
        both = np.isfinite(da) & np.isfinite(db)
        if not both.any():
            continue
        mean_a, mean_b = float(da[both].mean()), float(db[both].mean())
        if mean_b < mean_a - 1e-9:
            per_class = {str(v): round(float(db[i] - da[i]), 6) for i, v in enumerate(labels) if both[i]}
            worse.append({"case": case, "dice_a": mean_a, "dice_b": mean_b, "difference": mean_b - mean_a,
                          "per_class": per_class})
    return sorted(worse, key=lambda w: (w["difference"], w["case"]))
