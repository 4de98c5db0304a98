"""The annotation inbox: radiologists drop new annotations; complete drops are validated and accepted.

A drop is a folder under the inbox holding either
- NIH format: a box list (`BBox_List_2017.csv` header) and a Data_Entry table (`Data_Entry_2017.csv`
  header, which gives each new image its patient) plus the PNGs they name,
- an annotation tool's export of NIH images (`core/tool_formats.py`): COCO JSON, YOLO (labels and
  class names), CVAT for images 1.1 XML or Label Studio's JSON, with a Data_Entry table and the PNG
  for any image new to the data, or
- VinBigData format: a `train.csv`-format table plus the `<image_id>.dicom` files it names,
and it is complete when it holds a `READY` file. Validation reads the files with the same checked
readers as ingestion: any quarantined row, unknown label, missing image or bad record rejects the
whole drop. An NIH drop may box an image already in the data for a finding that has no box there
yet; a box for an (image, finding) that already has boxes from another source is kept out (the
original boxes stand) and reported in the drop's `kept_out` table. Nothing here writes the raw data: an accepted drop's rows and images are
stored beside it under the storage root (see `defs/drops.py`), and the folder is archived under
`accepted/` (or `rejected/` with an `ERROR.txt`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import tool_formats
from .bounds import DEFAULT_MAX_MEGAPIXELS
from .labels import (
    InputFormatError,
    read_nih_boxes_checked,
    read_nih_labels_checked,
    read_vinbigdata_annotations_checked,
)

READY = "READY"
ERROR_FILE = "ERROR.txt"
ARCHIVES = ("accepted", "rejected", "merged")
HEADERS = {
    "nih_boxes": "Image Index,Finding Label,",
    "nih_labels": "Image Index,Finding Labels,",
    "vinbigdata": "image_id,class_name,class_id,rad_id,",
}


class DropError(ValueError):
    """A drop that cannot be accepted; the message says why, naming the file and row."""


@dataclass(frozen=True)
class Known:
    """What the data holds already, for validating a drop against it."""

    nih: set[str] = field(default_factory=set)  # NIH image ids
    vinbigdata: set[str] = field(default_factory=set)  # VinBigData image ids
    #: (image id, finding) pairs that have NIH boxes (the original box list and other drops), each
    #: with where its boxes come from when known (a set of pairs is taken too)
    boxed: dict[tuple[str, str], str] | set[tuple[str, str]] = field(default_factory=dict)
    #: an NIH image's stored (width, height), from its file's header; None: not in the data
    nih_size: "tool_formats.SizeOf" = lambda image_id: None


@dataclass
class Drop:
    path: Path
    fmt: str = ""  # "nih", "vinbigdata" or a tool's ("coco", "yolo", "cvat", "label-studio")
    digest: str = ""  # sha256 over every file's name and bytes
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # parsed rows, by table name
    images: dict[str, Path] = field(default_factory=dict)  # image id (file name for NIH) -> file
    summary: dict = field(default_factory=dict)


def pending(inbox: Path) -> tuple[list[Path], list[Path]]:
    """(complete drops, incomplete drops) directly under the inbox, oldest first."""
    if not inbox.is_dir():
        return [], []
    folders = sorted(
        (
            p
            for p in inbox.iterdir()
            if p.is_dir() and p.name not in ARCHIVES and not p.name.startswith(".")
        ),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    return [p for p in folders if (p / READY).exists()], [
        p for p in folders if not (p / READY).exists()
    ]


def stat_key(folder: Path) -> str:
    """Cheap identity of a folder's current contents (names, sizes, times): a cache key for its digest."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        s = f.stat()
        h.update(f"{f.relative_to(folder)}:{s.st_size}:{s.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def drop_digest(folder: Path) -> str:
    """Content hash: every file's relative name and bytes (READY and ERROR.txt excluded), so the same
    export dropped twice has the same digest wherever and whenever it was copied."""
    h = hashlib.sha256()
    for f in sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in (READY, ERROR_FILE)
    ):
        h.update(str(f.relative_to(folder)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def partition_key(folder_name: str, digest: str) -> str:
    """The drop's partition: its folder name (made safe) and the digest's first 8 hex digits."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", folder_name).strip("_") or "drop"
    return f"{safe[:60]}-{digest[:8]}"


def _kind(csv_path: Path) -> str | None:
    with open(csv_path, encoding="utf-8-sig", errors="replace") as fh:
        head = fh.readline().strip()
    for kind, prefix in HEADERS.items():
        if (head + ",").startswith(prefix):
            return kind
    return None


def _reject_quarantine(q: pd.DataFrame) -> None:
    if len(q):
        lines = [f"{r.source} row {r.row}: {r.reason}" for r in q.head(20).itertuples(index=False)]
        more = f"\n... and {len(q) - 20} more bad row(s)" if len(q) > 20 else ""
        raise DropError("bad rows:\n" + "\n".join(lines) + more)


def _check_image_headers(files: dict[str, Path], max_megapixels: float) -> None:
    """Each image's declared size from its header (nothing decoded): unreadable or over the budget
    rejects the drop, naming the file."""
    from .bounds import HeaderError, ImageTooLarge, check_budget, png_dimensions
    from .dicom import DicomError, declared_dimensions

    for name, path in sorted(files.items()):
        try:
            if path.suffix.lower() == ".png":
                with open(path, "rb") as fh:
                    dims = png_dimensions(fh.read(64))
            else:
                import pydicom

                dims = declared_dimensions(
                    pydicom.dcmread(path, stop_before_pixels=True, force=True), path
                )
            check_budget(dims, max_megapixels, path.name)
        except (ImageTooLarge, DicomError) as exc:
            raise DropError(str(exc)) from None
        except HeaderError as exc:
            raise DropError(f"{path.name}: {exc}") from None
        except Exception as exc:
            raise DropError(
                f"{path.name}: unreadable image header ({exc.__class__.__name__})"
            ) from None


def validate(
    folder: Path,
    known: Known,
    digest: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    pseudonym_key: bytes = b"",
) -> Drop:
    """Check a complete drop against what the data holds (`known`, the original files and every
    other accepted drop); raises DropError with a readable reason. Every image's header is read
    (not its pixels) and must fit `max_megapixels`. `pseudonym_key`: keys annotators' pseudonyms."""
    drop = Drop(folder, digest=digest or drop_digest(folder))
    kinds: dict[str, Path] = {}
    for c in sorted(folder.rglob("*.csv")):
        k = _kind(c)
        if k is None:
            raise DropError(
                f"{c.name}: header is neither NIH (BBox_List / Data_Entry) nor VinBigData train.csv"
            )
        if k in kinds:
            raise DropError(f"{c.name}: a second {k} table in one drop (also {kinds[k].name})")
        kinds[k] = c
    tool = _tool_export(folder)
    if not kinds and tool is None:
        raise DropError(
            f"{folder.name}: no annotations in the drop (NIH or VinBigData CSV, COCO or Label "
            "Studio JSON, CVAT XML, or YOLO labels with their class names)"
        )
    try:
        if "vinbigdata" in kinds:
            if len(kinds) > 1 or tool is not None:
                raise DropError("a drop holds one dataset's annotations: found VinBigData and NIH")
            drop = _validate_vinbigdata(drop, kinds["vinbigdata"], known.vinbigdata)
        elif tool is not None:
            if "nih_boxes" in kinds:
                raise DropError(
                    f"{kinds['nih_boxes'].name}: a box list beside a {tool[0]} export: one format "
                    "per drop"
                )
            drop = _validate_tool(drop, tool, kinds.get("nih_labels"), known, pseudonym_key)
        else:
            drop = _validate_nih(drop, kinds, known)
        _check_image_headers(drop.images, max_megapixels)
        return drop
    except (InputFormatError, tool_formats.ToolFormatError) as exc:
        raise DropError(str(exc)) from exc


def _tool_export(folder: Path) -> tuple[str, list[Path]] | None:
    """(format, files) of an annotation tool's export in the drop, or None."""
    import json

    found: list[tuple[str, Path]] = []
    for p in sorted(folder.rglob("*.json")):
        try:
            head = json.loads(p.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise DropError(f"{p.name}: not readable JSON") from None
        if isinstance(head, list):
            found.append(("label-studio", p))
        elif isinstance(head, dict) and "annotations" in head and "images" in head:
            found.append(("coco", p))
        elif isinstance(head, dict) and set(head) <= {"categories", "info"}:
            continue  # a YOLO export's notes.json (its class list, as classes.txt gives it)
        else:
            raise DropError(f"{p.name}: neither COCO JSON nor Label Studio's JSON export")
    found += [("cvat", p) for p in sorted(folder.rglob("*.xml"))]
    labels = [
        p for p in sorted(folder.rglob("*.txt")) if p.name not in tool_formats.YOLO_NAME_FILES
    ]
    labels = [p for p in labels if p.name not in (READY, ERROR_FILE)]
    if labels:
        found.append(("yolo", labels[0].parent))
    kinds = sorted({k for k, _ in found})
    if len(kinds) > 1:
        raise DropError(f"{folder.name}: exports of more than one format ({', '.join(kinds)})")
    return (kinds[0], [p for _, p in found]) if found else None


def _validate_tool(
    drop: Drop, tool: tuple[str, list[Path]], entry: Path | None, known: Known, key: bytes
) -> Drop:
    fmt, files = tool
    labels = pd.DataFrame()
    if entry is not None:
        labels, ql = read_nih_labels_checked(entry)
        _reject_quarantine(ql)
        dup = sorted(set(labels["image_id"]) & known.nih)
        if dup:
            raise DropError(
                f"{entry.name}: Data_Entry row(s) for image(s) already in the data: "
                f"{', '.join(dup[:5])} (their patient is known; give rows for new images only)"
            )
    pngs = {p.name: p for p in drop.path.rglob("*.png")}
    new_ids = set(labels["image_id"]) if len(labels) else set()

    def size_of(image_id: str):
        if image_id in new_ids:
            from .bounds import png_dimensions

            if image_id not in pngs:
                return None
            with open(pngs[image_id], "rb") as fh:
                d = png_dimensions(fh.read(64))
            return d.width, d.height
        return known.nih_size(image_id) if image_id in known.nih else None

    if fmt == "coco":
        boxes = pd.concat([tool_formats.read_coco(p, size_of) for p in files], ignore_index=True)
    elif fmt == "cvat":
        boxes = pd.concat([tool_formats.read_cvat(p, size_of) for p in files], ignore_index=True)
    elif fmt == "label-studio":
        boxes = pd.concat(
            [tool_formats.read_label_studio(p, size_of, key) for p in files], ignore_index=True
        )
    else:
        names = tool_formats.yolo_class_names(drop.path)
        if not names:
            raise DropError(
                f"{drop.path.name}: YOLO labels without class names (classes.txt, obj.names or "
                "data.yaml names)"
            )
        boxes = tool_formats.read_yolo(files[0], names, sorted(new_ids | known.nih), size_of)
    missing = sorted(new_ids - set(pngs))
    if missing:
        raise DropError(f"missing image file(s) named by {entry.name}: {', '.join(missing[:5])}")
    deleted = boxes[boxes["origin"] == "deleted"].reset_index(drop=True)
    boxes, kept_out = _keep_new_findings(boxes[boxes["origin"] != "deleted"], known)
    drop.fmt = fmt
    drop.tables = {"boxes": boxes, "deleted": deleted, "kept_out": kept_out}
    if len(labels):
        drop.tables["labels"] = labels
    if fmt == "label-studio":
        drop.tables["tasks"] = pd.concat(
            [tool_formats.label_studio_annotated(p) for p in files], ignore_index=True
        ).drop_duplicates()
    drop.images = {i: pngs[i] for i in sorted(new_ids)}
    annotated = set(boxes["image_id"]) | set(kept_out["image_id"]) | set(deleted["image_id"])
    if "tasks" in drop.tables:
        annotated |= set(drop.tables["tasks"]["image_id"])
    every = pd.concat([boxes, kept_out, deleted])
    drop.summary = {
        "format": fmt,
        "images": len(annotated | new_ids),
        "new_images": len(new_ids),
        "boxes": len(boxes),
        "kept_out": len(kept_out),
        **{
            f"pre_annotations_{o}" if o != "added" else "added": n
            for o, n in tool_formats.origin_counts(every).items()
        },
        **{
            f"kept_out_{o}": n
            for o, n in tool_formats.origin_counts(kept_out).items()
            if o != "deleted"
        },
    }
    return drop


def _keep_new_findings(boxes: pd.DataFrame, known: Known) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boxes kept, boxes kept out): a box for an (image, finding) that already has boxes from
    another source is kept out, so the original boxes stand; each kept-out box says why, naming
    where the existing boxes come from (a batch's pre-annotation accepted after the image gained a
    box of that finding elsewhere is reported, never lost silently)."""
    pairs = list(zip(boxes["image_id"], boxes["label"]))
    out = pd.Series([p in known.boxed for p in pairs], index=boxes.index, dtype=bool)
    where = known.boxed if isinstance(known.boxed, dict) else {}
    origin = boxes["origin"] if "origin" in boxes else pd.Series("", index=boxes.index)
    reasons = [
        f"{i} already has {label} boxes (from {where.get((i, label)) or 'another source'}); this "
        + (f"{o} " if o else "")
        + "box is kept out and the existing boxes stand"
        for (i, label), o in zip(pairs, origin)
    ]
    kept_out = boxes.assign(reason=reasons)[out]
    return boxes[~out].reset_index(drop=True), kept_out.reset_index(drop=True)


def _validate_nih(drop: Drop, kinds: dict[str, Path], known: Known) -> Drop:
    if "nih_boxes" not in kinds:
        raise DropError("an NIH drop needs a box list (BBox_List_2017.csv header)")
    boxes, qb = read_nih_boxes_checked(kinds["nih_boxes"])
    if "nih_labels" in kinds:
        labels, ql = read_nih_labels_checked(kinds["nih_labels"])
    else:
        labels, ql = pd.DataFrame(columns=["image_id", "patient_id"]), pd.DataFrame()
    _reject_quarantine(pd.concat([qb, ql], ignore_index=True))
    pngs = {p.name: p for p in drop.path.rglob("*.png")}
    no_patient = sorted(set(boxes["image_id"]) - set(labels["image_id"]) - known.nih)
    if no_patient:
        raise DropError(
            f"{kinds['nih_boxes'].name}: image(s) neither in the data nor given a Data_Entry row "
            f"(patient): {', '.join(no_patient[:5])}"
        )
    missing = sorted(set(labels["image_id"]) - set(pngs))
    if missing:
        raise DropError(
            f"missing image file(s) named by {kinds['nih_labels'].name}: {', '.join(missing[:5])}"
        )
    dup = sorted(set(labels["image_id"]) & known.nih)
    if dup:
        raise DropError(
            f"{kinds['nih_labels'].name}: Data_Entry row(s) for image(s) already in the data: "
            f"{', '.join(dup[:5])} (their patient is known; give rows for new images only)"
        )
    boxes, kept_out = _keep_new_findings(boxes, known)
    drop.fmt, drop.tables = "nih", {"boxes": boxes}
    if len(labels):
        drop.tables["labels"] = labels
    if len(kept_out):
        drop.tables["kept_out"] = kept_out
    drop.images = {i: pngs[i] for i in labels["image_id"]}
    drop.summary = {
        "format": "nih",
        "images": len(set(labels["image_id"]) | set(boxes["image_id"]) | set(kept_out["image_id"])),
        "new_images": len(labels),
        "boxes": len(boxes),
        "patients": int(labels["patient_id"].nunique()),
        "existing_images_boxed": int(
            boxes.loc[boxes["image_id"].isin(known.nih), "image_id"].nunique()
        ),
        "kept_out": len(kept_out),
    }
    return drop


def _validate_vinbigdata(drop: Drop, table: Path, known: set[str]) -> Drop:
    ann, q = read_vinbigdata_annotations_checked(table)
    _reject_quarantine(q)
    files = {p.stem: p for p in drop.path.rglob("*") if p.suffix.lower() in (".dicom", ".dcm")}
    missing = sorted(set(ann["image_id"]) - set(files))
    if missing:
        raise DropError(f"missing DICOM(s) named by {table.name}: {', '.join(missing[:5])}")
    dup = sorted(set(ann["image_id"]) & known)
    if dup:
        raise DropError(
            f"image id(s) already in the data: {', '.join(dup[:5])} (drops add new images)"
        )
    drop.fmt, drop.tables = "vinbigdata", {"annotations": ann}
    drop.images = {i: files[i] for i in ann["image_id"].unique()}
    drop.summary = {
        "format": "vinbigdata",
        "images": len(drop.images),
        "new_images": len(drop.images),
        "rows": len(ann),
        "boxes": int(ann["x_min"].notna().sum()),
    }
    return drop


def find(inbox: Path, key: str, name: str | None = None) -> Path | None:
    """A drop's folder by partition key: in the inbox, or already archived under accepted/."""
    for base in (inbox, inbox / "accepted"):
        for candidate in ([base / name] if name else []) + [base / key]:
            if candidate.is_dir():
                return candidate
    stem = key.rsplit("-", 1)[0]
    for base in (inbox, inbox / "accepted"):
        if (base / stem).is_dir() and (base / stem / READY).exists():
            return base / stem
    return None


def archive(folder: Path, inbox: Path, key: str) -> Path:
    """Move an accepted drop to `accepted/<key>` (a no-op when it is there already)."""
    target = inbox / "accepted" / key
    if folder.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(folder), str(target))
    return target


def reject(folder: Path, inbox: Path, reason: str) -> Path:
    """Move a drop to `rejected/` with an ERROR.txt saying why; nothing in it is lost."""
    target = inbox / "rejected" / folder.name
    if target.exists():
        target = target.with_name(f"{folder.name}-{time.strftime('%Y%m%d%H%M%S')}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    (target / ERROR_FILE).write_text(
        f"This drop was rejected and not accepted ({time.strftime('%Y-%m-%d %H:%M:%S')}).\n\n{reason}\n\n"
        "Fix the files, then move the folder back into the inbox (it needs its READY file).\n"
    )
    return target
