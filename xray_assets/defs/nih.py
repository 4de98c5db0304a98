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


def _with_drops(original: pd.DataFrame, source: str, drops: pd.DataFrame) -> pd.DataFrame:
    frames = [original.assign(source=source)] + (
        [drops[[*original.columns, "source"]]] if len(drops) else []
    )
    return pd.concat(frames, ignore_index=True)


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
    src = xray.data("nih", "Data_Entry_2017.csv")
    st = xray.storage
    out = ingest_table(
        context,
        st,
        labels.read_nih_labels_checked,
        src,
        "nih",
        "labels",
        xray.config.max_quarantine_rows,
    )
    keys = committed(xray.shared)
    df = _with_drops(out["table"], src.name, read_drop_tables(xray.shared, "labels", keys=keys))
    st.write_parquet(df, *layout.NIH_LABELS)
    findings = df["findings"].explode().value_counts()
    return dg.MaterializeResult(
        metadata={
            **out["metadata"],
            **drops_read(keys),
            "dagster/row_count": len(df),
            "path": dg.MetadataValue.path(str(st.root.joinpath(*layout.NIH_LABELS))),
            "patients": int(df["patient_id"].nunique()),
            "rows_from_drops": int((df["source"] != src.name).sum()),
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
    src = xray.data("nih", "BBox_List_2017.csv")
    st = xray.storage
    out = ingest_table(
        context,
        st,
        labels.read_nih_boxes_checked,
        src,
        "nih",
        "boxes",
        xray.config.max_quarantine_rows,
    )
    keys = committed(xray.shared)
    df = _with_drops(out["table"], src.name, read_drop_tables(xray.shared, "boxes", keys=keys))
    st.write_parquet(df, *layout.NIH_BOXES)
    return dg.MaterializeResult(
        metadata={
            **out["metadata"],
            **drops_read(keys),
            "dagster/row_count": len(df),
            "path": dg.MetadataValue.path(str(st.root.joinpath(*layout.NIH_BOXES))),
            "images": int(df["image_id"].nunique()),
            "rows_from_drops": int((df["source"] != src.name).sum()),
            "boxes_per_class": table_value(
                df["label"].value_counts().rename_axis("label").reset_index(name="boxes")
            ),
        },
        data_version=content_version(df),
    )


defs = dg.Definitions(assets=[nih_labels, nih_boxes])
