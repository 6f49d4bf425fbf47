"""Data sets on disk: discovery of the layouts, checking, splits."""

from medseg.data.check import CaseStats, CheckReport, analyse_case, check_dataset
from medseg.data.dataset import (
    Case,
    Dataset,
    Problem,
    discover_dataset,
    load_case_image,
    load_case_label,
    parse_labels,
)
from medseg.data.regions import Region, load_regions_file, paint_regions, region_masks
from medseg.data.split import Fold, Splits, load_splits, make_splits, write_splits

__all__ = [
    "Case", "CaseStats", "CheckReport", "Dataset", "Fold", "Problem", "Region", "Splits", "analyse_case",
    "check_dataset", "discover_dataset", "load_case_image", "load_case_label", "load_regions_file", "load_splits",
    "make_splits", "paint_regions", "parse_labels", "region_masks", "write_splits",
]
