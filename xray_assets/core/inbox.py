"""The annotation inbox: radiologists drop new annotations; complete drops are validated and accepted.

A drop is a folder under the inbox holding either
- NIH format: a box list (`BBox_List_2017.csv` header) and a Data_Entry table (`Data_Entry_2017.csv`
  header, which gives each new image its patient) plus the PNGs they name, or
- VinBigData format: a `train.csv`-format table plus the `<image_id>.dicom` files it names,
and it is complete when it holds a `READY` file. Validation reads the files with the same checked
readers as ingestion: any quarantined row, unknown label, missing image or image id already in the
data rejects the whole drop. Nothing here writes the raw data: an accepted drop's rows and images are
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


@dataclass
class Drop:
    path: Path
    fmt: str = ""  # "nih" or "vinbigdata"
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
    known_nih: set[str],
    known_vinbigdata: set[str],
    digest: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> Drop:
    """Check a complete drop against the ids already in the data; raises DropError with a readable reason.
    `known_*`: image ids of the original files and of every other accepted drop. Every image's
    header is read (not its pixels) and must fit `max_megapixels`."""
    drop = Drop(folder, digest=digest or drop_digest(folder))
    csvs = sorted(folder.rglob("*.csv"))
    if not csvs:
        raise DropError(f"{folder.name}: no annotation CSV in the drop")
    kinds: dict[str, Path] = {}
    for c in csvs:
        k = _kind(c)
        if k is None:
            raise DropError(
                f"{c.name}: header is neither NIH (BBox_List / Data_Entry) nor VinBigData train.csv"
            )
        if k in kinds:
            raise DropError(f"{c.name}: a second {k} table in one drop (also {kinds[k].name})")
        kinds[k] = c
    try:
        if "vinbigdata" in kinds:
            if len(kinds) > 1:
                raise DropError(
                    "a drop holds one dataset's annotations: found VinBigData and NIH tables"
                )
            drop = _validate_vinbigdata(drop, kinds["vinbigdata"], known_vinbigdata)
        else:
            drop = _validate_nih(drop, kinds, known_nih)
        _check_image_headers(drop.images, max_megapixels)
        return drop
    except InputFormatError as exc:
        raise DropError(str(exc)) from exc


def _validate_nih(drop: Drop, kinds: dict[str, Path], known: set[str]) -> Drop:
    if "nih_boxes" not in kinds or "nih_labels" not in kinds:
        raise DropError(
            "an NIH drop needs a box list (BBox_List_2017.csv header) and a Data_Entry table "
            "(Data_Entry_2017.csv header) giving each new image its patient"
        )
    boxes, qb = read_nih_boxes_checked(kinds["nih_boxes"])
    labels, ql = read_nih_labels_checked(kinds["nih_labels"])
    _reject_quarantine(pd.concat([qb, ql], ignore_index=True))
    pngs = {p.name: p for p in drop.path.rglob("*.png")}
    no_patient = sorted(set(boxes["image_id"]) - set(labels["image_id"]))
    if no_patient:
        raise DropError(
            f"{kinds['nih_boxes'].name}: no Data_Entry row (patient) for {', '.join(no_patient[:5])}"
        )
    missing = sorted(set(labels["image_id"]) - set(pngs))
    if missing:
        raise DropError(
            f"missing image file(s) named by {kinds['nih_labels'].name}: {', '.join(missing[:5])}"
        )
    dup = sorted(set(labels["image_id"]) & known)
    if dup:
        raise DropError(
            f"image id(s) already in the data: {', '.join(dup[:5])} (drops add new images)"
        )
    drop.fmt, drop.tables = "nih", {"labels": labels, "boxes": boxes}
    drop.images = {i: pngs[i] for i in labels["image_id"]}
    drop.summary = {
        "format": "nih",
        "images": len(labels),
        "boxes": len(boxes),
        "patients": int(labels["patient_id"].nunique()),
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
