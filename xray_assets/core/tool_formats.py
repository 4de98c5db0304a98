"""Annotation tools' exports read as boxes: COCO JSON, YOLO (a labels folder and the class names),
CVAT for images 1.1 XML and Label Studio's JSON export.

Each reader returns the same table, in NIH's box vocabulary and in the pixels of the image as it
is stored in the data (`image_size(image_id)` gives its width and height):

    image_id, label, x_min, y_min, x_max, y_max,
    tool, project, task, annotator, lead_time_s, origin, score, model_version

`origin` says where a box came from: `added` by the annotator, a pre-annotation `accepted`
unchanged, `edited`, or `deleted` (a pre-annotation the annotator removed: evidence of a false
positive, not a box). Only Label Studio's export tells these apart (its predictions beside the
annotations); the other formats' boxes are `added`. `annotator` is a pseudonym (see
`pseudonym`), never an e-mail or a name.

Every problem raises `ToolFormatError` naming the file and the record (an unknown class, a box
outside its image, an image not in the data or the drop).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

import pandas as pd

from . import layout
from .classes import NIH_CLASSES

COLUMNS = [
    "image_id",
    "label",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
    "tool",
    "project",
    "task",
    "annotator",
    "lead_time_s",
    "origin",
    "score",
    "model_version",
]
ORIGINS = ("accepted", "edited", "added", "deleted")
#: where a YOLO export names its classes, a name per line (else its data.yaml's `names`)
YOLO_NAME_FILES = ("classes.txt", "obj.names")
#: a box may overhang its image by this many pixels (tools round); beyond it the record is rejected
EDGE_TOLERANCE_PX = 1.0

#: every spelling a tool or a dataset uses for a finding -> NIH's box class (lower-cased keys)
SYNONYMS: dict[str, str] = {
    **{c.lower(): c for c in NIH_CLASSES},
    "infiltration": "Infiltrate",
    "infiltrates": "Infiltrate",
    "pleural effusion": "Effusion",
    "pleural_effusion": "Effusion",
    "effusions": "Effusion",
    "collapse": "Atelectasis",
    "enlarged heart": "Cardiomegaly",
    "nodules": "Nodule",
    "lung nodule": "Nodule",
    "masses": "Mass",
    "lung mass": "Mass",
    "ptx": "Pneumothorax",
}
#: names that cannot be one NIH box class: NIH boxes Mass and Nodule apart
AMBIGUOUS = {"nodule/mass", "mass/nodule", "mass_nodule", "nodule_mass"}


class ToolFormatError(ValueError):
    """An export that cannot be read as boxes: the message names the file and the record."""


def finding(name: str, where: str) -> str:
    """A tool's class name as NIH's box class, through the synonym table."""
    key = " ".join(str(name).strip().lower().split())
    if key in AMBIGUOUS:
        raise ToolFormatError(
            f"{where}: class {name!r} is ambiguous for NIH images, which box Mass and Nodule "
            "apart: label the box Mass or Nodule"
        )
    if key not in SYNONYMS:
        raise ToolFormatError(
            f"{where}: unknown class {name!r} (known: {', '.join(NIH_CLASSES)} and their "
            "synonyms in core/tool_formats.py)"
        )
    return SYNONYMS[key]


def pseudonym(identity: object, key: bytes) -> str:
    """An annotator's stable pseudonym: a keyed hash of the tool's identity (id or e-mail), so the
    same person reads the same across drops and nobody can read the identity back from it."""
    return "annotator-" + hmac.new(key, str(identity).encode(), hashlib.sha256).hexdigest()[:12]


def image_id_from(reference: str) -> str:
    """The image id (its file name) from a tool's reference to it: a path, a URL or Label Studio's
    local-files URL (`/data/local-files/?d=nih/images/00000013_005.png`)."""
    parsed = urlparse(str(reference))
    if parsed.query:
        d = parse_qs(parsed.query).get("d")
        if d:
            return PurePosixPath(unquote(d[0])).name
    return PurePosixPath(unquote(parsed.path or str(reference)).replace("\\", "/")).name


SizeOf = Callable[[str], "tuple[int, int] | None"]


class _Builder:
    """Collects a file's boxes, converting each into the stored image's pixels and checking it."""

    def __init__(self, path: Path, tool: str, size_of: SizeOf):
        self.path, self.tool, self.size_of = path, tool, size_of
        self.rows: list[dict] = []

    def size(self, image_id: str, where: str) -> tuple[int, int]:
        size = self.size_of(image_id)
        if size is None:
            raise ToolFormatError(
                f"{self.path.name}, {where}: image {image_id!r} is neither in the data nor in the drop"
            )
        return size

    def add(
        self,
        where: str,
        image_id: str,
        label: str,
        box: tuple[float, float, float, float],
        declared: tuple[float, float] | None,
        **provenance,
    ) -> None:
        """`box`: x_min, y_min, x_max, y_max in the export's pixels of an image it says is
        `declared` (width, height) big; None: the box is already in the stored image's pixels."""
        w, h = self.size(image_id, where)
        sx, sy = (w / declared[0], h / declared[1]) if declared else (1.0, 1.0)
        x0, y0, x1, y1 = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ToolFormatError(f"{self.path.name}, {where}: a coordinate is not a number")
        if x1 <= x0 or y1 <= y0:
            raise ToolFormatError(f"{self.path.name}, {where}: the box has no area")
        t = EDGE_TOLERANCE_PX
        if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
            raise ToolFormatError(
                f"{self.path.name}, {where}: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) lies "
                f"outside image {image_id} ({w} x {h} px)"
            )
        self.rows.append(
            {
                "image_id": image_id,
                "label": finding(label, f"{self.path.name}, {where}"),
                "x_min": max(0.0, x0),
                "y_min": max(0.0, y0),
                "x_max": min(float(w), x1),
                "y_max": min(float(h), y1),
                "tool": self.tool,
                "project": "",
                "task": "",
                "annotator": "",
                "lead_time_s": float("nan"),
                "origin": "added",
                "score": float("nan"),
                "model_version": "",
                **provenance,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ToolFormatError(f"{path.name}: not readable JSON ({exc})") from None


def read_coco(path: Path, size_of: SizeOf) -> pd.DataFrame:
    """COCO detection JSON: `images` (id, file_name, width, height), `categories` (id, name),
    `annotations` (image_id, category_id, bbox = [x, y, width, height] in the image's pixels)."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ToolFormatError(f"{path.name}: not COCO (images, annotations, categories)")
    b = _Builder(path, "coco", size_of)
    images = {im.get("id"): im for im in doc["images"] if isinstance(im, dict)}
    categories = {c.get("id"): c.get("name") for c in doc["categories"] if isinstance(c, dict)}
    for n, ann in enumerate(doc["annotations"]):
        where = f"annotation {ann.get('id', n) if isinstance(ann, dict) else n}"
        try:
            im = images[ann["image_id"]]
            name = categories[ann["category_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ToolFormatError(
                f"{path.name}, {where}: needs image_id and category_id that the file defines "
                "and a bbox [x, y, width, height]"
            ) from None
        declared = (float(im["width"]), float(im["height"])) if im.get("width") else None
        b.add(
            where,
            image_id_from(im.get("file_name", "")),
            name,
            (x, y, x + w, y + h),
            declared,
            score=float(ann.get("score", float("nan"))),
        )
    return b.frame()


def read_yolo(labels_dir: Path, class_names: list[str], images: list[str], size_of: SizeOf):
    """YOLO: one `<image stem>.txt` per image, a line `class cx cy w h` (normalised to 0..1);
    `class_names` in index order (classes.txt, obj.names or data.yaml's names); `images`: the image
    ids the stems resolve to (the drop's and the data's)."""
    by_stem = {Path(i).stem: i for i in images}
    frames = []
    for txt in sorted(labels_dir.glob("*.txt")):
        if txt.name in YOLO_NAME_FILES:
            continue
        b = _Builder(txt, "yolo", size_of)
        image_id = by_stem.get(txt.stem)
        if image_id is None:
            raise ToolFormatError(
                f"{txt.name}: no image {txt.stem}.* in the data or the drop for this label file"
            )
        for n, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                if len(parts) != 5 or not 0 <= cls < len(class_names):
                    raise ValueError
            except (ValueError, IndexError):
                raise ToolFormatError(
                    f"{txt.name} line {n}: expected `class cx cy w h` with class 0.."
                    f"{len(class_names) - 1}, got {line.strip()[:60]!r}"
                ) from None
            b.add(
                f"line {n}",
                image_id,
                class_names[cls],
                (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                (1.0, 1.0),
            )
        frames.append(b.frame())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def yolo_class_names(folder: Path) -> list[str] | None:
    """The class names of a YOLO export: classes.txt / obj.names (a name per line) or data.yaml."""
    for name in YOLO_NAME_FILES:
        found = sorted(folder.rglob(name))
        if found:
            return [
                n.strip()
                for n in found[0].read_text(encoding="utf-8-sig").splitlines()
                if n.strip()
            ]
    for found in sorted(folder.rglob(layout.DATA_YAML)):
        import yaml

        names = (yaml.safe_load(found.read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    return None


def read_cvat(path: Path, size_of: SizeOf) -> pd.DataFrame:
    """CVAT for images 1.1: `<image name= width= height=>` holding `<box label= xtl= ytl= xbr= ybr=>`."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ToolFormatError(f"{path.name}: not readable XML ({exc})") from None
    if root.tag != "annotations":
        raise ToolFormatError(f"{path.name}: not CVAT for images XML (root <{root.tag}>)")
    b = _Builder(path, "cvat", size_of)
    for image in root.iter("image"):
        name = image.get("name", "")
        for n, box in enumerate(image.iter("box"), start=1):
            where = f"image {name!r} box {n}"
            try:
                coords = tuple(float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                declared = (float(image.get("width")), float(image.get("height")))
            except (TypeError, ValueError):
                raise ToolFormatError(
                    f"{path.name}, {where}: needs numeric xtl, ytl, xbr, ybr and the image's "
                    "width and height"
                ) from None
            b.add(where, image_id_from(name), box.get("label", ""), coords, declared)
    return b.frame()


def _ls_box(item: dict, where: str, path: Path) -> tuple[str, tuple, tuple]:
    try:
        value = item["value"]
        label = value["rectanglelabels"][0]
        x, y = float(value["x"]), float(value["y"])
        w, h = float(value["width"]), float(value["height"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ToolFormatError(
            f"{path.name}, {where}: a rectangle needs x, y, width, height (percent) and a label"
        ) from None
    if float(value.get("rotation") or 0) != 0:
        raise ToolFormatError(f"{path.name}, {where}: rotated boxes are not supported")
    return label, (x, y, x + w, y + h), (100.0, 100.0)


def _same_box(a: dict, b: dict) -> bool:
    va, vb = a.get("value", {}), b.get("value", {})
    keys = ("x", "y", "width", "height")
    return all(abs(float(va.get(k, 0)) - float(vb.get(k, 0))) < 1e-6 for k in keys) and (
        va.get("rectanglelabels") == vb.get("rectanglelabels")
    )


def read_label_studio(path: Path, size_of: SizeOf, key: bytes) -> pd.DataFrame:
    """Label Studio's JSON export: a list of tasks, each with `data` (the image), `predictions`
    (the pre-annotations it was given) and `annotations` (what annotators submitted). A result item
    keeps its prediction's `id` when the annotator keeps the box: the same id and value is an
    accepted pre-annotation, the same id moved or relabelled an edited one, a new id an added box,
    and a prediction id missing from the annotation a deleted pre-annotation. Cancelled (skipped)
    annotations are left out."""
    doc = _load_json(path)
    if not isinstance(doc, list):
        raise ToolFormatError(f"{path.name}: not a Label Studio JSON export (a list of tasks)")
    b = _Builder(path, "label-studio", size_of)
    for t in doc:
        if not isinstance(t, dict):
            raise ToolFormatError(f"{path.name}: a task that is not an object")
        tid = t.get("id", "?")
        image_ref = next(iter((t.get("data") or {}).values()), None)
        if not image_ref:
            raise ToolFormatError(f"{path.name}, task {tid}: no image in its data")
        image_id = image_id_from(image_ref)
        predicted: dict[str, tuple[dict, dict]] = {}
        for p in t.get("predictions") or []:
            for item in p.get("result") or []:
                if item.get("type") == "rectanglelabels":
                    predicted[item.get("id")] = (item, p)
        for a in t.get("annotations") or []:
            if a.get("was_cancelled"):
                continue
            who = a.get("completed_by")
            who = who.get("id", who.get("email")) if isinstance(who, dict) else who
            common = {
                "project": str(t.get("project", "")),
                "task": str(tid),
                "annotator": pseudonym(who, key) if who is not None else "",
                "lead_time_s": float("nan")
                if a.get("lead_time") is None
                else float(a["lead_time"]),
            }
            kept = set()
            for n, item in enumerate(a.get("result") or [], start=1):
                if item.get("type") != "rectanglelabels":
                    continue
                where = f"task {tid} annotation {a.get('id', '?')} result {item.get('id', n)}"
                label, box, declared = _ls_box(item, where, path)
                pred = predicted.get(item.get("id"))
                if pred is not None:
                    kept.add(item.get("id"))
                    origin = "accepted" if _same_box(item, pred[0]) else "edited"
                    extra = {
                        "score": float(pred[0].get("score", pred[1].get("score")) or float("nan")),
                        "model_version": str(pred[1].get("model_version") or ""),
                    }
                else:
                    origin, extra = "added", {}
                b.add(where, image_id, label, box, declared, origin=origin, **common, **extra)
            for pid, (item, p) in predicted.items():
                if pid in kept:
                    continue
                where = f"task {tid} prediction {pid}"
                label, box, declared = _ls_box(item, where, path)
                b.add(
                    where,
                    image_id,
                    label,
                    box,
                    declared,
                    origin="deleted",
                    score=float(item.get("score", p.get("score")) or float("nan")),
                    model_version=str(p.get("model_version") or ""),
                    **common,
                )
    return b.frame()


def label_studio_annotated(path: Path) -> pd.DataFrame:
    """(project, task, image_id) of every task in a Label Studio export with a submitted
    annotation, boxes or none (an image the radiologist found normal is an answer too)."""
    doc = _load_json(path)
    rows = [
        (
            str(t.get("project", "")),
            str(t.get("id", "")),
            image_id_from(next(iter((t.get("data") or {}).values()), "")),
        )
        for t in doc
        if isinstance(t, dict)
        and any(not a.get("was_cancelled") for a in t.get("annotations") or [])
    ]
    return pd.DataFrame(rows, columns=["project", "task", "image_id"])


def origin_counts(boxes: pd.DataFrame) -> dict[str, int]:
    """How many boxes of each origin (every origin named, zeros included)."""
    counts = boxes["origin"].value_counts() if len(boxes) else pd.Series(dtype=int)
    return {o: int(counts.get(o, 0)) for o in ORIGINS}
