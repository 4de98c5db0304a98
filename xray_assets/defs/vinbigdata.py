"""VinBigData ingestion: every radiologist's annotation, DICOM conversion, consensus boxes."""


import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd

from ..core import consensus, labels
from ..core.classes import UNITED_CLASSES
from ..core.dicom import convert_one, file_sha256
from .resources import CONVERSION_STEP_TAGS, CONVERSION_SHARDS, SHARD_PARTITIONS, XrayResource, ingest_table, table_md

MANIFEST_COLUMNS = ["image_id", "source", "source_hash", "stat_key", "path", "height", "width",
                    "orig_height", "orig_width", "status", "reason", "max_size"]


@dg.asset(group_name="vinbigdata", kinds={"pandas", "parquet"},
          description="train.csv: every radiologist's row; 'No finding' rows have empty boxes.")
def vinbigdata_annotations(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    out = ingest_table(context, xray, labels.read_vinbigdata_annotations_checked,
                       xray.data("vinbigdata", "train.csv"), "vinbigdata", "annotations")
    df = out["table"]
    return dg.MaterializeResult(metadata={
        **out["metadata"],
        "images": int(df["image_id"].nunique()),
        "radiologists": int(df["rad_id"].nunique()),
        "rows_per_class": table_md(df["label"].value_counts().rename_axis("label").reset_index(name="rows")),
    })


def shard_of(image_id: str) -> int:
    return int(hashlib.md5(image_id.encode()).hexdigest(), 16) % CONVERSION_SHARDS


def _stat_key(path: Path) -> str:
    s = path.stat()
    return f"{s.st_size}:{s.st_mtime_ns}"


@dg.asset(group_name="vinbigdata", partitions_def=SHARD_PARTITIONS, kinds={"pydicom", "png"},
          deps=[vinbigdata_annotations], op_tags=CONVERSION_STEP_TAGS,
          check_specs=[dg.AssetCheckSpec("conversion_quarantine", asset="vinbigdata_images",
                                         description="Quarantined DICOMs stay under the profile's limit.")],
          description="DICOM -> display-ready PNG conversions with a manifest (id, path, sizes, "
                      "source hash, status). Incremental: unchanged sources are not converted again.")
def vinbigdata_images(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    shard = int(context.partition_key.split("-")[1])
    max_size = xray.config.dicom_max_size
    st = xray.storage
    src_dir = xray.data("vinbigdata", "train")
    sources = sorted(p for p in src_dir.glob("*.dicom") if shard_of(p.stem) == shard)
    manifest_parts = ("vinbigdata", "images", f"manifest-{context.partition_key}.parquet")
    old = st.read_parquet(*manifest_parts) if st.exists(*manifest_parts) else pd.DataFrame(columns=MANIFEST_COLUMNS)
    old = old.set_index("image_id", drop=False)
    rows, todo = [], []
    on_store = st.names("vinbigdata", "images", "png")   # converted PNGs the storage root holds
    for p in sources:
        key = _stat_key(p)
        prev = old.loc[p.stem] if p.stem in old.index else None
        if prev is not None and prev["stat_key"] == key and int(prev["max_size"]) == max_size and (
            prev["status"] != "ok" or Path(prev["path"]).name in on_store
        ):
            rows.append(prev.to_dict())
            continue
        digest = file_sha256(p)
        if prev is not None and prev["source_hash"] == digest and int(prev["max_size"]) == max_size and (
            prev["status"] != "ok" or Path(prev["path"]).name in on_store
        ):
            rows.append({**prev.to_dict(), "stat_key": key})
            continue
        todo.append((p, digest, key))
    context.log.info(f"{context.partition_key}: {len(sources)} DICOMs, {len(todo)} to convert, "
                     f"{len(sources) - len(todo)} unchanged")
    workers = max(1, min(os.cpu_count() or 1, len(todo)))
    if todo:
        # written locally, uploaded when the block ends if the root is an object store
        with st.workdir("vinbigdata", "images", "png", pull=False) as out_dir, \
                ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(convert_one, str(p), str(out_dir / f"{p.stem}.png"), max_size) for p, _, _ in todo]
            for n, ((p, digest, key), fut) in enumerate(zip(todo, futures), start=1):
                r = fut.result()
                rows.append({"image_id": p.stem, "source": p.name, "source_hash": digest, "stat_key": key,
                             "max_size": max_size, **r})
                if r["status"] != "ok":
                    context.log.warning(f"quarantined {r['reason']}")
                if n % 50 == 0 or n == len(todo):
                    context.log.info(f"{context.partition_key}: converted {n}/{len(todo)}")
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for c in ("height", "width", "orig_height", "orig_width", "max_size"):
        manifest[c] = manifest[c].astype("int64")
    st.write_parquet(manifest, *manifest_parts)
    quarantined = manifest[manifest["status"] != "ok"]
    check = dg.AssetCheckResult(
        check_name="conversion_quarantine", passed=len(quarantined) <= xray.config.max_quarantine_rows,
        metadata={"quarantined": len(quarantined), "limit": xray.config.max_quarantine_rows,
                  "reasons": "; ".join(quarantined["reason"].head(10)) or "none"})
    return dg.MaterializeResult(check_results=[check], metadata={
        "converted_this_run": len(todo),
        "images": int((manifest["status"] == "ok").sum()),
        "quarantined": int((manifest["status"] != "ok").sum()),
        "workers": workers,
        "manifest": dg.MetadataValue.path(str(st.root.joinpath(*manifest_parts))),
    })


def read_manifests(st) -> pd.DataFrame:
    parts = [st.read_parquet("vinbigdata", "images", f"manifest-{k}.parquet")
             for k in SHARD_PARTITIONS.get_partition_keys()
             if st.exists("vinbigdata", "images", f"manifest-{k}.parquet")]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=MANIFEST_COLUMNS)


