"""Figures by box size: COCO's small, medium and large strata (area under 32², 32² to 96², over 96²
pixels), measured at the model's input scale, the way pycocotools' COCOeval measures them.

A box's area is its width times its height in the original image's pixels, times the square of the
image's scale to the model's input (`input_scale`: the input size over the image's longer side), so a
nodule 100 px wide on a 3,000 px radiograph counts as small for an 800 px model. Within a stratum,
COCOeval's rules hold: a ground-truth box outside the stratum is ignored (it is neither a miss nor a
hit); a detection matched to an ignored box is ignored; an unmatched detection outside the stratum is
ignored; every other detection is a true or false positive as usual. AP is the 101-point interpolated
average precision over the kept detections (at most 100 per image, by score).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .metrics import COORDS, HIT_RULES, RECALL_POINTS, box_iou, centre_hits

#: COCO's area ranges (pycocotools' `areaRng`, bounds included), in pixels² at the model's input scale
SIZE_STRATA: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


def input_scale(width, height, imgsz: int) -> float:
    """The factor from an image's pixels to the model's input (its longer side becomes `imgsz`)."""
    return imgsz / max(float(width), float(height))


def image_scales(images: pd.DataFrame, imgsz: int) -> dict[str, float]:
    """image_id -> its scale to the model's input, for a table with image_id, width, height."""
    return {
        i: input_scale(w, h, imgsz)
        for i, w, h in zip(images["image_id"], images["width"], images["height"])
    }


def box_areas(boxes: pd.DataFrame, scale: dict[str, float] | None = None) -> np.ndarray:
    """Each box's area at the model's input scale (`scale`: image_id -> factor; 1 when absent)."""
    xy = boxes[COORDS].to_numpy(float)
    area = (xy[:, 2] - xy[:, 0]) * (xy[:, 3] - xy[:, 1])
    if scale:
        area = area * np.array([scale.get(i, 1.0) ** 2 for i in boxes["image_id"]])
    return area


def _outside(area: np.ndarray, stratum: tuple[float, float]) -> np.ndarray:
    return (area < stratum[0]) | (area > stratum[1])


def _evaluate_image(ious: np.ndarray, gt_ignored: np.ndarray, iou_thr: float):
    """pycocotools' `evaluateImg` matching for one image and label: detections (rows, by
    descending score) each take the free ground truth of highest IoU at or above the threshold,
    regular boxes before ignored ones. Returns (matched, matched to an ignored box)."""
    n_det, n_gt = ious.shape
    order = np.argsort(gt_ignored, kind="mergesort")  # regular boxes first
    matched, on_ignored = np.zeros(n_det, bool), np.zeros(n_det, bool)
    taken = np.zeros(n_gt, bool)
    for d in range(n_det):
        best, m = min(iou_thr, 1 - 1e-10), -1
        for g in order:
            if taken[g]:
                continue
            if m > -1 and not gt_ignored[m] and gt_ignored[g]:
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m > -1:
            taken[m], matched[d], on_ignored[d] = True, True, gt_ignored[m]
    return matched, on_ignored


def ap_in_stratum(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    stratum: tuple[float, float],
    scale: dict[str, float] | None = None,
    iou_thr: float = 0.5,
) -> tuple[float, int]:
    """(AP, ground-truth boxes in the stratum) for one label; AP is NaN with no box in it."""
    gt_area, pred_area = box_areas(gt, scale), box_areas(pred, scale)
    gt_out, pred_out = _outside(gt_area, stratum), _outside(pred_area, stratum)
    n_boxes = int((~gt_out).sum())
    if n_boxes == 0:
        return math.nan, 0
    gt_at = gt.groupby("image_id", sort=False).indices
    scores, tps, kept = [], [], []
    pred_scores = pred["score"].to_numpy(float)
    gt_xy, pred_xy = gt[COORDS].to_numpy(float), pred[COORDS].to_numpy(float)
    for image_id, rows in pred.groupby("image_id", sort=False).indices.items():
        rows = rows[np.argsort(-pred_scores[rows], kind="mergesort")][:100]
        g = gt_at.get(image_id, np.zeros(0, int))
        matched, on_ignored = _evaluate_image(box_iou(pred_xy[rows], gt_xy[g]), gt_out[g], iou_thr)
        ignored = on_ignored | (~matched & pred_out[rows])
        scores.append(pred_scores[rows])
        tps.append(matched & ~on_ignored)
        kept.append(~ignored)
    if not scores:
        return 0.0, n_boxes
    score, tp, keep = np.concatenate(scores), np.concatenate(tps), np.concatenate(kept)
    order = np.argsort(-score, kind="mergesort")
    tp, keep = tp[order], keep[order]
    ctp = np.cumsum(tp & keep).astype(float)
    cfp = np.cumsum(~tp & keep).astype(float)
    recall = ctp / n_boxes
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0)
    return float(q.mean()), n_boxes


