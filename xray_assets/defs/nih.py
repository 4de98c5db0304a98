"""NIH ChestX-ray14 ingestion: Data_Entry labels and the box list."""


import dagster as dg

from ..core import labels
from .resources import XrayResource, ingest_table, table_md


@dg.asset(group_name="nih", kinds={"pandas", "parquet"},
          description="Data_Entry_2017.csv as a typed table, one row per image.")
def nih_labels(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    out = ingest_table(context, xray, labels.read_nih_labels_checked, xray.data("nih", "Data_Entry_2017.csv"),
                       "nih", "labels")
    df = out["table"]
    findings = df["findings"].explode().value_counts()
    return dg.MaterializeResult(metadata={
        **out["metadata"],
        "patients": int(df["patient_id"].nunique()),
        "no_finding_images": int(df["findings"].map(lambda f: list(f) == ["No Finding"]).sum()),
        "findings": table_md(findings.rename_axis("finding").reset_index(name="images")),
    })


@dg.asset(group_name="nih", kinds={"pandas", "parquet"},
          description="BBox_List_2017.csv as corner boxes in the 1024 px PNG space.")
def nih_boxes(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    out = ingest_table(context, xray, labels.read_nih_boxes_checked, xray.data("nih", "BBox_List_2017.csv"),
                       "nih", "boxes")
    df = out["table"]
    return dg.MaterializeResult(metadata={
        **out["metadata"],
        "images": int(df["image_id"].nunique()),
        "boxes_per_class": table_md(df["label"].value_counts().rename_axis("label").reset_index(name="boxes")),
    })
