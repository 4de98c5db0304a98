"""The annotation inbox: radiologists drop new annotations; complete drops are validated and merged.

A drop is a folder under the inbox holding either
- NIH format: a box list (`BBox_List_2017.csv` header) and a Data_Entry table (`Data_Entry_2017.csv`
  header, which gives each new image its patient) plus the PNGs they name, or
- VinBigData format: a `train.csv`-format table plus the `<image_id>.dicom` files it names,
and it is complete when it holds a `READY` file. Validation reads the files with the same checked
readers as ingestion: any quarantined row, unknown label, missing image or image id already in the
raw data rejects the whole drop (it is moved to `rejected/` with an `ERROR.txt`). A valid drop is
merged append-only (rows appended to the raw CSVs, images copied beside the others) and then moved to
`merged/`; a ledger of merged drop hashes makes a second copy of the same drop a no-op.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..storage import atomic_path
from .labels import InputFormatError, read_nih_boxes_checked, read_nih_labels_checked, \
    read_vinbigdata_annotations_checked

READY = "READY"
ERROR_FILE = "ERROR.txt"
LEDGER = "ledger.jsonl"
HEADERS = {"nih_boxes": "Image Index,Finding Label,", "nih_labels": "Image Index,Finding Labels,",
           "vinbigdata": "image_id,class_name,class_id,rad_id,"}


class DropError(ValueError):
    """A drop that cannot be merged; the message says why, naming the file and row."""


@dataclass
class Drop:
    path: Path
    fmt: str = ""                      # "nih" or "vinbigdata"
    digest: str = ""                   # sha256 over every file's name and bytes
    tables: dict[str, Path] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)   # image id (file name for NIH) -> file
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_key(self) -> str:
        return f"drop-{self.digest[:16]}"


def pending(inbox: Path) -> tuple[list[Path], list[Path]]:
    """(complete drops, incomplete drops) directly under the inbox, oldest first."""
    if not inbox.is_dir():
        return [], []
    folders = sorted((p for p in inbox.iterdir() if p.is_dir() and p.name not in ("merged", "rejected")
                      and not p.name.startswith(".")), key=lambda p: (p.stat().st_mtime, p.name))
    return [p for p in folders if (p / READY).exists()], [p for p in folders if not (p / READY).exists()]


def drop_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (READY, ERROR_FILE)):
        h.update(str(f.relative_to(folder)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _kind(csv_path: Path) -> str | None:
    with open(csv_path, encoding="utf-8-sig", errors="replace") as fh:
        head = fh.readline().strip()
    for kind, prefix in HEADERS.items():
        if (head + ",").startswith(prefix):
            return kind
    return None


def _columns(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return [c.strip() for c in next(csv.reader([fh.readline()]), []) if c.strip()]


def _check_columns(drop_table: Path, raw: Path) -> None:
    """Rows are appended as they are, so a drop's table must have the raw file's columns in order."""
    if raw.exists() and _columns(drop_table) != _columns(raw):
        raise DropError(f"{drop_table.name}: columns {_columns(drop_table)} differ from {raw.name}'s "
                        f"{_columns(raw)}; export with the same header")


def _reject_quarantine(q: pd.DataFrame) -> None:
    if len(q):
        lines = [f"{r.source} row {r.row}: {r.reason}" for r in q.head(20).itertuples(index=False)]
        more = f"\n... and {len(q) - 20} more bad row(s)" if len(q) > 20 else ""
        raise DropError("bad rows:\n" + "\n".join(lines) + more)


def validate(folder: Path, data_dir: Path, digest: str | None = None) -> Drop:
    """Check a complete drop against the raw data; raises DropError with a readable reason."""
    drop = Drop(folder, digest=digest or drop_digest(folder))
    csvs = sorted(folder.rglob("*.csv"))
    if not csvs:
        raise DropError(f"{folder.name}: no annotation CSV in the drop")
    kinds: dict[str, Path] = {}
    for c in csvs:
        k = _kind(c)
        if k is None:
            raise DropError(f"{c.name}: header is neither NIH (BBox_List / Data_Entry) nor VinBigData train.csv")
        if k in kinds:
            raise DropError(f"{c.name}: a second {k} table in one drop (also {kinds[k].name})")
        kinds[k] = c
    try:
        if "vinbigdata" in kinds:
            if len(kinds) > 1:
                raise DropError("a drop holds one dataset's annotations: found VinBigData and NIH tables")
            return _validate_vinbigdata(drop, kinds["vinbigdata"], data_dir)
        return _validate_nih(drop, kinds, data_dir)
    except InputFormatError as exc:
        raise DropError(str(exc)) from exc


def _validate_nih(drop: Drop, kinds: dict[str, Path], data_dir: Path) -> Drop:
    if "nih_boxes" not in kinds or "nih_labels" not in kinds:
        raise DropError("an NIH drop needs a box list (BBox_List_2017.csv header) and a Data_Entry table "
                        "(Data_Entry_2017.csv header) giving each new image its patient")
    boxes, qb = read_nih_boxes_checked(kinds["nih_boxes"])
    labels, ql = read_nih_labels_checked(kinds["nih_labels"])
    _reject_quarantine(pd.concat([qb, ql], ignore_index=True))
    pngs = {p.name: p for p in drop.path.rglob("*.png")}
    no_patient = sorted(set(boxes["image_id"]) - set(labels["image_id"]))
    if no_patient:
        raise DropError(f"{kinds['nih_boxes'].name}: no Data_Entry row (patient) for {', '.join(no_patient[:5])}")
    missing = sorted(set(labels["image_id"]) - set(pngs))
    if missing:
        raise DropError(f"missing image file(s) named by {kinds['nih_labels'].name}: {', '.join(missing[:5])}")
    existing = data_dir / "nih" / "Data_Entry_2017.csv"
    _check_columns(kinds["nih_labels"], existing)
    if existing.exists():
        known, _ = read_nih_labels_checked(existing)
        dup = sorted(set(labels["image_id"]) & set(known["image_id"]))
        if dup:
            raise DropError(f"image id(s) already in the raw data: {', '.join(dup[:5])} (drops add new images)")
    drop.fmt, drop.tables = "nih", {"boxes": kinds["nih_boxes"], "labels": kinds["nih_labels"]}
    drop.images = {i: pngs[i] for i in labels["image_id"]}
    drop.summary = {"format": "nih", "images": len(labels), "boxes": len(boxes),
                    "patients": int(labels["patient_id"].nunique())}
    return drop


def _validate_vinbigdata(drop: Drop, table: Path, data_dir: Path) -> Drop:
    ann, q = read_vinbigdata_annotations_checked(table)
    _reject_quarantine(q)
    files = {p.stem: p for p in drop.path.rglob("*") if p.suffix.lower() in (".dicom", ".dcm")}
    missing = sorted(set(ann["image_id"]) - set(files))
    if missing:
        raise DropError(f"missing DICOM(s) named by {table.name}: {', '.join(missing[:5])}")
    existing = data_dir / "vinbigdata" / "train.csv"
    _check_columns(table, existing)
    if existing.exists():
        known = pd.read_csv(existing, usecols=["image_id"], dtype=str)["image_id"]
        dup = sorted(set(ann["image_id"]) & set(known))
        if dup:
            raise DropError(f"image id(s) already in the raw data: {', '.join(dup[:5])} (drops add new images)")
    drop.fmt, drop.tables = "vinbigdata", {"train": table}
    drop.images = {i: files[i] for i in ann["image_id"].unique()}
    drop.summary = {"format": "vinbigdata", "images": len(drop.images), "rows": len(ann),
                    "boxes": int(ann["x_min"].notna().sum())}
    return drop


def _append_rows(target: Path, source: Path) -> int:
    """Append `source`'s data rows to `target` (a CSV with the same columns), atomically."""
    rows = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8-sig"), newline="")))[1:]
    rows = [r for r in rows if any(c.strip() for c in r)]
    old = target.read_bytes() if target.exists() else b""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(old)
            if old and not old.endswith(b"\n"):
                fh.write(b"\n")
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            fh.write(buf.getvalue().encode())
    return len(rows)


