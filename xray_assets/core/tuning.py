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

from .compat import IOU_THRESHOLDS, ValidatorMetrics, match_predictions
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


def best_pair(grid: pd.DataFrame, prefer: tuple[float, float]) -> dict[str, float]:
    """Highest objective; ties go to the grid point nearest the preferred (conf, iou) (the study's
    own rule), so that a flat stretch of the grid does not land on an arbitrary corner."""
    g = grid.assign(
        _distance=(grid["conf"] - prefer[0]).abs() + (grid["iou"] - prefer[1]).abs()
    ).sort_values(["objective", "_distance"], ascending=[False, True], kind="mergesort")
    return {k: float(v) for k, v in g.drop(columns="_distance").iloc[0].items()}


def unresolved(grid: pd.DataFrame, val_boxes: int, candidates: int, floor: float) -> str:
    """Why the val split cannot choose the rule, or "" where it can: no val box of the task, no
    candidate above the grid's lowest conf, or every grid point tied."""
    if val_boxes == 0:
        return "the val split has no box of this task"
    if candidates == 0 or int(grid["boxes"].sum()) == 0:
        return f"the model proposes no box on val above conf {floor:g} ({val_boxes} val boxes)"
    if grid["objective"].round(12).nunique() <= 1:
        return f"every grid point scores the same objective ({grid['objective'].iloc[0]:.3f})"
    return ""


def choose_rule(
    grid: pd.DataFrame, val_boxes: int, candidates: int, study: tuple[float, float]
) -> tuple[dict[str, float], str]:
    """(the chosen grid point, why it is a fallback or ""): the best objective, ties toward the
    study's (conf, iou); where val cannot choose (`unresolved`), the study's own rule, with its
    row of the grid when the grid has one."""
    why = unresolved(grid, val_boxes, candidates, float(grid["conf"].min()))
    if not why:
        return best_pair(grid, study), ""
    at = grid[(grid["conf"] == study[0]) & (grid["iou"] == study[1])]
    row = (
        {k: float(v) for k, v in at.iloc[0].items()}
        if len(at)
        else {**{c: float("nan") for c in GRID_COLUMNS}, "conf": study[0], "iou": study[1]}
    )
    return row, why


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
