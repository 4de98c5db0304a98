"""Turning three radiologists' reads of a VinBigData image into one set of boxes per class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .classes import UNITED_CLASSES, VINBIGDATA_TO_UNITED
from .metrics import pair_iou

COORDS = ["x_min", "y_min", "x_max", "y_max"]


def to_united(annotations: pd.DataFrame) -> pd.DataFrame:
    """Rows whose class maps to one of the study's six VinBigData classes, with a `united` column."""
    united = annotations["class_id"].map(VINBIGDATA_TO_UNITED)
    out = annotations[united.notna()].copy()
    out["united"] = united[united.notna()]
    return out


def majority_radiologist(annotations: pd.DataFrame) -> pd.DataFrame:
    """The study's rule: per image and united class, keep only the boxes of the radiologist who drew
    the most boxes of that class on that image; ties go to the smallest rad_id as a string.

    Rows outside the six mapped classes (and "No finding") are dropped. Same columns, kept rows.
    """
    rows = to_united(annotations)
    if rows.empty:
        return annotations.iloc[0:0].copy()
    counts = (
        rows.groupby(["image_id", "united", "rad_id"], sort=False).size().rename("n").reset_index()
    )
    counts = counts.sort_values(
        ["image_id", "united", "n", "rad_id"], ascending=[True, True, False, True], kind="mergesort"
    )
    winners = counts.drop_duplicates(["image_id", "united"], keep="first")[
        ["image_id", "united", "rad_id"]
    ]
    kept = rows.merge(winners, on=["image_id", "united", "rad_id"], how="inner")
    return kept[list(annotations.columns)].reset_index(drop=True)


def weighted_boxes_fusion(
    annotations: pd.DataFrame, image_sizes: pd.DataFrame, iou_thr: float = 0.4
) -> pd.DataFrame:
    """WBF (ensemble-boxes) over radiologists, each box scored 1.0, per image and united class.

    `image_sizes`: image_id, width, height (the DICOM's original size, the boxes' pixel space).
    Returns the input columns; `rad_id` is "wbf" and `class_id` the first source id of that class.
    """
    from ensemble_boxes import weighted_boxes_fusion as wbf

    rows = to_united(annotations)
    sizes = image_sizes.set_index("image_id")[["width", "height"]]
    missing = set(rows["image_id"]) - set(sizes.index)
    if missing:
        raise KeyError(f"no image size for {len(missing)} image(s), e.g. {sorted(missing)[:3]}")
    cls_index = {c: i for i, c in enumerate(UNITED_CLASSES)}
    first_id = rows.groupby("united")["class_id"].first().to_dict()
    first_label = rows.groupby("united")["label"].first().to_dict()
    out = []
    for image_id, g in rows.groupby("image_id", sort=True):
        w, h = sizes.loc[image_id]
        boxes, scores, labels = [], [], []
        for _, r in g.groupby("rad_id", sort=True):
            b = r[COORDS].to_numpy(float) / [w, h, w, h]
            boxes.append(np.clip(b, 0, 1).tolist())
            scores.append([1.0] * len(r))
            labels.append([cls_index[u] for u in r["united"]])
        fb, fs, fl = wbf(boxes, scores, labels, iou_thr=iou_thr, skip_box_thr=0.0)
        for (x0, y0, x1, y1), lab in zip(fb, fl):
            united = UNITED_CLASSES[int(lab)]
            out.append(
                {
                    "image_id": image_id,
                    "label": first_label[united],
                    "class_id": first_id[united],
                    "rad_id": "wbf",
                    "x_min": x0 * w,
                    "y_min": y0 * h,
                    "x_max": x1 * w,
                    "y_max": y1 * h,
                }
            )
    return pd.DataFrame(out, columns=list(annotations.columns))


def reader_agreement(annotations: pd.DataFrame) -> pd.DataFrame:
    """Per united class: mean IoU of matched boxes between each pair of radiologists on an image
    (greedy best-IoU matching; unmatched boxes are left out), and how many pairs were compared.

    Every (box of reader a, box of reader b) pair on the same image and class, a < b, has its IoU
    computed at once; the greedy matching (the highest IoU first, ties to the earlier box of a, then
    of b; a box matched once is done) is one pass over the pairs with a positive IoU, sorted."""
    rows = to_united(annotations)[["image_id", "united", "rad_id", *COORDS]].reset_index(drop=True)
    rows["rad_id"] = rows["rad_id"].astype(str)
    rows["k"] = rows.groupby(["image_id", "united", "rad_id"], sort=False).cumcount()
    pairs = rows.merge(rows, on=["image_id", "united"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["rad_id_a"] < pairs["rad_id_b"]]
    iou = pair_iou(
        pairs[[f"{c}_a" for c in COORDS]].to_numpy(float),
        pairs[[f"{c}_b" for c in COORDS]].to_numpy(float),
    )
    pairs = pairs.assign(iou=iou)[iou > 0]
    group = ["image_id", "united", "rad_id_a", "rad_id_b"]
    pairs = pairs.assign(neg=-pairs["iou"]).sort_values(
        [*group, "neg", "k_a", "k_b"], kind="stable"
    )
    ious: dict[str, list[float]] = {c: [] for c in UNITED_CLASSES}
    used_a: set = set()
    used_b: set = set()
    for image_id, united, ra, rb, ka, kb, v in zip(
        *(pairs[c].to_numpy() for c in (*group, "k_a", "k_b", "iou"))
    ):
        key_a, key_b = (image_id, united, ra, rb, ka), (image_id, united, ra, rb, kb)
        if key_a in used_a or key_b in used_b:
            continue
        used_a.add(key_a)
        used_b.add(key_b)
        ious[united].append(float(v))
    return pd.DataFrame(
        {
            "class": list(UNITED_CLASSES),
            "mean_pairwise_iou": [float(np.mean(v)) if v else np.nan for v in ious.values()],
            "matched_pairs": [len(v) for v in ious.values()],
        }
    )
