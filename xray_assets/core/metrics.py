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


#: IoU thresholds of the three AP figures: COCO's AP50 and AP50-95, and VinBigData's metric (AP at IoU 0.4)
AP_IOUS = {"ap50": 0.5, "ap_iou40": 0.4}
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _ap(gt: pd.DataFrame, pred: pd.DataFrame, thr: float, max_dets: int) -> float:
    s, tp, n = match_label(gt, pred, thr, max_dets)
    return ap_from_pr(*pr_curve(s, tp, n)[:2]) if n else np.nan


def evaluate(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels: list[str] | tuple[str, ...],
             conf: float | None = None, max_dets: int = 100) -> pd.DataFrame:
    """Per-label table, threshold-free AP and the operating point.

    AP (COCO 101-point interpolation) uses every given prediction: pass all detections above a low
    floor after NMS (AP_FLOOR), and AP no longer depends on any chosen threshold. `ap50` at IoU 0.5,
    `ap_iou40` at IoU 0.4 (VinBigData's metric; not KITTI's 40-recall-point AP), `ap50_95` the mean
    over IoU 0.50:0.05:0.95. The operating point is the predictions with score > `conf` (all of
    them when `conf` is None): precision, recall and F1 at IoU 0.5.
    """
    rows = []
    for label in labels:
        gt = ground_truth[ground_truth["label"] == label]
        pred = predictions[predictions["label"] == label]
        op = pred if conf is None else pred[pred["score"] > conf]
        row = {"label": label, "n_gt": len(gt), "n_pred": len(pred), "n_pred_op": len(op)}
        for name, thr in AP_IOUS.items():
            row[name] = _ap(gt, pred, thr, max_dets)
        aps = [_ap(gt, pred, thr, max_dets) for thr in np.linspace(0.5, 0.95, 10)]
        row["ap50_95"] = float(np.mean(aps)) if len(gt) else np.nan
        _, tp, n = match_label(gt, op, 0.5, max_dets)
        ntp = int(tp.sum())
        row["precision"] = ntp / len(tp) if len(tp) else (np.nan if not n else 0.0)
        row["recall"] = ntp / n if n else np.nan
        p, r = row["precision"], row["recall"]
        row["f1"] = 2 * p * r / (p + r) if p == p and r == r and (p + r) > 0 else (0.0 if len(gt) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Means over labels that have ground truth (NaN everywhere when nothing has ground truth)."""
    t = table[table["n_gt"] > 0]
    keys = ("map50", "map_iou40", "map50_95", "precision", "recall", "f1")
    if t.empty:
        return {k: float("nan") for k in keys}
    return {
        "map50": float(t["ap50"].mean()),
        "map_iou40": float(t["ap_iou40"].mean()),
        "map50_95": float(t["ap50_95"].mean()),
        "precision": float(t["precision"].fillna(0).mean()),
        "recall": float(t["recall"].mean()),
        "f1": float(t["f1"].fillna(0).mean()),
    }


def _per_image_matches(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, ids: list,
                       iou_thr: float = 0.5) -> dict:
    """label -> (scores per image, TP flags per image, GT count per image) over `ids` (in order)."""
    index = {image_id: k for k, image_id in enumerate(ids)}
    out = {}
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
            s, tp, _ = match_label(g, pred_by.get(image_id, pred.iloc[0:0]), iou_thr)
            scores[index[image_id]], tps[index[image_id]] = s, tp
        out[label] = (scores, tps, n_gt)
    return out


def _mean_ap(per_label: dict, draw: np.ndarray) -> float:
    """Mean AP over labels with ground truth among the drawn images (NaN when none has any)."""
    aps = []
    for scores, tps, n_gt in per_label.values():
        n = int(n_gt[draw].sum())
        if n:
            s = np.concatenate([scores[i] for i in draw])
            tp = np.concatenate([tps[i] for i in draw])
            aps.append(ap_from_pr(*pr_curve(s, tp, n)[:2]))
    return float(np.mean(aps)) if aps else float("nan")


def paired_bootstrap(ground_truth: pd.DataFrame, pred_a: pd.DataFrame, pred_b: pd.DataFrame, labels, image_ids,
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, iou_thr: float = 0.5) -> dict:
    """mAP (mean AP over labels with ground truth, at `iou_thr`) of two sets of predictions on the
    same images and ground truth, their difference a - b, and a paired bootstrap interval of the
    difference: each resample draws images with replacement and scores both on that same draw."""
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        nan = float("nan")
        return {"a": nan, "b": nan, "diff": nan, "ci_low": nan, "ci_high": nan, "images": 0, "resamples": 0}
    ma = _per_image_matches(ground_truth, pred_a, labels, ids, iou_thr)
    mb = _per_image_matches(ground_truth, pred_b, labels, ids, iou_thr)
    every = np.arange(len(ids))
    a, b = _mean_ap(ma, every), _mean_ap(mb, every)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        draw = rng.integers(0, len(ids), size=len(ids))
        d = _mean_ap(ma, draw) - _mean_ap(mb, draw)
        if d == d:
            diffs.append(d)
    lo, hi = (np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if diffs else (np.nan, np.nan))
    return {"a": a, "b": b, "diff": a - b, "ci_low": float(lo), "ci_high": float(hi), "images": len(ids),
            "resamples": len(diffs)}


def froc(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, image_ids, iou_thr: float = 0.5,
         fp_rates=FROC_FP_RATES) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Free-response ROC: sensitivity at each rate of false positives per image, and their mean (the
    competition performance metric of LUNA16/NODE21), per label and pooled over labels ("(all)").

    A detection is a true positive when it takes a ground-truth box of its label at IoU >= `iou_thr`
    (COCO's greedy matching by score; a second detection on a box is a false positive). The curve is
    swept over distinct scores; the sensitivity at a rate is the highest reached with at most that
    many false positives per image, over all `image_ids` (images without findings count). Returns the
    table and the curves (false positives per image, sensitivity) for plotting.
    """
    n_images = len(dict.fromkeys(image_ids))
    pooled_s, pooled_tp, pooled_n = [], [], 0
    rows, curves = [], {}

    def sweep(scores, tp, n_gt):
        order = np.argsort(-scores, kind="mergesort")
        s, t = scores[order], tp[order].astype(float)
        last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)   # cut only between distinct scores
        sens = (np.cumsum(t) / max(n_gt, 1))[last]
        fppi = (np.cumsum(1 - t) / max(n_images, 1))[last]
        return np.r_[0.0, fppi], np.r_[0.0, sens]

    def row(name, scores, tp, n_gt):
        fppi, sens = sweep(scores, tp, n_gt)
        curves[name] = (fppi, sens)
        at = {f"sens@{r:g}": float(sens[fppi <= r].max()) if n_gt else np.nan for r in fp_rates}
        return {"label": name, "n_gt": n_gt, "n_pred": len(scores), **at,
                "cpm": float(np.mean(list(at.values()))) if n_gt else np.nan}

    for label in labels:
        s, tp, n = match_label(ground_truth[ground_truth["label"] == label],
                               predictions[predictions["label"] == label], iou_thr)
        rows.append(row(label, s, tp, n))
        pooled_s.append(s)
        pooled_tp.append(tp)
        pooled_n += n
    if len(labels) > 1:
        rows.append(row("(all)", np.concatenate(pooled_s) if pooled_s else np.zeros(0),
                        np.concatenate(pooled_tp) if pooled_tp else np.zeros(0, bool), pooled_n))
    return pd.DataFrame(rows), curves


