"""An annotation batch as the tools take it: Label Studio tasks with pre-annotations and its labelling
interface, COCO JSON and CVAT for images 1.1 XML (the champion's boxes as predictions).

Boxes are labelled in NIH's box vocabulary (what drops are read in, `tool_formats`): a task whose
class merges NIH findings (Mass/Nodule, the binary tasks' "abnormality") offers the NIH findings
behind it, and a pre-annotation takes the image's listed finding of that class (the first, if it
lists several). Image references are file names only: nothing from a DICOM header, no patient.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd

from .classes import NIH_CLASSES, NIH_TO_UNITED, TaskSpec

#: Label Studio's names in the labelling interface (the export's from_name / to_name)
FROM_NAME, TO_NAME = "label", "image"


def nih_labels_of(task: TaskSpec) -> list[str]:
    """The NIH findings whose boxes are boxes of this task (the batch's label set)."""
    name = (lambda f: f) if task.source == "nih" else NIH_TO_UNITED.get
    return [f for f in NIH_CLASSES if name(f) in task.label_map]


def nih_label_for(
    task: TaskSpec, task_class: str, listed: list[str], boxed: frozenset | set = frozenset()
) -> str:
    """The NIH finding a pre-annotation of `task_class` is shown as on an image listing `listed`
    (still to box) and already boxed for `boxed`: a listed finding of that class, else one the image
    has no box of, else the first."""
    options = [
        f
        for f in nih_labels_of(task)
        if task.label_map.get(NIH_TO_UNITED.get(f, f)) == task_class
        or task.label_map.get(f) == task_class
    ]
    for f in listed:
        if f in options:
            return f
    free = [f for f in options if f not in boxed]
    return (free or options)[0]


def as_nih_labels(
    boxes: pd.DataFrame,
    task: TaskSpec,
    listed: dict[str, list[str]],
    boxed: dict[str, list[str]] | None = None,
):
    """`boxes` (in the task's classes) relabelled in NIH's vocabulary: each box takes its image's
    listed finding of that class (`nih_label_for`)."""
    boxed = boxed or {}
    return boxes.assign(
        label=[
            nih_label_for(task, c, listed[i], set(boxed.get(i, ())))
            for i, c in zip(boxes["image_id"], boxes["label"])
        ]
    )


def boxed_findings(boxes: pd.DataFrame, image_ids) -> dict[str, list[str]]:
    """image -> the NIH findings it already has boxes of (any source: the box list, every drop)."""
    mine = boxes[boxes["image_id"].isin(set(image_ids))]
    return {i: sorted(set(g["label"])) for i, g in mine.groupby("image_id")}


def pre_annotations(
    boxes: pd.DataFrame,
    task: TaskSpec,
    listed: dict[str, list[str]],
    boxed: dict[str, list[str]],
) -> pd.DataFrame:
    """The champion's boxes a batch proposes, in NIH's vocabulary: none for a finding the image
    already has boxes of (the drop would keep such a box out, and the radiologist's work on it with
    it), so only the findings still to box (and any the model finds that the image has no box of)."""
    named = as_nih_labels(boxes, task, listed, boxed)
    fresh = [
        label not in set(boxed.get(i, ())) for i, label in zip(named["image_id"], named["label"])
    ]
    return named[fresh].reset_index(drop=True)


def label_config(task: TaskSpec) -> str:
    """Label Studio's labelling interface: the image, its listed findings still to box as a hint,
    those it already has boxes of (never proposed), one rectangle label per NIH finding of the task."""
    labels = "\n".join(f'    <Label value="{f}"/>' for f in nih_labels_of(task))
    return (
        "<View>\n"
        '  <Header value="Listed in Data_Entry, to box: $findings"/>\n'
        '  <Header value="Already boxed (not proposed; a box of it is kept out): $boxed" size="6"/>\n'
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>"
    )


def _percent(r, width: int, height: int) -> dict:
    return {
        "x": 100.0 * r.x_min / width,
        "y": 100.0 * r.y_min / height,
        "width": 100.0 * (r.x_max - r.x_min) / width,
        "height": 100.0 * (r.y_max - r.y_min) / height,
        "rotation": 0,
    }


def label_studio_tasks(
    batch: pd.DataFrame, boxes: pd.DataFrame, model_version: str, url_of
) -> list[dict]:
    """One task per image in the batch's order (the acquisition's): `batch` has image_id, width,
    height, listed (NIH findings to box), boxed (listed findings it has boxes of), rank, score;
    `boxes` the pre-annotations (image_id, label in NIH's vocabulary, score, x_min..y_max in the
    image's pixels); `url_of(image_id)` the image's local-files URL. The prediction's score is the
    model's confidence (its most confident box, 0..1: what Label Studio shows); the acquisition
    score is the task's data (a column in Label Studio's data manager)."""
    by_image = dict(tuple(boxes.groupby("image_id"))) if len(boxes) else {}
    tasks = []
    for r in batch.itertuples(index=False):
        mine = by_image.get(r.image_id, boxes.iloc[0:0])
        result = [
            {
                "id": f"{r.image_id.split('.')[0]}-p{n}",
                "type": "rectanglelabels",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "original_width": int(r.width),
                "original_height": int(r.height),
                "image_rotation": 0,
                "value": {**_percent(b, r.width, r.height), "rectanglelabels": [b.label]},
                "score": round(float(b.score), 4),
            }
            for n, b in enumerate(mine.itertuples(index=False), start=1)
        ]
        tasks.append(
            {
                "data": {
                    "image": url_of(r.image_id),
                    "image_id": r.image_id,
                    "findings": ", ".join(r.listed) or "none",
                    "boxed": ", ".join(r.boxed) or "none",
                    "rank": int(r.rank),
                    "acquisition_score": None if pd.isna(r.score) else round(float(r.score), 4),
                },
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": round(float(mine["score"].max()), 4) if len(mine) else None,
                        "result": result,
                    }
                ],
            }
        )
    return tasks


