"""The run report: one self-contained HTML file with the data, plan, training curves, metrics and example cases;
and the comparison of two bundles on the same cases (``medseg compare``)."""

from medseg.report.build import build_report
from medseg.report.compare import compare_bundles

__all__ = ["build_report", "compare_bundles"]
