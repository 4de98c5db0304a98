"""Figures by box size (COCO's small, medium and large strata at the model's input scale) agree with
pycocotools' own COCOeval on a hand-made case."""

import numpy as np
import pandas as pd
import pytest
from helpers import coco_ap50

from xray_assets.core import sizes


def _case():
    """Three images, two classes, boxes of every size; detections that hit, miss, duplicate, and
    fall outside the stratum of the box they hit."""
    rng = np.random.default_rng(7)
    gt, pred = [], []
    for i in range(3):
        image = f"img{i}"
        for label in ("Nodule", "Mass"):
            for side in (12, 20, 30, 40, 70, 120, 200):
                x, y = rng.uniform(0, 700, 2)
                w, h = side * rng.uniform(0.8, 1.2), side * rng.uniform(0.8, 1.2)
                gt.append((image, label, x, y, x + w, y + h))
                if rng.random() < 0.75:  # found, a little off
                    dx, dy = rng.normal(0, side * 0.08, 2)
                    pred.append(
                        (image, label, x + dx, y + dy, x + w + dx, y + h + dy, rng.random())
                    )
                if rng.random() < 0.2:  # found twice
                    pred.append((image, label, x, y, x + w * 1.05, y + h, rng.random() * 0.5))
            for _ in range(3):  # false positives of every size
                x, y = rng.uniform(0, 700, 2)
                s = rng.choice([10, 50, 150])
                pred.append((image, label, x, y, x + s, y + s, rng.random()))
    cols = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]
    return pd.DataFrame(gt, columns=cols), pd.DataFrame(pred, columns=[*cols, "score"])


@pytest.mark.parametrize("stratum", list(sizes.SIZE_STRATA))
def test_size_strata_equal_pycocotools(stratum):
    """Catches: a box of another size counted as a miss or a false positive in a stratum, a
    detection on an ignored box counted, or the wrong area bounds (COCO's 32² and 96²)."""
    gt, pred = _case()
    classes = ["Nodule", "Mass"]
    want = coco_ap50(gt, pred, classes, sizes.SIZE_STRATA[stratum])
    got = sizes.ap_by_size(gt, pred, classes).set_index(["stratum", "label"])
    # the case is not trivial in any stratum: boxes in it, neither every detection right nor none
    assert all(0.1 < got.at[(stratum, c), "ap50"] < 0.999 for c in classes), got
    for c in classes:
        assert got.at[(stratum, c), "ap50"] == pytest.approx(want[c], abs=1e-9), (stratum, c)
    areas = sizes.box_areas(gt)
    low, high = sizes.SIZE_STRATA[stratum]
    assert got.at[(stratum, "(mean)"), "boxes"] == int(((areas >= low) & (areas <= high)).sum())


def test_areas_are_measured_at_the_models_input_scale():
    """Catches: strata taken in the original image's pixels (a 100 px nodule on a 3,000 px
    radiograph is small for an 800 px model)."""
    box = pd.DataFrame(
        [("a", "Nodule", 0.0, 0.0, 100.0, 100.0)],
        columns=["image_id", "label", "x_min", "y_min", "x_max", "y_max"],
    )
    scale = {"a": sizes.input_scale(3000, 2500, 800)}
    assert sizes.box_areas(box)[0] == 100 * 100
    assert sizes.box_areas(box, scale)[0] == pytest.approx((100 * 800 / 3000) ** 2)
    assert sizes.box_areas(box, scale)[0] < sizes.SIZE_STRATA["small"][1]


@pytest.mark.parametrize("rule", ["iou", "luna16"])
def test_sensitivity_by_size_adds_up_to_the_frocs_own(rule):
    """Catches: a size stratum's sensitivity taken at another threshold than the FROC's (false
    positives of every size count), or a hit attributed to the wrong box: the strata's hits add up
    to the FROC's pooled sensitivity at 1 false positive per image, under each hit rule."""
    from xray_assets.core.metrics import froc

    gt, pred = _case()
    classes = ["Nodule", "Mass"]
    ids = sorted(set(gt["image_id"]))
    table, _ = froc(gt, pred, classes, ids, rule=rule)
    pooled = table.set_index("label").at["(all)", "sens@1"]
    got = sizes.sensitivity_by_size(gt, pred, classes, len(ids))
    mine = got[got["hit_rule"] == rule]
    assert mine["boxes"].sum() == len(gt), "each box in exactly one stratum here"
    hits = (mine["sensitivity"] * mine["boxes"]).sum()
    assert hits / len(gt) == pytest.approx(pooled, abs=1e-9)
    assert 0 < pooled < 1 and mine["sensitivity"].nunique() > 1, "a case that tells strata apart"
