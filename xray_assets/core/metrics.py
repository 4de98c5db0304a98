"""Detection metrics, COCO-style, on plain frames.

Frames: `image_id,label,x_min,y_min,x_max,y_max` (+ `score` for predictions), in any one pixel space.
`average_precision` follows COCOeval's rules for one IoU threshold and the "all" area range:
greedy matching in descending score order to the best-IoU unmatched ground truth, at most
`max_dets` detections per image and class, and 101-point interpolated precision.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COORDS = ["x_min", "y_min", "x_max", "y_max"]
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N,4) and (M,4) corner boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_match(ious: np.ndarray, iou_thr: float) -> np.ndarray:
    """COCO's matching: detections (rows, in descending score order) each take the unmatched
    ground truth (column) of highest IoU, if that IoU reaches the threshold."""
    n_det, n_gt = ious.shape
    tp = np.zeros(n_det, bool)
    if n_gt == 0:
        return tp
    thr = min(iou_thr, 1 - 1e-10)
    free = np.ones(n_gt, bool)
    for d in range(n_det):
        row = np.where(free, ious[d], -1.0)
        j = int(row.argmax())
        if row[j] >= thr:
            free[j] = False
            tp[d] = True
            if not free.any():
                break
    return tp


def match_label(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float, max_dets: int = 100
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """For one label: (scores, true-positive flags) of the kept detections, and the GT count."""
    scores_all, tp_all = [], []
    gt_groups = {k: g[COORDS].to_numpy(float) for k, g in gt.groupby("image_id", sort=False)}
    for image_id, p in pred.groupby("image_id", sort=False):
        p = p.sort_values("score", ascending=False, kind="mergesort").head(max_dets)
        boxes = p[COORDS].to_numpy(float)
        g = gt_groups.get(image_id, np.zeros((0, 4)))
        ious = box_iou(boxes, g)
        tp = greedy_match(ious, iou_thr)
        scores_all.append(p["score"].to_numpy(float))
        tp_all.append(tp)
    if not scores_all:
        return np.zeros(0), np.zeros(0, bool), len(gt)
    return np.concatenate(scores_all), np.concatenate(tp_all), len(gt)


def pr_curve(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, score) along detections sorted by descending score."""
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order].astype(float)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / max(n_gt, 1)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    return recall, precision, scores[order]