@dg.asset(group_name="vinbigdata", kinds={"pandas", "parquet"}, deps=[vinbigdata_annotations, vinbigdata_images],
          description="Consensus boxes per image and united class: the study's majority-radiologist "
                      "rule (default) or WBF. Pixels of the original DICOM.")
def vinbigdata_boxes(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    st = xray.storage
    ann = st.read_parquet("vinbigdata", "annotations.parquet")
    method = xray.config.consensus
    if method == "wbf":
        man = read_manifests(st)
        sizes = man[man.status == "ok"].rename(columns={"orig_width": "width", "orig_height": "height"})
        kept = consensus.weighted_boxes_fusion(ann[ann.image_id.isin(sizes.image_id)], sizes[["image_id", "width", "height"]],
                                               iou_thr=xray.config.wbf_iou)
    elif method == "majority":
        kept = consensus.majority_radiologist(ann)
    else:
        raise ValueError(f"unknown consensus method {method!r} (profile {xray.profile}); use 'majority' or 'wbf'")
    before = consensus.to_united(ann)
    kept = kept.assign(united=kept["class_id"].map(consensus.VINBIGDATA_TO_UNITED))
    st.write_parquet(kept, "vinbigdata", "boxes.parquet")
    counts = pd.DataFrame({
        "class": list(UNITED_CLASSES),
        "boxes_all_readers": before["united"].value_counts().reindex(UNITED_CLASSES).fillna(0).astype(int).to_numpy(),
        "boxes_consensus": kept["united"].value_counts().reindex(UNITED_CLASSES).fillna(0).astype(int).to_numpy(),
    })
    agreement = consensus.reader_agreement(ann)
    counts = counts.merge(agreement, on="class")
    context.log.info(f"consensus ({method}): {len(before)} reader boxes -> {len(kept)} boxes")
    return dg.MaterializeResult(metadata={
        "method": method,
        "dagster/row_count": len(kept),
        "images_with_boxes": int(kept["image_id"].nunique()),
        "boxes_per_class_and_reader_agreement": table_md(counts.round(3)),
        "mean_reader_agreement_iou": float(agreement["mean_pairwise_iou"].mean()),
    })
