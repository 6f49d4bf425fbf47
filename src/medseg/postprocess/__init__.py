"""Post-processing of predicted label maps: connected components, small objects, holes, probability thresholds,
and the nnU-Net-style choice of which of them to apply, saved as ``postprocess.json`` in the bundle."""

from medseg.postprocess.anatomy import choose_from_anatomy
from medseg.postprocess.components import DEFAULT_MAX_COMPONENTS, measure_components
from medseg.postprocess.config import (
    ClassPostprocess,
    PostprocessConfig,
    load_postprocessing,
    save_postprocessing,
    with_overrides,
)
from medseg.postprocess.ops import (
    apply_postprocessing,
    apply_thresholds,
    fill_holes,
    keep_largest_component,
    remove_small_objects,
)
from medseg.postprocess.select import choose_postprocessing, choose_region_postprocessing

__all__ = [
    "DEFAULT_MAX_COMPONENTS",
    "ClassPostprocess",
    "PostprocessConfig",
    "apply_postprocessing",
    "apply_thresholds",
    "choose_from_anatomy",
    "choose_postprocessing",
    "choose_region_postprocessing",
    "fill_holes",
    "keep_largest_component",
    "load_postprocessing",
    "measure_components",
    "remove_small_objects",
    "save_postprocessing",
    "with_overrides",
]
