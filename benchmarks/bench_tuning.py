"""NMS tuning: one forward pass + 35 re-scored grid points (core.tuning.tune_grid) against the
study's approach, one ultralytics `model.val(conf, iou)` per grid point, on the same model and
val split, in the same run. Goal: >= 10x."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

LABELS = [["Cardiomegaly"], ["Mass"], ["Effusion"], ["Cardiomegaly", "Effusion"], ["Nodule", "Effusion"], []]


def main() -> list[dict]:
    from xray_assets.config import STUDY_CONF_GRID, STUDY_IOU_GRID, configure_ultralytics, get_profile
    from xray_assets.core.synthetic import toy_yolo_dataset
    from xray_assets.core.tuning import tune_grid, val_args

    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    imgsz = get_profile("demo").train.imgsz
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = toy_yolo_dataset(tmp, "nih_multi", 120, 320, LABELS, (0.4, 1.0))   # 72 val images
        YOLO("yolov8n.yaml").train(data=str(data), epochs=20, imgsz=imgsz, batch=8, workers=0, plots=False,
                                   val=False, device="cpu", project=str(tmp / "runs"), name="t", mosaic=0, nbs=8,
                                   optimizer="AdamW", lr0=0.01, warmup_epochs=1, amp=False, verbose=False)
        weights = tmp / "runs" / "t" / "weights" / "last.pt"
        YOLO(str(weights)).val(data=str(data), **val_args(imgsz))  # warm-up: caches, lazy imports

        t = time.perf_counter()
        grid, info = tune_grid(weights, data, STUDY_CONF_GRID, STUDY_IOU_GRID, imgsz=imgsz, log=lambda m: None)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        worst = 0.0
        for row in grid.itertuples():
            ref = YOLO(str(weights)).val(data=str(data), conf=row.conf, iou=row.iou, **val_args(imgsz)).results_dict
            worst = max(worst, abs(ref["metrics/mAP50(B)"] - row.map50), abs(ref["metrics/recall(B)"] - row.recall))
        base = time.perf_counter() - t
    return [{"benchmark": "NMS tuning, 35-point grid", "ours_s": ours, "baseline_s": base, "speedup": base / ours,
             "baseline": f"35 model.val passes ({info['images']} val images, imgsz {imgsz}, "
                         f"{info['candidates']} candidates; max |diff| {worst:.1e})"}]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(r)
