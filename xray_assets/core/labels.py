"""Readers for the two datasets' label files, in their real (and re-saved) forms.

Bad rows never pass silently: the `*_checked` readers return them in a quarantine table
(`source`, `row`, `reason`, `raw`) beside the good rows; the plain readers raise on nothing and
return the good rows only (the public API: docs/development.md).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import (
    NIH_CLASSES,
    NIH_FINDING_ALIASES,
    VINBIGDATA_CLASSES,
    VINBIGDATA_NO_FINDING,
)

BOX_COLUMNS = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]
VBD_COLUMNS = ["image_id", "label", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
QUARANTINE_COLUMNS = ["source", "row", "reason", "raw"]


class InputFormatError(ValueError):
    """A label file that cannot be read at all (wrong header, not a CSV). Names the file."""


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="int64" if c == "row" else "object") for c in QUARANTINE_COLUMNS}
    )


def _quarantine(rows: list[tuple[str, int, str, str]]) -> pd.DataFrame:
    if not rows:
        return empty_quarantine()
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def read_text(path: Path) -> str:
    """A label file's text (UTF-8, a BOM allowed); other bytes are an error naming the file and row."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise InputFormatError(
            f"{path} row {row}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})"
        ) from None


def _rows(reader, path: Path, start: int):
    """(row number, fields) from a csv reader; a row the csv module cannot split (an unclosed quote
    swallowing the rest of the file, a NUL) is an error naming the file and the row."""
    n = start
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputFormatError(f"{path} row {n}: {exc} (an unclosed quote?)") from None
        yield n, fields
        n += 1


def normalise_finding(name: str) -> str:
    name = name.strip()
    return NIH_FINDING_ALIASES.get(name, name)


