"""One YOLO-format dataset per task: linked images, normalised labels, data.yaml.

Layout (what ultralytics expects): `images/<split>/<name>.png` links and `labels/<split>/<name>.txt`.
A one-class task uses every image of its source; an image without that class is a negative for it.
An NIH image whose Data_Entry lists one of the task's findings without a box for it
(`unboxed_findings`) is left out of the test split always (the finding is visible but unlabelled, so
a correct detection would count as a false positive), and out of train and val only when the profile
says `exclude_unboxed_findings` (not the default: the active-learning simulation measured that keeping
them trains better, `benchmarks/bench_active_learning.py`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import layout
from .classes import TaskSpec
from .splits import SPLITS

COORDS = ["x_min", "y_min", "x_max", "y_max"]


def task_boxes(boxes: pd.DataFrame, task: TaskSpec) -> pd.DataFrame:
    """Boxes of the task's classes, with `class_index` and the task's class name in `label`.

    `boxes` carries the source's class name in `label` (NIH names for `nih` tasks, united names for
    `united` tasks).
    """
    mapped = boxes["label"].map(task.label_map)
    out = boxes[mapped.notna()].copy()
    out["label"] = mapped[mapped.notna()]
    out["class_index"] = out["label"].map(task.class_index()).astype(int)
    return out.reset_index(drop=True)


def unboxed_findings(
    nih_labels: pd.DataFrame, nih_boxes: pd.DataFrame, task: TaskSpec, image_ids=None
) -> pd.DataFrame:
    """(image_id, finding) for each NIH image whose Data_Entry `findings` list a box class of the
    task with no box of that finding on the image. Findings are compared in the task's vocabulary:
    NIH names for NIH tasks, united names for united tasks (a listed Mass with a Nodule box is boxed
    for Mass/Nodule). `image_ids`: restrict to these images (default: every Data_Entry row)."""
    from .classes import NIH_CLASSES, NIH_TO_UNITED

    name = (lambda f: f) if task.source == "nih" else NIH_TO_UNITED.get
    labels = nih_labels[["image_id", "findings"]]
    if image_ids is not None:
        labels = labels[labels["image_id"].isin(set(image_ids))]
    listed = labels.explode("findings").dropna(subset=["findings"])
    listed = listed[listed["findings"].isin(NIH_CLASSES)]
    listed = listed.assign(finding=listed["findings"].map(name))
    listed = listed[listed["finding"].isin(list(task.label_map))]
    boxed = set(zip(nih_boxes["image_id"], nih_boxes["label"].map(name)))
    keep = [(i, f) not in boxed for i, f in zip(listed["image_id"], listed["finding"])]
    return listed.loc[keep, ["image_id", "finding"]].drop_duplicates().reset_index(drop=True)


def task_inputs(
    splits: pd.DataFrame,
    nih_boxes: pd.DataFrame,
    vbd_boxes: pd.DataFrame,
    task: TaskSpec,
    nih_labels: pd.DataFrame | None = None,
    exclude_unboxed: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(images, boxes, excluded) of a task, every box in the pixels of its own (converted) image.

    `splits`: the patient_splits table (image_id, source, width, height, orig_width, orig_height, ...).
    NIH boxes already live in the 1024 px PNG space; VinBigData boxes are in the DICOM's original
    pixels and are scaled to the converted image. Labels: NIH names for `nih` tasks, united names else.
    `excluded`: (image_id, finding, split) of the NIH images left out because `nih_labels` lists a
    finding of the task without a box: always from the test split (a correct detection there would
    have no box to match), from train and val only when `exclude_unboxed`.
    """
    from .classes import NIH_TO_UNITED

    excluded = pd.DataFrame(columns=["image_id", "finding", "split"])
    if nih_labels is not None:
        nih_ids = splits.loc[splits["source"] == "nih", "image_id"]
        found = unboxed_findings(nih_labels, nih_boxes, task, nih_ids)
        excluded = found.merge(splits[["image_id", "split"]], on="image_id", how="left")
        if not exclude_unboxed:
            excluded = excluded[excluded["split"] == "test"].reset_index(drop=True)
        splits = splits[~splits["image_id"].isin(set(excluded["image_id"]))]
    nb = nih_boxes[["image_id", "label", *COORDS]]
    if task.source == "nih":
        images = splits[splits["source"] == "nih"].reset_index(drop=True)
        return images, nb[nb["image_id"].isin(images["image_id"])].reset_index(drop=True), excluded
    nb = nb.assign(label=nb["label"].map(NIH_TO_UNITED))
    sizes = splits.set_index("image_id")
    vb = vbd_boxes[vbd_boxes["image_id"].isin(sizes.index)]
    sx = vb["image_id"].map(sizes["width"] / sizes["orig_width"])
    sy = vb["image_id"].map(sizes["height"] / sizes["orig_height"])
    vb = pd.DataFrame(
        {
            "image_id": vb["image_id"],
            "label": vb["united"],
            "x_min": vb["x_min"] * sx,
            "y_min": vb["y_min"] * sy,
            "x_max": vb["x_max"] * sx,
            "y_max": vb["y_max"] * sy,
        }
    )
    boxes = pd.concat([nb[nb["image_id"].isin(splits["image_id"])], vb], ignore_index=True)
    return splits.reset_index(drop=True), boxes, excluded


def yolo_lines(boxes: pd.DataFrame, width: float, height: float) -> list[str]:
    lines = []
    for r in boxes.itertuples(index=False):
        x0, x1 = np.clip([r.x_min, r.x_max], 0, width)
        y0, y1 = np.clip([r.y_min, r.y_max], 0, height)
        if x1 <= x0 or y1 <= y0:
            continue
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(
            f"{r.class_index} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
        )
    return lines


