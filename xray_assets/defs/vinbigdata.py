"""VinBigData ingestion: every radiologist's annotation, DICOM conversion, consensus boxes."""

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from ..core import consensus, dicom, labels, layout
from ..core.classes import UNITED_CLASSES
from ..core.isolation import IsolatedPool, failure_reason
from ..core.splits import shard_of
from .automation import code_version, content_version, on_new_data, on_reader_change
from .drop_tables import committed, drop_image_paths, drops_read, read_drop_tables
from .drops import annotation_drops
from .resources import (
    CONVERSION_SHARDS,
    CONVERSION_STEP_TAGS,
    SHARD_PARTITIONS,
    XrayResource,
    column_schema,
    ingest_table,
    table_value,
)

OWNERS = ["team:radiology-data"]
TAGS = {"stage": "ingest", "dataset": "vinbigdata"}
MANIFEST_COLUMNS = [
    "image_id",
    "source",
    "source_hash",
    "stat_key",
    "path",
    "height",
    "width",
    "orig_height",
    "orig_width",
    "status",
    "reason",
    "max_size",
]
COORDS_DOC = "corner in the original DICOM's pixels (empty for 'No finding')"
ANNOTATIONS_SCHEMA = column_schema(
    {
        "image_id": ("string", "the DICOM's id"),
        "label": ("string", "class_name (VinBigData's 15)"),
        "class_id": ("int", "0..14, 14 = No finding"),
        "rad_id": ("string", "the radiologist (R1..R17)"),
        **{c: ("float", COORDS_DOC) for c in ("x_min", "y_min", "x_max", "y_max")},
        "source": ("string", "train.csv, or the annotation drop's partition"),
    }
)
MANIFEST_SCHEMA = column_schema(
    {
        "image_id": ("string", "the DICOM's id"),
        "source": ("string", "the DICOM's file name"),
        "source_hash": ("string", "sha256 of the DICOM"),
        "stat_key": ("string", "size:mtime when converted"),
        "path": ("string", "the converted PNG"),
        "height": ("int", "PNG height"),
        "width": ("int", "PNG width"),
        "orig_height": ("int", "DICOM rows"),
        "orig_width": ("int", "DICOM columns"),
        "status": ("string", "ok or quarantined"),
        "reason": ("string", "why it was quarantined"),
        "max_size": ("int", "longest side of the PNG asked for"),
    }
)
BOXES_SCHEMA = column_schema(
    {
        "image_id": ("string", "the DICOM's id"),
        "label": ("string", "VinBigData class name"),
        "class_id": ("int", "VinBigData class id"),
        "rad_id": ("string", "the radiologist kept (majority) or 'wbf'"),
        **{
            c: ("float", "corner in the original DICOM's pixels")
            for c in ("x_min", "y_min", "x_max", "y_max")
        },
        "united": ("string", "the united class"),
    }
)


def _hash_or_empty(path: Path) -> str:
    try:
        return dicom.file_sha256(path)
    except OSError:
        return ""


@dg.asset(
    group_name="vinbigdata",
    kinds={"pandas", "parquet", "csv"},
    owners=OWNERS,
    tags=TAGS,
    deps=[annotation_drops],
    automation_condition=on_reader_change(),
    code_version=code_version(labels.read_vinbigdata_annotations_checked),
    metadata={"dagster/column_schema": ANNOTATIONS_SCHEMA},
    description="train.csv, every radiologist's row ('No finding' rows have empty boxes), plus every "
    "accepted VinBigData drop.",
)
def vinbigdata_annotations(
    context: dg.AssetExecutionContext, xray: XrayResource
) -> dg.MaterializeResult:
    src = xray.data("vinbigdata", "train.csv")
    st = xray.storage
    out = ingest_table(
        context,
        st,
        labels.read_vinbigdata_annotations_checked,
        src,
        "vinbigdata",
        "annotations",
        xray.config.max_quarantine_rows,
    )
    keys = committed(xray.shared)
    drops = read_drop_tables(xray.shared, "annotations", keys=keys)
    df = pd.concat(
        [out["table"].assign(source=src.name)] + ([drops] if len(drops) else []), ignore_index=True
    )
    st.write_parquet(df, *layout.VBD_ANNOTATIONS)
    return dg.MaterializeResult(
        metadata={
            **out["metadata"],
            "dagster/row_count": len(df),
            "path": dg.MetadataValue.path(str(st.root.joinpath(*layout.VBD_ANNOTATIONS))),
            **drops_read(keys),
            "images": int(df["image_id"].nunique()),
            "radiologists": int(df["rad_id"].nunique()),
            "rows_from_drops": int((df["source"] != src.name).sum()),
            "rows_per_class": table_value(
                df["label"].value_counts().rename_axis("label").reset_index(name="rows")
            ),
        },
        data_version=content_version(df),
    )


