"""The run report: one self-contained HTML file with the data, plan, training curves, metrics and example cases."""

from medseg.report.build import build_report

__all__ = ["build_report"]
