"""NMS threshold tuning from one forward pass.

The model runs once over the split at the lowest confidence of the grid with almost no
suppression; every (conf, iou) grid point is then scored from those raw detections by filtering
on confidence and applying per-class NMS at the grid's IoU. Objective (the study's): mean(recall, mAP50).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import map50_recall


def apply_nms(raw: pd.DataFrame, conf: float, iou: float, agnostic: bool = False,
              max_det: int = 300) -> pd.DataFrame:
    """Detections with score >= conf, then NMS per image (per class unless `agnostic`)."""
    import torch
    from torchvision.ops import batched_nms

    kept = raw[raw["score"] >= conf]
    if kept.empty:
        return kept.copy()
    parts = []
    for _, det in kept.groupby("image_id", sort=False):
        boxes = torch.as_tensor(det[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32))
        scores = torch.as_tensor(det["score"].to_numpy(np.float32))
        groups = torch.zeros(len(det), dtype=torch.int64) if agnostic else torch.as_tensor(
            pd.factorize(det["label"])[0], dtype=torch.int64)
        keep = batched_nms(boxes, scores, groups, iou)[:max_det].numpy()
        parts.append(det.iloc[keep])
    return pd.concat(parts, ignore_index=True)


def score_grid(raw: pd.DataFrame, ground_truth: pd.DataFrame, labels, conf_grid, iou_grid,
               agnostic: bool = False) -> pd.DataFrame:
    rows = []
    for c in conf_grid:
        for i in iou_grid:
            pred = apply_nms(raw, c, i, agnostic)
            s = map50_recall(ground_truth, pred, labels)
            rows.append({"conf": float(c), "iou": float(i), "map50": s["map50"], "recall": s["recall"],
                         "precision": s["precision"], "objective": (s["recall"] + s["map50"]) / 2})
    return pd.DataFrame(rows)


def best_pair(grid: pd.DataFrame) -> dict[str, float]:
    """Highest objective; ties go to the higher conf, then the lower iou (fewer boxes)."""
    g = grid.sort_values(["objective", "conf", "iou"], ascending=[False, False, True], kind="mergesort")
    return {k: float(v) for k, v in g.iloc[0].items()}