def read_ledger(inbox: Path) -> dict[str, dict]:
    path = inbox / "merged" / LEDGER
    if not path.exists():
        return {}
    return {e["digest"]: e for e in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def merge(drop: Drop, data_dir: Path, inbox: Path) -> dict:
    """Append a validated drop to the raw data, move it to `merged/` and add its ledger line.
    The caller checks the ledger first (a copy of a merged drop is set aside, never merged)."""
    if drop.fmt == "nih":
        dest = data_dir / "nih" / "images_inbox" / "images"
        dest.mkdir(parents=True, exist_ok=True)
        for name, src in drop.images.items():
            shutil.copy2(src, dest / name)
        # the header row of an appended Data_Entry/box list is the existing file's own
        _append_rows(data_dir / "nih" / "Data_Entry_2017.csv", drop.tables["labels"])
        _append_rows(data_dir / "nih" / "BBox_List_2017.csv", drop.tables["boxes"])
    else:
        dest = data_dir / "vinbigdata" / "train"
        dest.mkdir(parents=True, exist_ok=True)
        for image_id, src in drop.images.items():
            shutil.copy2(src, dest / f"{image_id}.dicom")
        _append_rows(data_dir / "vinbigdata" / "train.csv", drop.tables["train"])
    target = inbox / "merged" / f"{drop.name}-{drop.digest[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(drop.path), str(target))
    entry = {"digest": drop.digest, "drop": drop.name, "kept_at": str(target), "run_key": drop.run_key,
             "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **drop.summary}
    with open(inbox / "merged" / LEDGER, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return entry


def set_aside(folder: Path, inbox: Path) -> Path:
    """A second copy of an already merged drop: kept under merged/duplicates/, merged again never."""
    target = inbox / "merged" / "duplicates" / f"{folder.name}-{time.strftime('%Y%m%d%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
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
        f"This drop was rejected and not merged ({time.strftime('%Y-%m-%d %H:%M:%S')}).\n\n{reason}\n\n"
        "Fix the files, then move the folder back into the inbox (it needs its READY file).\n")
    return target
