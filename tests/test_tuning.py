"""One-pass NMS tuning scores every grid point exactly as ultralytics' own `model.val(conf, iou)` does."""

import pytest

from conftest import TOY_SIZE as SIZE
from xray_assets.core.tuning import best_pair, tune_grid, val_args


def test_one_pass_grid_equals_ultralytics_val_at_every_checked_point(toy_model):
    from ultralytics import YOLO

    weights, data = toy_model
    grid, info = tune_grid(weights, data, (0.01, 0.1, 0.3), (0.3, 0.6, 0.8), imgsz=SIZE, batch=4, log=lambda m: None)
    assert info["images"] == 8 and info["candidates"] > 0
    assert grid["map50"].max() > 0.2, "the parity check needs a model that finds something"
    assert grid["map50"].nunique() > 3 and grid["recall"].nunique() > 1, "grid points must differ"
    for conf, iou in [(0.01, 0.3), (0.01, 0.8), (0.1, 0.6), (0.3, 0.8)]:
        ref = YOLO(str(weights)).val(data=str(data), conf=conf, iou=iou, **val_args(SIZE, 4)).results_dict
        row = grid[(grid["conf"] == conf) & (grid["iou"] == iou)].iloc[0]
        for key, col in [("metrics/mAP50(B)", "map50"), ("metrics/recall(B)", "recall"),
                         ("metrics/precision(B)", "precision"), ("metrics/mAP50-95(B)", "map50_95")]:
            assert row[col] == pytest.approx(ref[key], abs=1e-3), (conf, iou, col)
    best = best_pair(grid)
    assert best["objective"] == grid["objective"].max()
    assert best["objective"] == pytest.approx((best["recall"] + best["map50"]) / 2)
