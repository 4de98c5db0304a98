"""Detection metrics, COCO-style, on plain frames.

Frames: `image_id,label,x_min,y_min,x_max,y_max` (+ `score` for predictions), in any one pixel space.
`average_precision` follows COCOeval's rules for one IoU threshold and the "all" area range:
greedy matching in descending score order to the best-IoU unmatched ground truth, at most
`max_dets` detections per image and class, and 101-point interpolated precision.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COORDS = ["x_min", "y_min", "x_max", "y_max"]
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corner boxes (..., 4) taken pair by pair (the shapes broadcast); 0 where the union is
    empty."""
    ix0 = np.maximum(a[..., 0], b[..., 0])
    iy0 = np.maximum(a[..., 1], b[..., 1])
    ix1 = np.minimum(a[..., 2], b[..., 2])
    iy1 = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N,4) and (M,4) corner boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return pair_iou(a[:, None, :], b[None, :, :])


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


def _image_matches(
    gt: pd.DataFrame, pred: pd.DataFrame, image_ids, iou_thr: float, max_dets: int = 100
):
    """COCO's matching image by image, for one label: per image of `image_ids`, its ground-truth
    count and the (scores, true-positive flags) of its kept detections (at most `max_dets`, in
    descending score order)."""
    gt_at = gt.groupby("image_id", sort=False).indices
    pred_at = pred.groupby("image_id", sort=False).indices
    gt_xy, pred_xy = gt[COORDS].to_numpy(float), pred[COORDS].to_numpy(float)
    pred_score = pred["score"].to_numpy(float)
    for image_id in image_ids:
        g, p = gt_at.get(image_id), pred_at.get(image_id)
        n = 0 if g is None else len(g)
        if p is None:
            yield n, np.zeros(0), np.zeros(0, bool)
            continue
        p = p[np.argsort(-pred_score[p], kind="mergesort")][:max_dets]
        boxes = gt_xy[g] if g is not None else np.zeros((0, 4))
        yield n, pred_score[p], greedy_match(box_iou(pred_xy[p], boxes), iou_thr)


def match_label(
    gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float, max_dets: int = 100
) -> tuple[np.ndarray, np.ndarray, int]:
    """For one label: (scores, true-positive flags) of the kept detections, and the GT count."""
    images = pred.groupby("image_id", sort=False).indices.keys()
    matched = list(_image_matches(gt, pred, images, iou_thr, max_dets))
    scores = _cat([s for _, s, _ in matched], float)
    return scores, _cat([t for _, _, t in matched], bool), len(gt)