def ap_from_pr(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP."""
    if len(recall) == 0:
        return 0.0
    pr = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0)
    return float(q.mean())


def average_precision(ground_truth: pd.DataFrame, predictions: pd.DataFrame, iou_thr: float = 0.5,
                      max_dets: int = 100) -> dict[str, float]:
    """AP per label present in the ground truth (labels without ground truth are left out, as COCO does)."""
    out: dict[str, float] = {}
    for label, gt in ground_truth.groupby("label", sort=True):
        pred = predictions[predictions["label"] == label]
        scores, tp, n_gt = match_label(gt, pred, iou_thr, max_dets)
        r, p, _ = pr_curve(scores, tp, n_gt)
        out[str(label)] = ap_from_pr(r, p)
    return out


def evaluate(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels: list[str] | tuple[str, ...],
             max_dets: int = 100) -> pd.DataFrame:
    """Per-label table: n_gt, n_pred, AP50, AP40, AP50-95, and precision/recall/F1 of all given
    predictions at IoU 0.5 (the operating point is whatever threshold produced `predictions`)."""
    rows = []
    for label in labels:
        gt = ground_truth[ground_truth["label"] == label]
        pred = predictions[predictions["label"] == label]
        row = {"label": label, "n_gt": len(gt), "n_pred": len(pred)}
        for name, thr in (("ap50", 0.5), ("ap40", 0.4)):
            s, tp, n = match_label(gt, pred, thr, max_dets)
            row[name] = ap_from_pr(*pr_curve(s, tp, n)[:2]) if n else np.nan
            if thr == 0.5:
                ntp = int(tp.sum())
                row["precision"] = ntp / len(tp) if len(tp) else (np.nan if not n else 0.0)
                row["recall"] = ntp / n if n else np.nan
        aps = []
        for thr in np.linspace(0.5, 0.95, 10):
            s, tp, n = match_label(gt, pred, thr, max_dets)
            aps.append(ap_from_pr(*pr_curve(s, tp, n)[:2]) if n else np.nan)
        row["ap50_95"] = float(np.mean(aps)) if len(gt) else np.nan
        p, r = row["precision"], row["recall"]
        row["f1"] = 2 * p * r / (p + r) if p == p and r == r and (p + r) > 0 else (0.0 if len(gt) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Mean over labels that have ground truth (NaN everywhere when nothing has ground truth)."""
    t = table[table["n_gt"] > 0]
    if t.empty:
        return {k: float("nan") for k in ("map50", "map40", "map50_95", "precision", "recall", "f1")}
    return {
        "map50": float(t["ap50"].mean()),
        "map40": float(t["ap40"].mean()),
        "map50_95": float(t["ap50_95"].mean()),
        "precision": float(t["precision"].fillna(0).mean()),
        "recall": float(t["recall"].mean()),
        "f1": float(t["f1"].fillna(0).mean()),
    }


def bootstrap_ci(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, image_ids,
                 n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """95% intervals of AP50 (per label and the mean) and recall, resampling images with replacement.

    Matching is per image, so each image's (scores, true-positive flags, ground-truth count) is
    computed once; a resample only concatenates the drawn images' arrays.
    """
    rng = np.random.default_rng(seed)
    ids = list(dict.fromkeys(image_ids))
    index = {image_id: k for k, image_id in enumerate(ids)}
    per_label = {}
    for label in labels:
        gt = ground_truth[ground_truth["label"] == label]
        pred = predictions[predictions["label"] == label]
        scores = [np.zeros(0)] * len(ids)
        tps = [np.zeros(0, bool)] * len(ids)
        n_gt = np.zeros(len(ids), int)
        gt_by, pred_by = dict(tuple(gt.groupby("image_id"))), dict(tuple(pred.groupby("image_id")))
        for image_id in gt_by.keys() | pred_by.keys():
            if image_id not in index:
                continue
            g = gt_by.get(image_id, gt.iloc[0:0])
            n_gt[index[image_id]] = len(g)
            s, tp, _ = match_label(g, pred_by.get(image_id, pred.iloc[0:0]), 0.5)
            scores[index[image_id]], tps[index[image_id]] = s, tp
        per_label[label] = (scores, tps, n_gt)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    samples["(mean AP50)"], samples["(mean recall)"] = [], []
    for _ in range(n_boot):
        draw = rng.integers(0, len(ids), size=len(ids))
        aps, recalls = [], []
        for label, (scores, tps, n_gt) in per_label.items():
            n = int(n_gt[draw].sum())
            if n == 0:
                continue
            s = np.concatenate([scores[i] for i in draw])
            tp = np.concatenate([tps[i] for i in draw])
            ap = ap_from_pr(*pr_curve(s, tp, n)[:2])
            samples[label].append(ap)
            aps.append(ap)
            recalls.append(tp.sum() / n)
        if aps:
            samples["(mean AP50)"].append(float(np.mean(aps)))
            samples["(mean recall)"].append(float(np.mean(recalls)))
    rows = []
    for label, vals in samples.items():
        lo, hi = (np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if vals else (np.nan, np.nan))
        rows.append({"label": label, "ci_low": float(lo), "ci_high": float(hi), "resamples": len(vals)})
    return pd.DataFrame(rows)


def confusion_matrix(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, iou_thr: float = 0.5
                     ) -> pd.DataFrame:
    """Rows: true class (+ "background" for unmatched predictions); columns: predicted class
    (+ "background" for missed boxes). Class-agnostic greedy matching by score at `iou_thr`."""
    names = list(labels) + ["background"]
    m = pd.DataFrame(0, index=names, columns=names)
    for image_id in set(ground_truth["image_id"]) | set(predictions["image_id"]):
        g = ground_truth[ground_truth["image_id"] == image_id]
        p = predictions[predictions["image_id"] == image_id].sort_values("score", ascending=False)
        ious = box_iou(p[COORDS].to_numpy(float), g[COORDS].to_numpy(float))
        free = np.ones(len(g), bool)
        for d in range(len(p)):
            row = np.where(free, ious[d], -1.0) if len(g) else np.array([-1.0])
            j = int(row.argmax())
            if len(g) and row[j] >= iou_thr:
                free[j] = False
                m.loc[g.iloc[j]["label"], p.iloc[d]["label"]] += 1
            else:
                m.loc["background", p.iloc[d]["label"]] += 1
        for j in np.flatnonzero(free):
            m.loc[g.iloc[j]["label"], "background"] += 1
    return m
