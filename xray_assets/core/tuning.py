"""NMS threshold tuning on val: the study's grid, scored from one forward pass.

The model runs once over val the way the web app runs it (`detection.capture_candidates`); every
(conf, iou) point of the grid is then the task's detection rule at that pair, re-applied to the kept
candidates (`detection.replay`, exactly `predict`'s boxes at that pair). Each point is scored as
ultralytics' validator scores detections (its greedy matching over IoU 0.50:0.95 and its
`DetMetrics`): precision and recall at the confidence of best mean F1, mAP50 and mAP50-95 of the
detections above conf. Objective (the study's): mean(recall, mAP50).

These scores select the pair; they are not the study's test figures, which `metrics` computes
threshold-free (COCO AP over detections above 0.001) on the test split.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from ..compat import IOU_THRESHOLDS, ValidatorMetrics, match_predictions
from .detection import Candidates, DetectionRule, replay

COORDS = ["x_min", "y_min", "x_max", "y_max"]
GRID_COLUMNS = ["conf", "iou", "precision", "recall", "map50", "map50_95", "objective", "boxes"]


def ultralytics_scores(
    detections: pd.DataFrame, ground_truth: pd.DataFrame, image_ids, classes
) -> dict[str, float]:
    """precision, recall, map50, map50_95 of `detections` as ultralytics' DetectionValidator reports
    them (frames: image_id, label, [score,] x_min..y_max in one pixel space)."""
    import torch
    from ultralytics.utils.metrics import box_iou

    index = {c: i for i, c in enumerate(classes)}
    metrics = ValidatorMetrics(classes)
    preds = {
        k: g.sort_values("score", ascending=False, kind="mergesort")
        for k, g in detections.groupby("image_id")
    }
    truth = dict(tuple(ground_truth.groupby("image_id")))
    for image_id in dict.fromkeys(image_ids):
        p, t = preds.get(image_id), truth.get(image_id)
        p_cls = (
            np.array([index[x] for x in p["label"]], dtype=float) if p is not None else np.zeros(0)
        )
        t_cls = (
            np.array([index[x] for x in t["label"]], dtype=float) if t is not None else np.zeros(0)
        )
        if len(p_cls) and len(t_cls):
            iou = box_iou(
                torch.tensor(t[COORDS].to_numpy(np.float32)),
                torch.tensor(p[COORDS].to_numpy(np.float32)),
            )
            tp = match_predictions(p_cls, t_cls, iou)
        else:
            tp = np.zeros((len(p_cls), IOU_THRESHOLDS), bool)
        conf = p["score"].to_numpy(float) if p is not None else np.zeros(0)
        metrics.add(tp, conf, p_cls, t_cls, str(image_id))
    return metrics.results()


def tune_grid(
    candidates: list[Candidates],
    ground_truth: pd.DataFrame,
    classes,
    base: DetectionRule,
    conf_grid,
    iou_grid,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, dict]:
    """Score every (conf, iou) of the grid for the rule `base` (its agnostic/multi-label/max_det kept)."""
    t0 = time.time()
    image_ids = [c.image_id for c in candidates]
    rows = []
    for conf in conf_grid:
        for iou in iou_grid:
            dets = replay(candidates, base.at(float(conf), float(iou)), classes)
            row = {
                "conf": float(conf),
                "iou": float(iou),
                **ultralytics_scores(dets, ground_truth, image_ids, classes),
                "boxes": len(dets),
            }
            row["objective"] = (row["recall"] + row["map50"]) / 2
            rows.append(row)
    seconds = time.time() - t0
    log(f"scored {len(rows)} grid points on {len(candidates)} images in {seconds:.1f}s")
    return pd.DataFrame(rows, columns=GRID_COLUMNS), {
        "images": len(candidates),
        "score_seconds": seconds,
        "candidates": int(sum(c.raw.shape[1] for c in candidates)),
    }


def best_pair(grid: pd.DataFrame) -> dict[str, float]:
    """Highest objective; ties go to the higher conf, then the lower iou (fewer boxes)."""
    g = grid.sort_values(
        ["objective", "conf", "iou"], ascending=[False, False, True], kind="mergesort"
    )
    return {k: float(v) for k, v in g.iloc[0].items()}


def val_args(imgsz: int, batch: int = 16, device: str | None = None, split: str = "val") -> dict:
    """Arguments for a plain `model.val` (what the scorer is checked against)."""
    return {
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "split": split,
        "plots": False,
        "save_json": False,
        "verbose": False,
        "max_det": 300,
    }
