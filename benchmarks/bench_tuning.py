"""NMS tuning: one forward pass the web app's way + 35 replayed and scored grid points
(detection.capture_candidates, tuning.tune_grid) against running the served rule's `predict` over val
at every grid point and scoring that, on the same model and val split, in the same run. Both give
the same boxes; the difference is 34 forward passes. Goal: >= 10x."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

LABELS = [
    ["Cardiomegaly"],
    ["Mass"],
    ["Effusion"],
    ["Cardiomegaly", "Effusion"],
    ["Nodule", "Effusion"],
    [],
]


def main() -> list[dict]:
    import pandas as pd

    from xray_assets.config import (
        STUDY_CONF_GRID,
        STUDY_IOU_GRID,
        configure_ultralytics,
        get_profile,
    )
    from xray_assets.core.classes import TASKS
    from xray_assets.core.detection import (
        DetectionRule,
        capture_candidates,
        detect_images,
        load_model,
    )
    from xray_assets.core.synthetic import toy_yolo_dataset
    from xray_assets.core.tuning import tune_grid, ultralytics_scores
    from xray_assets.core.yolo_dataset import read_yolo_label

    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    imgsz = get_profile("demo").train.imgsz
    classes = list(TASKS["nih_multi"].classes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = toy_yolo_dataset(tmp, "nih_multi", 120, 320, LABELS, (0.4, 1.0))  # 72 val images
        YOLO("yolov8n.yaml").train(
            data=str(data),
            epochs=20,
            imgsz=imgsz,
            batch=8,
            workers=0,
            plots=False,
            val=False,
            device="cpu",
            project=str(tmp / "runs"),
            name="t",
            mosaic=0,
            nbs=8,
            optimizer="AdamW",
            lr0=0.01,
            warmup_epochs=1,
            amp=False,
            verbose=False,
        )
        model = load_model(tmp / "runs" / "t" / "weights" / "last.pt")
        paths = (data.parent / "val.txt").read_text().split()
        images = pd.DataFrame({"image_id": [Path(p).name for p in paths], "path": paths})
        gt = pd.DataFrame(
            [
                (Path(p).name, classes[int(c)], *xy)
                for p in paths
                for c, *xy in read_yolo_label(
                    Path(p.replace("/images/", "/labels/")).with_suffix(".txt"), 320, 320
                ).tolist()
            ],
            columns=["image_id", "label", "x_min", "y_min", "x_max", "y_max"],
        )
        base_rule = DetectionRule(min(STUDY_CONF_GRID), max(STUDY_IOU_GRID))
        detect_images(
            model, images.head(4), base_rule, imgsz, classes
        )  # warm-up: lazy imports, predictor

        t = time.perf_counter()
        cands = capture_candidates(model, images, imgsz, min(STUDY_CONF_GRID))
        grid, info = tune_grid(
            cands, gt, classes, base_rule, STUDY_CONF_GRID, STUDY_IOU_GRID, log=lambda m: None
        )
        ours = time.perf_counter() - t
        t = time.perf_counter()
        worst = 0.0
        for row in grid.itertuples():
            dets = detect_images(model, images, base_rule.at(row.conf, row.iou), imgsz, classes)
            ref = ultralytics_scores(dets, gt, images["image_id"], classes)
            worst = max(worst, abs(ref["map50"] - row.map50), abs(ref["recall"] - row.recall))
        base = time.perf_counter() - t
    return [
        {
            "benchmark": "NMS tuning, 35-point grid",
            "ours_s": ours,
            "baseline_s": base,
            "speedup": base / ours,
            "baseline": f"35 predict passes of the served rule ({info['images']} val images, imgsz {imgsz}, "
            f"{info['candidates']} candidates; max |diff| {worst:.1e})",
        }
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(r)
