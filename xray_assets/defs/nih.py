"""NIH ChestX-ray14 ingestion: Data_Entry labels and the box list."""


import dagster as dg

from ..core import labels
from .resources import XrayResource, table_md


@dg.asset(group_name="nih", kinds={"pandas", "parquet"},
          description="Data_Entry_2017.csv as a typed table, one row per image.")
def nih_labels(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    src = xray.data("nih", "Data_Entry_2017.csv")
    df, quarantine = labels.read_nih_labels_checked(src)
    st = xray.storage
    st.write_parquet(df, "nih", "labels.parquet")
    st.write_parquet(quarantine, "nih", "labels_quarantine.parquet")
    if len(quarantine):
        context.log.warning(f"{src.name}: {len(quarantine)} row(s) quarantined, e.g. {quarantine.iloc[0].to_dict()}")
    findings = df["findings"].explode().value_counts()
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(st.root / "nih" / "labels.parquet")),
        "dagster/row_count": len(df),
        "patients": int(df["patient_id"].nunique()),
        "no_finding_images": int(df["findings"].map(lambda f: f == ["No Finding"]).sum()),
        "quarantined_rows": len(quarantine),
        "findings": table_md(findings.rename_axis("finding").reset_index(name="images")),
    })


@dg.asset(group_name="nih", kinds={"pandas", "parquet"},
          description="BBox_List_2017.csv as corner boxes in the 1024 px PNG space.")
def nih_boxes(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    src = xray.data("nih", "BBox_List_2017.csv")
    df, quarantine = labels.read_nih_boxes_checked(src)
    st = xray.storage
    st.write_parquet(df, "nih", "boxes.parquet")
    st.write_parquet(quarantine, "nih", "boxes_quarantine.parquet")
    for r in quarantine.itertuples(index=False):
        context.log.warning(f"{r.source} row {r.row}: {r.reason}")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(st.root / "nih" / "boxes.parquet")),
        "dagster/row_count": len(df),
        "images": int(df["image_id"].nunique()),
        "quarantined_rows": len(quarantine),
        "boxes_per_class": table_md(df["label"].value_counts().rename_axis("label").reset_index(name="boxes")),
    })
