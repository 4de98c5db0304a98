"""One-pass NMS tuning scores every grid point exactly as ultralytics' own `model.val(conf, iou)` does."""

import pytest

from xray_assets.config import configure_ultralytics
from xray_assets.core.synthetic import toy_yolo_dataset
from xray_assets.core.tuning import best_pair, tune_grid, val_args

SIZE = 128


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A three-class model trained long enough that its grid is far from all-zero."""
    tmp = tmp_path_factory.mktemp("tuning")
    data = toy_yolo_dataset(tmp, "nih_multi", 40, SIZE,
                            [["Cardiomegaly"], ["Mass"], ["Effusion"], ["Cardiomegaly", "Effusion"], []], (0.7, 0.9))
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    YOLO("yolov8n.yaml").train(data=str(data), epochs=30, imgsz=SIZE, batch=8, workers=0, plots=False, val=False,
                               device="cpu", project=str(tmp / "runs"), name="t", exist_ok=True, mosaic=0, nbs=8,
                               optimizer="AdamW", lr0=0.01, warmup_epochs=1, amp=False, verbose=False)
    return tmp / "runs" / "t" / "weights" / "last.pt", data


def test_one_pass_grid_equals_ultralytics_val_at_every_checked_point(trained):
    from ultralytics import YOLO

    weights, data = trained
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