def ap_by_size(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    classes,
    scale: dict[str, float] | None = None,
    iou_thr: float = 0.5,
) -> pd.DataFrame:
    """AP per class and stratum, and the mean over the classes with boxes in it ("(mean)"):
    columns label, stratum, boxes, ap50."""
    rows = []
    for name, stratum in SIZE_STRATA.items():
        aps = []
        for label in classes:
            ap, n = ap_in_stratum(
                gt[gt["label"] == label], pred[pred["label"] == label], stratum, scale, iou_thr
            )
            rows.append({"label": label, "stratum": name, "boxes": n, "ap50": ap})
            if n:
                aps.append(ap)
        total = sum(r["boxes"] for r in rows if r["stratum"] == name)
        mean = float(np.mean(aps)) if aps else math.nan
        rows.append({"label": "(mean)", "stratum": name, "boxes": total, "ap50": mean})
    return pd.DataFrame(rows, columns=["label", "stratum", "boxes", "ap50"])


def _hit_scores(gt: pd.DataFrame, pred: pd.DataFrame, rule: str, iou_thr: float = 0.5):
    """For one label: the score at which each ground-truth box is first hit (NaN: never), and the
    scores of the false positives, under the FROC's hit `rule` (`metrics.froc`'s: "iou", COCO's
    greedy matching by score; "luna16", the box's most confident detection whose centre lies in it,
    the other detections on hit boxes ignored)."""
    hit = np.full(len(gt), np.nan)
    false = []
    gt_at = gt.groupby("image_id", sort=False).indices
    gt_xy, pred_xy = gt[COORDS].to_numpy(float), pred[COORDS].to_numpy(float)
    pred_score = pred["score"].to_numpy(float)
    for image_id, p in pred.groupby("image_id", sort=False).indices.items():
        g = gt_at.get(image_id, np.zeros(0, int))
        p = p[np.argsort(-pred_score[p], kind="mergesort")]
        if rule == "luna16":
            inside = centre_hits(gt_xy[g], pred_xy[p])
            for j in np.flatnonzero(inside.any(axis=0)):
                hit[g[j]] = pred_score[p][inside[:, j]].max()
            false += list(pred_score[p][~inside.any(axis=1)])
            continue
        p = p[:100]
        ious = box_iou(pred_xy[p], gt_xy[g])
        free = np.ones(len(g), bool)
        for d in range(len(p)):
            row = np.where(free, ious[d], -1.0) if len(g) else np.zeros(0)
            j = int(row.argmax()) if len(row) else -1
            if j >= 0 and row[j] >= min(iou_thr, 1 - 1e-10):
                free[j] = False
                hit[g[j]] = pred_score[p[d]]
            else:
                false.append(pred_score[p[d]])
    return hit, np.asarray(false, float)


def sensitivity_by_size(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    classes,
    n_images: int,
    scale: dict[str, float] | None = None,
    rate: float = 1.0,
) -> pd.DataFrame:
    """FROC sensitivity at `rate` false positives per image, under both hit rules, for the boxes
    of each size stratum (pooled over classes): the threshold is the FROC's own (false positives
    of every size, over all `n_images` test images), the sensitivity the share of the stratum's
    boxes hit at it. Columns: hit_rule, stratum, boxes, sensitivity."""
    rows = []
    area = box_areas(gt, scale)
    for rule in HIT_RULES:
        hits, falses, labels = [], [], []
        for label in classes:
            mine = (gt["label"] == label).to_numpy()
            h, f = _hit_scores(gt[mine], pred[pred["label"] == label], rule)
            hits.append(h)
            falses.append(f)
            labels.append(np.flatnonzero(mine))
        hit = np.full(len(gt), np.nan)
        for h, at in zip(hits, labels):
            hit[at] = h
        false = np.sort(np.concatenate(falses) if falses else np.zeros(0))[::-1]
        allowed = int(math.floor(rate * n_images + 1e-9))
        # the lowest threshold with at most `allowed` false positives: above the next false one
        floor = false[allowed] if allowed < len(false) else -math.inf
        for name, stratum in SIZE_STRATA.items():
            inside = ~_outside(area, stratum)
            n = int(inside.sum())
            found = int(((hit > floor) & inside).sum()) if n else 0
            sens = found / n if n else math.nan
            rows.append({"hit_rule": rule, "stratum": name, "boxes": n, "sensitivity": sens})
    return pd.DataFrame(rows, columns=["hit_rule", "stratum", "boxes", "sensitivity"])