def pr_curve(
    scores: np.ndarray, tp: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def average_precision(
    ground_truth: pd.DataFrame, predictions: pd.DataFrame, iou_thr: float = 0.5, max_dets: int = 100
) -> dict[str, float]:
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


def evaluate(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    labels: list[str] | tuple[str, ...],
    conf: float | None = None,
    max_dets: int = 100,
) -> pd.DataFrame:
    """Per-label table, threshold-free AP and the operating point.

    AP (COCO 101-point interpolation) uses every given prediction: pass all detections above a low
    floor after NMS (AP_FLOOR), and AP no longer depends on any chosen threshold. `ap50` at IoU 0.5,
    `ap_iou40` at IoU 0.4 (VinBigData's metric; not KITTI's 40-recall-point AP), `ap50_95` the mean
    over IoU 0.50:0.05:0.95. The operating point is the predictions with score > `conf` (all of
    them when `conf` is None): precision, recall and F1 at IoU 0.5, with the counts (`tp_op`,
    `fp_op`) the pooled (micro) figures add up.
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
        row["tp_op"], row["fp_op"] = ntp, len(tp) - ntp
        row["precision"] = ntp / len(tp) if len(tp) else (np.nan if not n else 0.0)
        row["recall"] = ntp / n if n else np.nan
        row["f1"] = f1_score(row["precision"], row["recall"]) if len(gt) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def f1_score(precision: float, recall: float) -> float:
    """The harmonic mean of the precision and recall given (0 when both are 0, NaN when one is NaN)."""
    if math.isnan(precision) or math.isnan(recall):
        return float("nan")
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


#: the two averages of the operating point, as reports, MLflow and metadata name them
AVERAGES = {
    "macro": "macro: the mean over the classes with test boxes (each class weighs the same; a class with boxes "
    "and no detection above conf counts precision 0)",
    "micro": "micro: pooled over every test box and every detection above conf (each box weighs the same)",
}


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Threshold-free mAP (means over labels that have ground truth) and the operating point both
    ways: `precision_macro`, `recall_macro`, `f1_macro` (means over those labels of the per-label
    figures, as scikit-learn's average="macro") and `precision_micro`, `recall_micro`, `f1_micro`
    (pooled counts over all labels); `f1_of_macro_precision_recall` is the F1 of the two macro
    means. NaN everywhere when nothing has ground truth."""
    t = table[table["n_gt"] > 0]
    keys = (
        "map50",
        "map_iou40",
        "map50_95",
        *(f"{m}_{a}" for a in AVERAGES for m in ("precision", "recall", "f1")),
        "f1_of_macro_precision_recall",
    )
    if t.empty:
        return {k: float("nan") for k in keys}
    out = {
        "map50": float(t["ap50"].mean()),
        "map_iou40": float(t["ap_iou40"].mean()),
        "map50_95": float(t["ap50_95"].mean()),
        "precision_macro": float(t["precision"].fillna(0).mean()),
        "recall_macro": float(t["recall"].mean()),
    }
    # the field's macro F1 (scikit-learn's average="macro"): the mean of the per-class F1; the F1 of
    # the macro precision and recall is another figure, kept under a name that says so
    out["f1_macro"] = float(t["f1"].fillna(0).mean())
    out["f1_of_macro_precision_recall"] = f1_score(out["precision_macro"], out["recall_macro"])
    tp, fp, n = (int(table[c].sum()) for c in ("tp_op", "fp_op", "n_gt"))
    out["precision_micro"] = tp / (tp + fp) if tp + fp else 0.0
    out["recall_micro"] = tp / n
    out["f1_micro"] = f1_score(out["precision_micro"], out["recall_micro"])
    return out


# -- intervals: the patient-level (cluster) bootstrap ----------------------------------------------
#: a class (or comparison) with fewer test boxes than this gets no interval (Profile.min_test_boxes)
MIN_TEST_BOXES = 10
#: how a resample that draws none of a class's test boxes is treated, the same in every resample
ABSENT_CLASS_RULE = (
    "a draw without any test box of one of those classes is drawn again, so every resample averages "
    "the same classes (the interval is conditional on each class being present, as it is in the "
    "split)"
)
#: at most this many draws per requested resample before giving up on the rarest classes
MAX_DRAWS_PER_RESAMPLE = 100


def enough_boxes(boxes: int, classes: int = 1, min_boxes: int = MIN_TEST_BOXES) -> bool:
    """A figure over `classes` classes needs `min_boxes` test boxes per class, on average."""
    return boxes >= min_boxes * max(classes, 1)


def too_few(boxes: int, classes: int = 1, min_boxes: int = MIN_TEST_BOXES) -> str:
    if classes <= 1:
        return f"too few test boxes ({boxes})"
    return f"too few test boxes ({boxes} for {classes} classes; {min_boxes * classes} needed)"


def _flat(low: float, high: float) -> str:
    """The note for an interval every resample agrees on (all boxes found, say): it shows no uncertainty
    because the bootstrap cannot, not because there is none."""
    return (
        f"every resample gave {low:.3f}: the bootstrap cannot show this split's uncertainty"
        if low == high
        else ""
    )


class Resamples:
    """Patient-level (cluster) bootstrap draws over a fixed list of test images.

    A resample draws as many patients as the images belong to, with replacement, and keeps every
    image of each drawn patient (`groups` maps image_id to its patient; an image missing from it,
    e.g. a VinBigData image, is its own patient). Images of one patient therefore move together,
    and an interval reflects the patients, the unit that was sampled. `require`: an (images, classes)
    matrix of test-box counts; a draw that holds no box of one of those classes is drawn again
    (ABSENT_CLASS_RULE), up to MAX_DRAWS_PER_RESAMPLE draws per resample in all (`drawn` says how many
    were made). `weights[k, i]`: how many times image `ids[i]` is in resample k; `draws[k]`: its
    patients (codes into `patients`), in draw order. The same arguments always draw the same.
    """

    def __init__(
        self,
        image_ids,
        groups=None,
        n_boot: int = 1000,
        seed: int = 0,
        require: np.ndarray | None = None,
    ):
        self.ids = list(dict.fromkeys(image_ids))
        self.seed = int(seed)
        groups = {} if groups is None else dict(groups)
        keys = pd.Series(
            [("patient", groups[i]) if i in groups else ("image", i) for i in self.ids],
            dtype=object,
        )
        codes, uniques = pd.factorize(keys)
        self.cluster_of = np.asarray(codes, dtype=np.int64)
        self.patients = list(uniques)
        n = len(self.patients)
        rng = np.random.default_rng(self.seed)
        kept_draws, kept_weights, self.drawn = [], [], 0
        while sum(
            len(d) for d in kept_draws
        ) < n_boot and self.drawn < MAX_DRAWS_PER_RESAMPLE * max(n_boot, 1):
            block = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), np.int64)
            self.drawn += n_boot
            counts = np.zeros((n_boot, n), np.int64)
            np.add.at(counts, (np.arange(n_boot)[:, None], block), 1)
            weights = counts[:, self.cluster_of]
            ok = (
                np.ones(n_boot, bool)
                if require is None or require.size == 0
                else ((weights @ require) > 0).all(axis=1)
            )
            kept_draws.append(block[ok])
            kept_weights.append(weights[ok])
            if require is None or require.size == 0:
                break
        self.draws = np.concatenate(kept_draws)[:n_boot]
        self.weights = np.concatenate(kept_weights)[:n_boot]
        self.n_boot = len(self.draws)

    @property
    def n_patients(self) -> int:
        return len(self.patients)