def read_yolo_label(path: str | Path, width: float, height: float) -> np.ndarray:
    """(N, 5) rows of class, x_min, y_min, x_max, y_max in pixels."""
    rows = []
    text = Path(path).read_text().strip() if Path(path).exists() else ""
    for line in text.splitlines():
        c, cx, cy, w, h = (float(v) for v in line.split())
        rows.append(
            (
                c,
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
        )
    return np.asarray(rows, dtype=float).reshape(-1, 5)


def build_dataset(
    out_dir: str | Path,
    task: TaskSpec,
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    final_dir: str | Path | None = None,
) -> dict:
    """Write the dataset into `out_dir` (a fresh folder). Returns its summary.

    `images`: image_id, path, width, height, split. `boxes`: image_id, label, x_min..y_max in the
    pixels of the image at `path`. `final_dir`: where the folder will live once moved into place
    (an atomic write builds it elsewhere); data.yaml and the split lists name paths there.
    """
    out = Path(out_dir)
    final = Path(final_dir or out_dir).resolve()
    tb = task_boxes(boxes, task)
    by_image = {k: g for k, g in tb.groupby("image_id", sort=False)}
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    manifest = []
    for r in images.sort_values("image_id").itertuples(index=False):
        stem = Path(str(r.image_id)).stem
        img_link = out / "images" / r.split / f"{stem}{Path(r.path).suffix}"
        label = out / "labels" / r.split / f"{stem}.txt"
        img_link.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(r.path), img_link)
        b = by_image.get(r.image_id, tb.iloc[0:0])
        lines = yolo_lines(b, r.width, r.height)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
        lists[r.split].append(str(final / "images" / r.split / img_link.name))
        manifest.append({"image_id": r.image_id, "split": r.split, "n_boxes": len(lines)})
    for split, items in lists.items():
        (out / f"{split}.txt").write_text("\n".join(items) + ("\n" if items else ""))
    data = {
        "path": str(final),
        "train": str(final / "train.txt"),
        "val": str(final / "val.txt"),
        "test": str(final / "test.txt"),
        "names": {i: c for i, c in enumerate(task.classes)},
    }
    (out / layout.DATA_YAML).write_text(yaml.safe_dump(data, sort_keys=False))
    return {"manifest": pd.DataFrame(manifest), "boxes": tb}


def instances_table(images: pd.DataFrame, tb: pd.DataFrame, classes) -> pd.DataFrame:
    """Instances per class per split (+ images per split)."""
    merged = tb.merge(images[["image_id", "split"]], on="image_id")
    table = (
        merged.groupby(["label", "split"])
        .size()
        .unstack("split")
        .reindex(index=list(classes), columns=list(SPLITS))
        .fillna(0)
        .astype(int)
    )
    table.loc["(images)"] = (
        images.groupby("split").size().reindex(list(SPLITS)).fillna(0).astype(int)
    )
    table.loc["(negative images)"] = (
        images[~images["image_id"].isin(tb["image_id"])]
        .groupby("split")
        .size()
        .reindex(list(SPLITS))
        .fillna(0)
        .astype(int)
    )
    return table.reset_index().rename(columns={"index": "class", "label": "class"})


def content_hash(images: pd.DataFrame, tb: pd.DataFrame) -> str:
    """Hash of what a model sees: image ids, sources' content keys, splits and boxes."""
    h = hashlib.sha256()
    cols = [
        c for c in ("image_id", "split", "source_hash", "width", "height") if c in images.columns
    ]
    h.update(images.sort_values("image_id")[cols].to_csv(index=False).encode())
    h.update(
        tb.sort_values(["image_id", "class_index", *COORDS])[["image_id", "class_index", *COORDS]]
        .round(3)
        .to_csv(index=False)
        .encode()
    )
    return h.hexdigest()[:16]


def dataset_checks(
    images: pd.DataFrame, boxes: pd.DataFrame, classes, root: Path | None = None
) -> dict[str, tuple[bool, dict]]:
    """The joins a training set must satisfy: name -> (passed, facts).

    `images`: image_id, group, split, path, width, height; `boxes`: the task's boxes (label, coords).
    """
    out: dict[str, tuple[bool, dict]] = {}
    per_group = images.groupby("group")["split"].nunique()
    leaked = per_group[per_group > 1]
    out["no_patient_in_two_splits"] = (
        leaked.empty,
        {
            "leaked_patients": len(leaked),
            "examples": ", ".join(map(str, leaked.index[:10])) or "none",
        },
    )
    sized = boxes.merge(images[["image_id", "width", "height"]], on="image_id", how="left")
    bad = sized[
        (sized.x_min < -0.5)
        | (sized.y_min < -0.5)
        | (sized.x_max > sized.width + 0.5)
        | (sized.y_max > sized.height + 0.5)
        | (sized.x_max <= sized.x_min)
        | (sized.y_max <= sized.y_min)
        | sized.width.isna()
    ]
    out["boxes_inside_images"] = (
        bad.empty,
        {
            "bad_boxes": len(bad),
            "examples": ", ".join(bad["image_id"].astype(str).head(5)) or "none",
        },
    )
    merged = boxes.merge(images[["image_id", "split"]], on="image_id")
    missing = [
        f"{c}/{s}"
        for c in classes
        for s in SPLITS
        if not ((merged["label"] == c) & (merged["split"] == s)).any()
    ]
    out["every_class_in_every_split"] = (not missing, {"missing": ", ".join(missing) or "none"})
    absent = [p for p in images["path"] if not Path(p).exists()]
    out["listed_images_exist"] = (
        not absent,
        {"missing_images": len(absent), "examples": ", ".join(map(str, absent[:5])) or "none"},
    )
    return out