#: the libraries whose versions decide a converted image's pixels
DICOM_DECODERS = (
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pillow",
    "opencv-python",
)


def dicom_sources(xray: XrayResource) -> list[Path]:
    """Every DICOM of the study: `vinbigdata/train/` and the accepted drops' (first one of an id wins)."""
    found: dict[str, Path] = {
        p.stem: p for p in sorted(xray.data("vinbigdata", "train").glob("*.dicom"))
    }
    for name, p in drop_image_paths(xray.shared, "dicom").items():
        found.setdefault(Path(name).stem, p)
    return [found[k] for k in sorted(found)]


def read_manifests(st) -> pd.DataFrame:
    parts = [
        st.read_parquet(*layout.conversion_manifest(k))
        for k in SHARD_PARTITIONS.get_partition_keys()
        if st.exists(*layout.conversion_manifest(k))
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=MANIFEST_COLUMNS)


def _convert(context, xray: XrayResource, todo: list, max_size: int, workers: int) -> list[dict]:
    """The manifest rows of `todo`'s DICOMs converted to PNGs. Written locally, uploaded when the
    block ends if the root is an object store. Each DICOM is decoded in an isolated worker: one
    whose decoder crashes, hangs or runs out of memory is quarantined with the reason, its worker
    replaced, and the shard goes on with the rest."""
    limits, rows = xray.decode, []
    with (
        xray.storage.workdir("vinbigdata", "images", "png", pull=False) as out_dir,
        IsolatedPool(limits, workers=workers) as pool,
    ):
        futures = [
            pool.submit(
                dicom.convert_one,
                str(p),
                str(out_dir / f"{p.stem}.png"),
                max_size,
                limits.max_megapixels,
            )
            for p, _, _ in todo
        ]
        for n, ((p, digest, key), fut) in enumerate(zip(todo, futures), start=1):
            try:
                r = fut.result()
            except Exception as exc:  # the worker died, hung or ran out of memory
                r = dicom.quarantined(f"{p.name}: {failure_reason(exc, limits)}")
            # the worker hashed the bytes it read; one that died before saying is hashed here
            digest = r.pop("source_hash", None) or digest or _hash_or_empty(p)
            rows.append(
                {
                    "image_id": p.stem,
                    "source": p.name,
                    "source_hash": digest,
                    "stat_key": key,
                    "max_size": max_size,
                    **r,
                }
            )
            if r["status"] != "ok":
                context.log.warning(f"quarantined {r['reason']}")
            if n % 50 == 0 or n == len(todo):
                context.log.info(f"{context.partition_key}: converted {n}/{len(todo)}")
    return rows