class _Matched:
    """One label's detections matched once per image (COCO's greedy matching at one IoU), sorted by
    score over all images: a resample re-weights them by how often their image was drawn, which is
    the AP of the drawn images' detections concatenated, with no matching redone."""

    def __init__(
        self, gt: pd.DataFrame, pred: pd.DataFrame, ids: list, iou_thr: float, max_dets: int = 100
    ):
        self.n_gt = np.zeros(len(ids), np.int64)
        img, score, tp = [], [], []
        for k, (n, s, t) in enumerate(_image_matches(gt, pred, ids, iou_thr, max_dets)):
            self.n_gt[k] = n
            score.append(s)
            tp.append(t)
            img.append(np.full(len(s), k))
        score, tp, img = _cat(score, float), _cat(tp, bool), _cat(img, np.int64)
        order = np.argsort(-score, kind="mergesort")
        self.score, self.tp, self.img = score[order], tp[order], img[order]
        self.total = int(self.n_gt.sum())

    def boxes(self, w: np.ndarray) -> int:
        return int(w @ self.n_gt)

    def ap(self, w: np.ndarray | None = None) -> float:
        w = np.ones(len(self.n_gt), np.int64) if w is None else w
        n = self.boxes(w)
        if n == 0:
            return float("nan")
        dw = w[self.img]
        keep = dw > 0
        dw, tp = dw[keep], self.tp[keep]
        ctp, cfp = np.cumsum(dw * tp), np.cumsum(dw * ~tp)
        return ap_from_pr(ctp / n, ctp / np.maximum(ctp + cfp, np.finfo(float).eps))

    def recall(self, w: np.ndarray | None = None, conf: float | None = None) -> float:
        """Recall of the detections with score > conf. COCO's greedy matching goes down the scores,
        so a detection's match does not depend on the lower-scored ones: the matches above conf
        are those of matching the detections above conf alone."""
        w = np.ones(len(self.n_gt), np.int64) if w is None else w
        n = self.boxes(w)
        if n == 0:
            return float("nan")
        hit = self.tp if conf is None else self.tp & (self.score > conf)
        return float((w[self.img] * hit).sum() / n)