def coco(batch: pd.DataFrame, boxes: pd.DataFrame, task: TaskSpec) -> str:
    """COCO detection JSON of the batch: its images and the champion's boxes (with `score`)."""
    names = nih_labels_of(task)
    ids = {r.image_id: n for n, r in enumerate(batch.itertuples(index=False), start=1)}
    doc = {
        "info": {"description": f"xray-assets annotation batch ({task.name})"},
        "images": [
            {
                "id": ids[r.image_id],
                "file_name": r.image_id,
                "width": int(r.width),
                "height": int(r.height),
            }
            for r in batch.itertuples(index=False)
        ],
        "categories": [{"id": n, "name": c} for n, c in enumerate(names, start=1)],
        "annotations": [
            {
                "id": n,
                "image_id": ids[b.image_id],
                "category_id": names.index(b.label) + 1,
                "bbox": [b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min],
                "area": (b.x_max - b.x_min) * (b.y_max - b.y_min),
                "iscrowd": 0,
                "score": round(float(b.score), 4),
            }
            for n, b in enumerate(boxes.itertuples(index=False), start=1)
        ],
    }
    return json.dumps(doc, indent=1)


def cvat(batch: pd.DataFrame, boxes: pd.DataFrame, task: TaskSpec) -> str:
    """CVAT for images 1.1 XML of the batch (its labels in the meta, the champion's boxes)."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(meta, "name").text = f"xray-assets {task.name}"
    labels = ET.SubElement(meta, "labels")
    for c in nih_labels_of(task):
        ET.SubElement(ET.SubElement(labels, "label"), "name").text = c
    by_image = dict(tuple(boxes.groupby("image_id"))) if len(boxes) else {}
    for n, r in enumerate(batch.itertuples(index=False)):
        image = ET.SubElement(
            root,
            "image",
            id=str(n),
            name=r.image_id,
            width=str(int(r.width)),
            height=str(int(r.height)),
        )
        for b in by_image.get(r.image_id, boxes.iloc[0:0]).itertuples(index=False):
            ET.SubElement(
                image,
                "box",
                label=b.label,
                source="auto",
                occluded="0",
                xtl=f"{b.x_min:.2f}",
                ytl=f"{b.y_min:.2f}",
                xbr=f"{b.x_max:.2f}",
                ybr=f"{b.y_max:.2f}",
                z_order="0",
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