AGE_BANDS = ("<40", "40-60", ">60")


def age_band(age: float) -> str | None:
    """<40, 40-60 (both ends included) or >60 years; None when unknown."""
    if age != age or age is None:
        return None
    return "<40" if age < 40 else ("40-60" if age <= 60 else ">60")


def subgroups(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, images: pd.DataFrame,
              n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """mAP50 (threshold-free) by subgroup of the given images: sex, age band and view position.

    `images`: image_id, sex, age, view (NIH test images: Data_Entry's columns). Each row: the group,
    its images and boxes, mAP50 and a 95% bootstrap interval over that group's images. A gap between
    groups is visible; intervals show how much of it this test set can resolve.
    """
    meta = images.assign(age_band=images["age"].map(age_band))
    rows = []
    for attr, values in (("sex", ("M", "F")), ("age_band", AGE_BANDS), ("view", ("PA", "AP"))):
        for value in values:
            ids = list(meta.loc[meta[attr] == value, "image_id"])
            gt = ground_truth[ground_truth["image_id"].isin(ids)]
            pred = predictions[predictions["image_id"].isin(ids)]
            summary = summarise(evaluate(gt, pred, labels)) if ids else {"map50": np.nan}
            ci = bootstrap_ci(gt, pred, labels, ids, n_boot=n_boot, seed=seed).set_index("label") if ids else None
            rows.append({"attribute": attr, "group": value, "images": len(ids), "boxes": len(gt),
                         "map50": summary["map50"],
                         "ci_low": float(ci.loc["(mean AP50)", "ci_low"]) if ci is not None else np.nan,
                         "ci_high": float(ci.loc["(mean AP50)", "ci_high"]) if ci is not None else np.nan})
    return pd.DataFrame(rows)


def bootstrap_ci(ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, image_ids,
                 n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """95% intervals of AP50 (per label and the mean) and recall, resampling images with replacement.

    Matching is per image, so each image's (scores, true-positive flags, ground-truth count) is
    computed once; a resample only concatenates the drawn images' arrays.
    """
    rng = np.random.default_rng(seed)
    ids = list(dict.fromkeys(image_ids))
    per_label = _per_image_matches(ground_truth, predictions, labels, ids)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    samples["(mean AP50)"], samples["(mean recall)"] = [], []
    for _ in range(n_boot if ids else 0):
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