def _cat(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _matched(
    ground_truth, predictions, labels, ids, iou_thr=0.5, max_dets=100
) -> dict[str, _Matched]:
    return {
        label: _Matched(
            ground_truth[ground_truth["label"] == label],
            predictions[predictions["label"] == label],
            ids,
            iou_thr,
            max_dets,
        )
        for label in labels
    }


def _fixed(matched: dict[str, "_Matched"]) -> list[str]:
    """The fixed class set: the labels with test boxes in the full split."""
    return [label for label, m in matched.items() if m.total > 0]


def class_resamples(
    matched: dict[str, "_Matched"], ids: list, groups, n_boot: int, seed: int
) -> Resamples:
    """Patient-level resamples in which every class of the fixed set has test boxes."""
    fixed = _fixed(matched)
    require = np.stack([matched[label].n_gt for label in fixed], axis=1) if fixed else None
    return Resamples(ids, groups, n_boot, seed, require=require)


def _resampled(
    matched: dict[str, "_Matched"], resamples: Resamples, stat
) -> tuple[list, np.ndarray, np.ndarray]:
    """Over the fixed class set: the labels, their full-split values and a (resamples, labels)
    matrix of resampled values."""
    fixed = _fixed(matched)
    point = np.array([stat(matched[label], None) for label in fixed])
    values = np.array(
        [[stat(matched[label], w) for label in fixed] for w in resamples.weights]
    ).reshape(resamples.n_boot, len(fixed))
    return fixed, point, values


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(*args, **kwargs) -> pd.DataFrame:
    """The interval table of `bootstrap_intervals` (same arguments)."""
    return bootstrap_intervals(*args, **kwargs)[0]


def bootstrap_intervals(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    labels,
    image_ids,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups=None,
    conf: float | None = None,
    min_boxes: int = MIN_TEST_BOXES,
    max_dets: int = 100,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Patient-level bootstrap intervals (1 - `alpha`) of threshold-free AP50 per label and of their
    mean, and of the mean recall of the detections with score > `conf` (the operating point).

    One estimand per interval: the mean is over the fixed class set (the labels with test boxes in
    the full split), and every resample holds boxes of each of them (ABSENT_CLASS_RULE), so per-label
    intervals use every resample too. A label (or the whole set) with fewer than `min_boxes` test
    boxes gets no interval: `note` says "too few test boxes (n)". Columns: label, boxes, estimate,
    ci_low, ci_high, resamples, draws (resamples drawn, the redrawn ones included), note. Also
    returns the resampled mean AP50s.
    """
    ids = list(dict.fromkeys(image_ids))
    matched = _matched(ground_truth, predictions, labels, ids, max_dets=max_dets)
    resamples = class_resamples(matched, ids, groups, n_boot, seed)
    fixed, point, aps = _resampled(matched, resamples, lambda m, w: m.ap(w))
    _, rpoint, recalls = _resampled(matched, resamples, lambda m, w: m.recall(w, conf))
    nan = float("nan")
    base = {"resamples": resamples.n_boot, "draws": resamples.drawn}
    rows = []
    for label in labels:
        m = matched[label]
        row = {
            "label": label,
            "boxes": m.total,
            "estimate": nan,
            "ci_low": nan,
            "ci_high": nan,
            **base,
            "note": "",
        }
        if label in fixed:
            j = fixed.index(label)
            row["estimate"] = float(point[j])
            if enough_boxes(m.total, 1, min_boxes):
                row["ci_low"], row["ci_high"] = _interval(aps[:, j], alpha)
                row["note"] = _flat(row["ci_low"], row["ci_high"])
            else:
                row["note"] = too_few(m.total)
        else:
            row["note"] = "no test boxes"
        rows.append(row)
    total = sum(m.total for m in matched.values())
    for name, pt, values in (("(mean AP50)", point, aps), ("(mean recall)", rpoint, recalls)):
        row = {
            "label": name,
            "boxes": total,
            "estimate": float(pt.mean()) if fixed else nan,
            "ci_low": nan,
            "ci_high": nan,
            **base,
            "note": f"over the {len(fixed)} classes with test boxes",
        }
        if not fixed:
            row["note"] = "no test boxes"
        elif not enough_boxes(total, len(fixed), min_boxes):
            row["note"] = too_few(total, len(fixed), min_boxes)
        elif resamples.n_boot == 0:
            row["note"] = f"no draw of {resamples.drawn} held every class"
        else:
            row["ci_low"], row["ci_high"] = _interval(values.mean(axis=1), alpha)
            row["note"] = _flat(row["ci_low"], row["ci_high"]) or row["note"]
        rows.append(row)
    return pd.DataFrame(rows), (aps.mean(axis=1) if fixed else np.zeros(0))


def paired_bootstrap(
    ground_truth: pd.DataFrame,
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    labels,
    image_ids,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    iou_thr: float = 0.5,
    groups=None,
    max_dets: int = 100,
) -> dict:
    """mAP (mean AP at `iou_thr` over the labels with ground truth) of two sets of predictions on the
    same images and ground truth, their difference a - b, and a paired patient-level bootstrap
    interval of it: each resample draws patients with replacement (`Resamples`) and scores both
    models on that same draw, over the same fixed class set (ABSENT_CLASS_RULE).

    Returns a, b, diff, ci_low, ci_high, images, patients, boxes, classes, resamples, draws, seed and `diffs`,
    the resampled differences (the gate's null distribution is built from them)."""
    ids = list(dict.fromkeys(image_ids))
    ma = _matched(ground_truth, pred_a, labels, ids, iou_thr, max_dets)
    mb = _matched(ground_truth, pred_b, labels, ids, iou_thr, max_dets)
    resamples = class_resamples(ma, ids, groups, n_boot, seed)
    boxes = sum(m.total for m in ma.values())
    out = {
        "images": len(ids),
        "patients": resamples.n_patients,
        "boxes": boxes,
        "classes": len(_fixed(ma)),
        "resamples": resamples.n_boot if boxes else 0,
        "draws": resamples.drawn,
        "seed": seed,
    }
    if not boxes:
        nan = float("nan")
        return {
            **out,
            "a": nan,
            "b": nan,
            "diff": nan,
            "ci_low": nan,
            "ci_high": nan,
            "diffs": np.zeros(0),
        }
    _, pa, va = _resampled(ma, resamples, lambda m, w: m.ap(w))
    _, pb, vb = _resampled(mb, resamples, lambda m, w: m.ap(w))
    diffs = va.mean(axis=1) - vb.mean(axis=1)
    lo, hi = _interval(diffs, alpha)
    a, b = float(pa.mean()), float(pb.mean())
    return {**out, "a": a, "b": b, "diff": a - b, "ci_low": lo, "ci_high": hi, "diffs": diffs}


# -- FROC under two hit rules ----------------------------------------------------------------------
#: what counts as a hit in the FROC, by rule; LUNA16's is the one whose CPM compares with published ones
HIT_RULES = {
    "iou": "IoU >= 0.5 with a box of its class, one detection per box (a second one on a found box is a false "
    "positive): the project's rule, stricter than LUNA16's",
    "luna16": "the detection's centre inside a box of its class; further detections on a found box are ignored "
    "(neither hit nor false positive): LUNA16's rule, whose CPM compares with published CPMs",
}


def centre_hits(gt_boxes: np.ndarray, det_boxes: np.ndarray) -> np.ndarray:
    """(detections, boxes) matrix: does the detection's centre lie in the box (edges included)?"""
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return np.zeros((len(det_boxes), len(gt_boxes)), bool)
    cx = (det_boxes[:, 0] + det_boxes[:, 2]) / 2
    cy = (det_boxes[:, 1] + det_boxes[:, 3]) / 2
    return (
        (cx[:, None] >= gt_boxes[None, :, 0])
        & (cx[:, None] <= gt_boxes[None, :, 2])
        & (cy[:, None] >= gt_boxes[None, :, 1])
        & (cy[:, None] <= gt_boxes[None, :, 3])
    )


def luna16_events(gt: pd.DataFrame, pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """For one label, LUNA16's scoring: every box some detection hits (its centre inside) is one hit
    at the highest score among those detections; a detection that hits no box is a false positive;
    the other detections on hit boxes are ignored. Returns (scores, hit flags, box count)."""
    scores, hits = [], []
    gt_at, pred_at = (
        gt.groupby("image_id", sort=False).indices,
        pred.groupby("image_id", sort=False).indices,
    )
    gt_xy, pred_xy, pred_score = (
        gt[COORDS].to_numpy(float),
        pred[COORDS].to_numpy(float),
        pred["score"].to_numpy(float),
    )
    for image_id, p in pred_at.items():
        g = gt_at.get(image_id)
        m = centre_hits(gt_xy[g] if g is not None else np.zeros((0, 4)), pred_xy[p])
        s = pred_score[p]
        found = m.any(axis=0)
        scores += [s[m[:, j]].max() for j in np.flatnonzero(found)] + list(s[~m.any(axis=1)])
        hits += [True] * int(found.sum()) + [False] * int((~m.any(axis=1)).sum())
    return np.asarray(scores, float), np.asarray(hits, bool), len(gt)


def froc(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    labels,
    image_ids,
    iou_thr: float = 0.5,
    fp_rates=FROC_FP_RATES,
    rule: str = "iou",
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Free-response ROC: sensitivity at each rate of false positives per image, and their mean (the
    competition performance metric, CPM), per label and pooled over labels ("(all)").

    `rule` (HIT_RULES): "iou", a detection is a hit when it takes a ground-truth box of its label at
    IoU >= `iou_thr` (COCO's greedy matching by score; a second detection on a box is a false
    positive); "luna16", LUNA16's rule (`luna16_events`). The curve is swept over distinct scores;
    the sensitivity at a rate is the highest reached with at most that many false positives per
    image, over all `image_ids` (images without findings count). Returns the table and the curves
    (false positives per image, sensitivity) for plotting.
    """
    if rule not in HIT_RULES:
        raise ValueError(f"unknown FROC hit rule {rule!r}; choose one of {sorted(HIT_RULES)}")
    n_images = len(dict.fromkeys(image_ids))
    pooled_s, pooled_tp, pooled_n = [], [], 0
    rows, curves = [], {}

    def sweep(scores, tp, n_gt):
        order = np.argsort(-scores, kind="mergesort")
        s, t = scores[order], tp[order].astype(float)
        last = (
            np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
        )  # cut only between distinct scores
        sens = (np.cumsum(t) / max(n_gt, 1))[last]
        fppi = (np.cumsum(1 - t) / max(n_images, 1))[last]
        return np.r_[0.0, fppi], np.r_[0.0, sens]

    def row(name, scores, tp, n_gt):
        fppi, sens = sweep(scores, tp, n_gt)
        curves[name] = (fppi, sens)
        at = {f"sens@{r:g}": float(sens[fppi <= r].max()) if n_gt else np.nan for r in fp_rates}
        return {
            "hit_rule": rule,
            "label": name,
            "n_gt": n_gt,
            "n_pred": len(scores),
            **at,
            "cpm": float(np.mean(list(at.values()))) if n_gt else np.nan,
        }

    for label in labels:
        gt, pred = (
            ground_truth[ground_truth["label"] == label],
            predictions[predictions["label"] == label],
        )
        s, tp, n = match_label(gt, pred, iou_thr) if rule == "iou" else luna16_events(gt, pred)
        rows.append(row(label, s, tp, n))
        pooled_s.append(s)
        pooled_tp.append(tp)
        pooled_n += n
    if len(labels) > 1:
        rows.append(
            row(
                "(all)",
                np.concatenate(pooled_s) if pooled_s else np.zeros(0),
                np.concatenate(pooled_tp) if pooled_tp else np.zeros(0, bool),
                pooled_n,
            )
        )
    return pd.DataFrame(rows), curves


AGE_BANDS = ("<40", "40-60", ">60")


def age_band(age: float) -> str | None:
    """<40, 40-60 (both ends included) or >60 years; None when unknown."""
    if age is None or pd.isna(age):
        return None
    return "<40" if age < 40 else ("40-60" if age <= 60 else ">60")


def subgroups(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    labels,
    images: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    groups=None,
    min_boxes: int = MIN_TEST_BOXES,
) -> pd.DataFrame:
    """mAP50 (threshold-free) by subgroup of the given images: sex, age band and view position.

    `images`: image_id, sex, age, view (NIH test images: Data_Entry's columns). Each row: the group,
    its images, patients and boxes, mAP50 and a patient-level bootstrap 95% interval over that
    group's images (`groups`: image_id -> patient), or "too few test boxes (n)" in `note`.
    """
    meta = images.assign(age_band=images["age"].map(age_band))
    rows = []
    for attr, values in (("sex", ("M", "F")), ("age_band", AGE_BANDS), ("view", ("PA", "AP"))):
        for value in values:
            ids = list(meta.loc[meta[attr] == value, "image_id"])
            gt = ground_truth[ground_truth["image_id"].isin(ids)]
            pred = predictions[predictions["image_id"].isin(ids)]
            summary = summarise(evaluate(gt, pred, labels)) if ids else {"map50": np.nan}
            mean = (
                bootstrap_ci(
                    gt,
                    pred,
                    labels,
                    ids,
                    n_boot=n_boot,
                    seed=seed,
                    groups=groups,
                    min_boxes=min_boxes,
                )
                .set_index("label")
                .loc["(mean AP50)"]
                if ids
                else None
            )
            patients = len({(groups or {}).get(i, ("image", i)) for i in ids})
            rows.append(
                {
                    "attribute": attr,
                    "group": value,
                    "images": len(ids),
                    "patients": patients,
                    "boxes": len(gt),
                    "map50": summary["map50"],
                    "ci_low": float(mean["ci_low"]) if mean is not None else np.nan,
                    "ci_high": float(mean["ci_high"]) if mean is not None else np.nan,
                    "note": mean["note"] if mean is not None else "no images",
                }
            )
    return pd.DataFrame(rows)


def confusion_matrix(
    ground_truth: pd.DataFrame, predictions: pd.DataFrame, labels, iou_thr: float = 0.5
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
