"""NIH ChestX-ray14 ingestion: Data_Entry labels and the box list, original files plus accepted drops."""

import dagster as dg
import pandas as pd

from ..core import labels, layout
from .automation import code_version, content_version, on_reader_change
from .drop_tables import committed, drops_read, read_drop_tables
from .drops import annotation_drops
from .resources import XrayResource, column_schema, ingest_table, table_value

OWNERS = ["team:radiology-data"]
TAGS = {"stage": "ingest", "dataset": "nih"}
SOURCE = (
    "string",
    "where the row comes from: the original file's name, or the annotation drop's partition",
)
LABELS_SCHEMA = column_schema(
    {
        "image_id": ("string", "Image Index, the PNG's file name"),
        "findings": (
            "list",
            "Finding Labels split on '|' ('Infiltration' read as 'Infiltrate'); ['No Finding'] when none",
        ),
        "follow_up": ("int", "Follow-up #"),
        "patient_id": ("int", "NIH's anonymous patient number"),
        "age": ("float", "Patient Age in years"),
        "sex": ("string", "Patient Gender, M or F"),
        "view": ("string", "View Position, PA or AP"),
        "orig_width": ("float", "OriginalImage width (px)"),
        "orig_height": ("float", "OriginalImage height (px)"),
        "source": SOURCE,
    }
)
BOXES_SCHEMA = column_schema(
    {
        "image_id": ("string", "Image Index"),
        "label": ("string", "one of the 8 NIH box classes"),
        **{
            c: ("float", "corner in the 1024 px PNG's pixels")
            for c in ("x_min", "y_min", "x_max", "y_max")
        },
        "source": SOURCE,
    }
)


def _read_nih(context, xray: XrayResource, reader, file_name: str, table: str, parts):
    """A raw NIH file read by its checked reader (bad rows to the quarantine), every committed
    drop's rows of that table after it (each row's `source`), written to `parts`: (the table, the
    asset's common metadata)."""
    src = xray.data("nih", file_name)
    st = xray.storage
    out = ingest_table(context, st, reader, src, "nih", table, xray.config.max_quarantine_rows)
    keys = committed(xray.shared)
    drops = read_drop_tables(xray.shared, table, keys=keys)
    frames = [out["table"].assign(source=src.name)]
    if len(drops):
        frames.append(drops[[*out["table"].columns, "source"]])
    df = pd.concat(frames, ignore_index=True)
    st.write_parquet(df, *parts)
    return df, {
        **out["metadata"],
        **drops_read(keys),
        "dagster/row_count": len(df),
        "path": dg.MetadataValue.path(str(st.root.joinpath(*parts))),
        "rows_from_drops": int((df["source"] != src.name).sum()),
    }


@dg.asset(
    group_name="nih",
    kinds={"pandas", "parquet", "csv"},
    owners=OWNERS,
    tags=TAGS,
    deps=[annotation_drops],
    automation_condition=on_reader_change(),
    code_version=code_version(labels.read_nih_labels_checked),
    metadata={"dagster/column_schema": LABELS_SCHEMA},
    description="Data_Entry_2017.csv as a typed table, one row per image, plus every accepted NIH drop.",
)
def nih_labels(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    df, metadata = _read_nih(
        context,
        xray,
        labels.read_nih_labels_checked,
        "Data_Entry_2017.csv",
        "labels",
        layout.NIH_LABELS,
    )
    findings = df["findings"].explode().value_counts()
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "patients": int(df["patient_id"].nunique()),
            "no_finding_images": int(df["findings"].map(lambda f: list(f) == ["No Finding"]).sum()),
            "findings": table_value(findings.rename_axis("finding").reset_index(name="images")),
        },
        data_version=content_version(df),
    )


@dg.asset(
    group_name="nih",
    kinds={"pandas", "parquet", "csv"},
    owners=OWNERS,
    tags=TAGS,
    deps=[annotation_drops],
    automation_condition=on_reader_change(),
    code_version=code_version(labels.read_nih_boxes_checked),
    metadata={"dagster/column_schema": BOXES_SCHEMA},
    description="BBox_List_2017.csv as corner boxes in the 1024 px PNG space, plus every accepted NIH drop.",
)
def nih_boxes(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    df, metadata = _read_nih(
        context,
        xray,
        labels.read_nih_boxes_checked,
        "BBox_List_2017.csv",
        "boxes",
        layout.NIH_BOXES,
    )
    per_class = df["label"].value_counts().rename_axis("label").reset_index(name="boxes")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "images": int(df["image_id"].nunique()),
            "boxes_per_class": table_value(per_class),
        },
        data_version=content_version(df),
    )


defs = dg.Definitions(assets=[nih_labels, nih_boxes])
