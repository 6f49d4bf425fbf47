"""Post-processing chosen with no validation fold, from the training masks' anatomy (medseg.postprocess.anatomy)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from builders import shared
from medseg.postprocess import PostprocessConfig, apply_postprocessing, choose_from_anatomy


def organ_and_tumours(speck: bool) -> np.ndarray:
    """Label 1: one 1000-voxel organ (with a 1-voxel speck when ``speck``); label 2: two separate 8-voxel tumours."""
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[14:16, 14:16, 14:16] = 2
    labels[14:16, 2:4, 14:16] = 2
    if speck:
        labels[18, 18, 2] = 1
    return labels


def test_a_label_in_one_piece_in_every_case_gets_keep_largest_and_a_label_in_pieces_does_not():
    config = choose_from_anatomy([organ_and_tumours(False), organ_and_tumours(True)],
                                 {0: "background", 1: "organ", 2: "tumour", 3: "never labelled"})
    assert config.for_class(1).keep_largest  # the speck holds 0.1 % of the organ: still one piece
    assert not config.for_class(2).keep_largest  # two tumours of equal size
    assert not config.for_class(3).keep_largest  # never seen: no evidence
    assert not config.keep_largest_foreground  # never tried for labels: organs touching in training need not
    by_class = {d["class"]: d for d in config.decisions}
    assert by_class[1] == {"step": "keep_largest", "class": 1, "kept": True, "basis": "training masks",
                           "largest_share_min": round(1000 / 1001, 6), "cases": 2}
    assert by_class[2]["largest_share_min"] == 0.5 and by_class[3]["cases"] == 0
    # the file round-trips with these decisions (they have no Dice: nothing was validated)
    assert PostprocessConfig.from_dict(config.to_dict()) == config

    # applied to a prediction with a false-positive blob of the organ, the blob goes and the tumours stay
    prediction = organ_and_tumours(False)
    prediction[16:19, 8:11, 8:11] = 1
    cleaned = apply_postprocessing(prediction, config, None)
    assert np.array_equal(cleaned, organ_and_tumours(False))


def test_a_speck_above_the_share_tolerance_rejects_the_step():
    labels = organ_and_tumours(False)
    labels[16:19, 14:19, 2:5] = 1  # 45 voxels apart: the largest piece holds 1000 / 1045 < 0.99
    assert not choose_from_anatomy([labels], {1: "organ", 2: "tumour"}).for_class(1).keep_largest


def test_region_plans_choose_only_the_foreground_step():
    tumour = np.zeros((16, 16, 16), dtype=np.uint8)
    tumour[4:10, 4:10, 4:10] = 2  # oedema around
    tumour[6:8, 6:8, 6:8] = 4  # an enhancing core: nested regions, one piece of foreground
    config = choose_from_anatomy([tumour], {1: "necrosis", 2: "oedema", 4: "enhancing"}, regions=True)
    assert config.keep_largest_foreground and config.classes == {}
    assert [d["class"] for d in config.decisions] == ["foreground"]
    tumour[12:14, 12:14, 12:14] = 2  # a second focus holding 8 of 224 voxels
    assert not choose_from_anatomy([tumour], {2: "oedema"}, regions=True).keep_largest_foreground


def test_real_ircadb_masks_choose_keep_largest_for_organs_not_tumours():
    """3D-IRCADb case 1's liver mask has 151 detached specks; its liver tumours come in 7 pieces."""
    root = shared("ircadb_ct")
    masks = [np.asarray(nib.load(p).dataobj).astype(np.uint8) for p in sorted((root / "labelsTr").glob("*.nii.gz"))]
    labels = {1: "liver", 2: "liver tumour", 3: "spleen", 4: "right kidney", 5: "left kidney", 6: "other tumour"}
    config = choose_from_anatomy(masks, labels)
    assert config.labels_with("keep_largest") == [1, 3, 4, 5, 6]
    # case 1's liver, spleen and right kidney touch: all foreground is one piece there, yet keeping its largest
    # piece in a prediction deleted both kidneys; the foreground step is not taken from the anatomy of labels
    assert not config.keep_largest_foreground
    assert not choose_from_anatomy(masks[:1], labels).keep_largest_foreground
    tumour = next(d for d in config.decisions if d["class"] == 2)
    assert tumour["cases"] == 1 and tumour["largest_share_min"] < 0.8