# -- NIH boxes -----------------------------------------------------------------------------------
def read_nih_boxes_checked(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """BBox_List_2017.csv -> (boxes, quarantine).

    The six fields are taken by position, so the original `Bbox [x,y,w,h],,,` header, re-saved
    copies without the trailing commas, CRLF line endings and rounded values all read the same.
    Coordinates are pixels of the 1024 px PNG; (x, y, w, h) becomes corners.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputFormatError(f"{path}: empty file, expected the BBox_List_2017 header") from None
    except csv.Error as exc:
        raise InputFormatError(f"{path} row 1: not a readable CSV header ({exc})") from None
    if len(header) < 3 or "image" not in header[0].lower():
        raise InputFormatError(
            f"{path}: row 1 is not a BBox_List_2017 header (got {','.join(header)[:80]!r})"
        )
    good: list[tuple] = []
    bad: list[tuple[str, int, str, str]] = []
    known = set(NIH_CLASSES)
    for lineno, fields in _rows(reader, path, start=2):
        raw = ",".join(fields)
        if not any(f.strip() for f in fields):
            continue  # blank line
        fields = [f.strip() for f in fields]
        while len(fields) > 6 and fields[-1] == "":
            fields.pop()
        if len(fields) != 6:
            bad.append((path.name, lineno, f"expected 6 fields, got {len(fields)}", raw))
            continue
        image_id, label = fields[0], normalise_finding(fields[1])
        if label not in known:
            bad.append(
                (path.name, lineno, f"label {fields[1]!r} is not one of the 8 NIH box classes", raw)
            )
            continue
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            bad.append((path.name, lineno, "box values are not numbers", raw))
            continue
        if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            bad.append((path.name, lineno, "box has no positive area", raw))
            continue
        good.append((image_id, label, x, y, x + w, y + h))
    boxes = pd.DataFrame(good, columns=BOX_COLUMNS)
    for c in BOX_COLUMNS[2:]:
        boxes[c] = boxes[c].astype("float64")
    return boxes, _quarantine(bad)


def read_nih_boxes(path: str | Path) -> pd.DataFrame:
    return read_nih_boxes_checked(path)[0]


# -- NIH labels (Data_Entry_2017) ----------------------------------------------------------------
_NIH_LABEL_COLUMNS = {
    "Image Index": "image_id",
    "Finding Labels": "findings",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
_WIDTH_NAMES = ("OriginalImage[Width", "OriginalImageWidth")
_HEIGHT_NAMES = ("Height]", "OriginalImageHeight")
_AGE = re.compile(r"^\s*(\d+)\s*([YMWD]?)\s*$", re.IGNORECASE)


def _whole_number(values: pd.Series) -> pd.Series:
    """Numbers that are whole, finite and at most 2**53 (an id or a count); anything else is NaN."""
    num = pd.to_numeric(values, errors="coerce")
    ok = np.isfinite(num) & (num >= 0) & (num < 2**53) & (num == np.floor(num))
    return num.where(ok)


def _parse_age(value) -> float:
    """Ages come as 58 or, in the Kaggle sample, 058Y; months/weeks/days become fractional years."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    m = _AGE.match(str(value))
    if not m:
        return np.nan
    n, unit = int(m.group(1)), m.group(2).upper()
    return {"": n, "Y": n, "M": n / 12, "W": n / 52, "D": n / 365}[unit]


def read_nih_labels_checked(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Data_Entry_2017.csv (official header, trailing commas) or Kaggle's renamed sample."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, index_col=False, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds
        raise InputFormatError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in _NIH_LABEL_COLUMNS if c not in raw.columns]
    if missing:
        raise InputFormatError(f"{path}: header lacks column(s) {missing}")
    df = raw[list(_NIH_LABEL_COLUMNS)].rename(columns=_NIH_LABEL_COLUMNS)
    width = next((c for c in _WIDTH_NAMES if c in raw.columns), None)
    height = next((c for c in _HEIGHT_NAMES if c in raw.columns), None)
    df["orig_width"] = pd.to_numeric(raw[width], errors="coerce") if width else np.nan
    df["orig_height"] = pd.to_numeric(raw[height], errors="coerce") if height else np.nan

    df["image_id"] = df["image_id"].str.strip()
    patient = _whole_number(df["patient_id"])
    follow = _whole_number(df["follow_up"])
    bad_mask = (
        df["image_id"].eq("") | patient.isna() | follow.isna() | df["findings"].str.strip().eq("")
    )
    reasons = np.where(
        df["image_id"].eq(""),
        "empty image id",
        np.where(
            patient.isna(),
            "patient id is not a number",
            np.where(follow.isna(), "follow-up # is not a number", "empty Finding Labels"),
        ),
    )
    lines = df.index.to_numpy() + 2
    quarantine = _quarantine(
        [
            (path.name, int(lines[i]), str(reasons[i]), ",".join(raw.iloc[i].astype(str))[:200])
            for i in np.flatnonzero(bad_mask.to_numpy())
        ]
    )
    keep = ~bad_mask
    df = df[keep].copy()
    df["patient_id"] = patient[keep].astype("int64")
    df["follow_up"] = follow[keep].astype("int64")
    df["age"] = df["age"].map(_parse_age).astype("float64")
    df["findings"] = df["findings"].map(
        lambda s: [normalise_finding(x) for x in s.split("|") if x.strip()]
    )
    df["sex"] = df["sex"].str.strip()
    df["view"] = df["view"].str.strip()
    dup = df["image_id"].duplicated(keep="first")
    if dup.any():
        extra = _quarantine(
            [
                (path.name, int(i) + 2, "duplicate image id", r)
                for i, r in df.loc[dup, "image_id"].items()
            ]
        )
        quarantine = pd.concat([quarantine, extra], ignore_index=True)
        df = df[~dup]
    return df.reset_index(drop=True), quarantine


def read_nih_labels(path: str | Path) -> pd.DataFrame:
    return read_nih_labels_checked(path)[0]


# -- VinBigData train.csv ------------------------------------------------------------------------
def read_vinbigdata_annotations_checked(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train.csv -> (every radiologist's row, quarantine). "No finding" rows keep empty boxes."""
    path = Path(path)
    try:
        # index_col=False: a row with more fields than the header must not turn its first fields into an index
        raw = pd.read_csv(
            path, dtype={"image_id": str, "class_name": str, "rad_id": str}, index_col=False
        )
    except Exception as exc:
        raise InputFormatError(f"{path}: not a readable CSV ({exc})") from exc
    need = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise InputFormatError(f"{path}: header lacks column(s) {missing}")
    df = raw[need].rename(columns={"class_name": "label"})
    class_id = pd.to_numeric(df["class_id"], errors="coerce")
    coords = df[["x_min", "y_min", "x_max", "y_max"]].apply(pd.to_numeric, errors="coerce")
    no_finding = class_id.eq(VINBIGDATA_NO_FINDING)
    known_id = class_id.isin(list(VINBIGDATA_CLASSES))
    has_box = coords.notna().all(axis=1)
    positive = (coords["x_max"] > coords["x_min"]) & (coords["y_max"] > coords["y_min"])
    nonneg = (coords[["x_min", "y_min"]] >= 0).all(axis=1)
    reason = pd.Series("", index=df.index, dtype=object)
    reason[df["image_id"].isna() | df["image_id"].str.strip().eq("")] = "empty image_id"
    reason[reason.eq("") & df["rad_id"].isna()] = "empty rad_id"
    reason[reason.eq("") & ~known_id] = "class_id is not one of VinBigData's 0..14"
    reason[reason.eq("") & ~no_finding & ~has_box] = "finding without a box"
    reason[reason.eq("") & ~no_finding & has_box & ~(positive & nonneg)] = (
        "box has no positive area"
    )
    bad = reason.ne("")
    quarantine = _quarantine(
        [
            (path.name, int(i) + 2, reason[i], ",".join(map(str, raw.loc[i, need].tolist())))
            for i in df.index[bad]
        ]
    )
    df = df[~bad].copy()
    df["class_id"] = class_id[~bad].astype("int64")
    for c in ["x_min", "y_min", "x_max", "y_max"]:
        df[c] = coords.loc[~bad, c].astype("float64")
    # Some re-saved copies fill "No finding" boxes with 0,0,1,1: the real file leaves them empty.
    df.loc[df["class_id"].eq(VINBIGDATA_NO_FINDING), ["x_min", "y_min", "x_max", "y_max"]] = np.nan
    df["label"] = df["class_id"].map(VINBIGDATA_CLASSES)
    return df[VBD_COLUMNS].reset_index(drop=True), quarantine


def read_vinbigdata_annotations(path: str | Path) -> pd.DataFrame:
    return read_vinbigdata_annotations_checked(path)[0]


def load_gray(path: str | Path) -> np.ndarray:
    """A PNG/JPEG as single-channel uint8 (the RGBA NIH images included)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I"):
            arr = np.asarray(im, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            return ((arr - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
        return np.asarray(im.convert("L"))