@dg.asset(
    group_name="vinbigdata",
    partitions_def=SHARD_PARTITIONS,
    kinds={"dicom", "png"},
    owners=OWNERS,
    tags=TAGS,
    deps=[vinbigdata_annotations],
    op_tags=CONVERSION_STEP_TAGS,
    automation_condition=on_new_data(),
    code_version=code_version(
        dicom.read_dicom, dicom.convert_one, dicom.plan_conversion, libraries=DICOM_DECODERS
    ),
    metadata={"dagster/column_schema": MANIFEST_SCHEMA},
    check_specs=[
        dg.AssetCheckSpec(
            "conversion_quarantine",
            asset="vinbigdata_images",
            description="Quarantined DICOMs stay under the profile's limit.",
        )
    ],
    description="VinBigData's DICOMs as display-ready PNGs with a manifest, converted incrementally.",
)
def vinbigdata_images(
    context: dg.AssetExecutionContext, xray: XrayResource
) -> dg.MaterializeResult:
    """DICOM -> display-ready PNG conversions with a manifest (id, path, sizes, source hash, status).
    Incremental: unchanged sources are not converted again."""
    shard = int(context.partition_key.split("-")[1])
    max_size = xray.config.dicom_max_size
    st = xray.storage
    sources = [p for p in dicom_sources(xray) if shard_of(p.stem, CONVERSION_SHARDS) == shard]
    manifest_parts = layout.conversion_manifest(context.partition_key)
    old = (
        st.read_parquet(*manifest_parts)
        if st.exists(*manifest_parts)
        else pd.DataFrame(columns=MANIFEST_COLUMNS)
    )
    rows, todo = dicom.plan_conversion(
        sources, old, st.names("vinbigdata", "images", "png"), max_size
    )
    context.log.info(
        f"{context.partition_key}: {len(sources)} DICOMs, {len(todo)} to convert, "
        f"{len(sources) - len(todo)} unchanged"
    )
    workers = max(1, min(os.cpu_count() or 1, len(todo)))
    if todo:
        rows += _convert(context, xray, todo, max_size, workers)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values(
        "image_id", ignore_index=True
    )
    for c in ("height", "width", "orig_height", "orig_width", "max_size"):
        manifest[c] = manifest[c].astype("int64")
    st.write_parquet(manifest, *manifest_parts)
    quarantined = manifest[manifest["status"] != "ok"]
    limit = xray.config.max_quarantine_rows
    check = dg.AssetCheckResult(
        check_name="conversion_quarantine",
        passed=len(quarantined) <= limit,
        metadata={
            "quarantined": len(quarantined),
            "limit": limit,
            "reasons": "; ".join(quarantined["reason"].head(10)) or "none",
        },
    )
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "converted_this_run": len(todo),
            "images": int((manifest["status"] == "ok").sum()),
            "quarantined": len(quarantined),
            "workers": workers,
            "dagster/row_count": len(manifest),
            "manifest": dg.MetadataValue.path(str(st.root.joinpath(*manifest_parts))),
        },
        data_version=content_version(manifest.drop(columns=["stat_key"])),
    )


@dg.asset(
    group_name="vinbigdata",
    kinds={"pandas", "parquet"},
    owners=OWNERS,
    tags=TAGS,
    deps=[vinbigdata_annotations, vinbigdata_images],
    automation_condition=on_new_data(),
    code_version=code_version(consensus),
    metadata={"dagster/column_schema": BOXES_SCHEMA},
    description="Consensus boxes per VinBigData image and united class, in the original DICOM's pixels.",
)
def vinbigdata_boxes(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """Consensus boxes per image and united class: the study's majority-radiologist rule (default) or
    WBF. Pixels of the original DICOM."""
    st = xray.storage
    ann = st.read_parquet(*layout.VBD_ANNOTATIONS).drop(columns=["source"], errors="ignore")
    method = xray.config.consensus
    if method == "wbf":
        man = read_manifests(st)
        sizes = man[man.status == "ok"].rename(
            columns={"orig_width": "width", "orig_height": "height"}
        )
        kept = consensus.weighted_boxes_fusion(
            ann[ann.image_id.isin(sizes.image_id)],
            sizes[["image_id", "width", "height"]],
            iou_thr=xray.config.wbf_iou,
        )
    elif method == "majority":
        kept = consensus.majority_radiologist(ann)
    else:
        raise ValueError(
            f"unknown consensus method {method!r} (profile {xray.profile_name}); use 'majority' or 'wbf'"
        )
    before = consensus.to_united(ann)
    kept = kept.assign(united=kept["class_id"].map(consensus.VINBIGDATA_TO_UNITED)).reset_index(
        drop=True
    )
    st.write_parquet(kept, *layout.VBD_BOXES)
    counts = pd.DataFrame(
        {
            "class": list(UNITED_CLASSES),
            "boxes_all_readers": before["united"]
            .value_counts()
            .reindex(UNITED_CLASSES)
            .fillna(0)
            .astype(int)
            .to_numpy(),
            "boxes_consensus": kept["united"]
            .value_counts()
            .reindex(UNITED_CLASSES)
            .fillna(0)
            .astype(int)
            .to_numpy(),
        }
    )
    agreement = consensus.reader_agreement(ann)
    counts = counts.merge(agreement, on="class")
    context.log.info(f"consensus ({method}): {len(before)} reader boxes -> {len(kept)} boxes")
    return dg.MaterializeResult(
        metadata={
            "method": method,
            "dagster/row_count": len(kept),
            "images_with_boxes": int(kept["image_id"].nunique()),
            "boxes_per_class_and_reader_agreement": table_value(counts),
            "mean_reader_agreement_iou": float(agreement["mean_pairwise_iou"].mean()),
        },
        data_version=content_version(kept, method),
    )


defs = dg.Definitions(assets=[vinbigdata_annotations, vinbigdata_images, vinbigdata_boxes])
