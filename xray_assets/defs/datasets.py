"""Background sampling, patient splits and the six task datasets."""

from pathlib import Path

import dagster as dg
import pandas as pd

from ..core import layout, plots, sampling, splits, yolo_dataset
from ..core.classes import TASKS
from ..core.sampling import sample_background
from ..core.splits import assign_splits, study_images
from ..core.yolo_dataset import (
    build_dataset,
    content_hash,
    dataset_checks,
    instances_table,
    task_inputs,
)
from .automation import code_version, content_version, on_new_data
from .drop_tables import nih_image_index
from .nih import nih_boxes, nih_labels
from .resources import TASK_PARTITIONS, XrayResource, column_schema, table_value, thumbnail
from .vinbigdata import read_manifests, vinbigdata_annotations, vinbigdata_boxes, vinbigdata_images

OWNERS = ["team:radiology-data"]
TAGS = {"stage": "prepare"}
BACKGROUND_SCHEMA = column_schema(
    {
        "image_id": ("string", "a 'No Finding' image"),
        "patient_id": ("int", "its patient (-1: VinBigData)"),
        "source": ("string", "nih or vinbigdata"),
    }
)
SPLITS_SCHEMA = column_schema(
    {
        "image_id": ("string", "the image"),
        "source": ("string", "nih or vinbigdata"),
        "kind": ("string", "annotated or background"),
        "group": ("string", "the patient (nih:<id>) or the image (vbd:<id>)"),
        "path": ("string", "the PNG on this storage root (or its mirror)"),
        "width": ("int", "PNG width"),
        "height": ("int", "PNG height"),
        "orig_width": ("int", "the boxes' pixel space width"),
        "orig_height": ("int", "the boxes' pixel space height"),
        "split": ("string", "train, val or test"),
    }
)


@dg.asset(
    group_name="datasets",
    kinds={"pandas", "parquet"},
    owners=OWNERS,
    tags=TAGS,
    deps=[nih_labels, nih_boxes, vinbigdata_annotations],
    automation_condition=on_new_data(),
    code_version=code_version(sampling),
    metadata={"dagster/column_schema": BACKGROUND_SCHEMA},
    description="'No Finding' NIH images drawn as background: ratio x annotated images, seeded and stable "
    "(a larger draw keeps every earlier pick).",
)
def background_samples(
    context: dg.AssetExecutionContext, xray: XrayResource
) -> dg.MaterializeResult:
    st, cfg = xray.storage, xray.config
    lab = st.read_parquet(*layout.NIH_LABELS)
    boxes = st.read_parquet(*layout.NIH_BOXES)
    index = nih_image_index(xray.data("nih"), xray.shared)
    no_finding = lab[lab["findings"].map(lambda f: list(f) == ["No Finding"])]
    on_disk = no_finding[no_finding["image_id"].isin(index)]
    n_annotated = int(boxes["image_id"].nunique())
    n = int(round(cfg.background_ratio * n_annotated))
    previous = (
        st.read_parquet("datasets", "background.parquet")
        if st.exists("datasets", "background.parquet")
        else None
    )
    picked = sample_background(
        on_disk[["image_id", "patient_id"]],
        n,
        seed=cfg.seed,
        previous=previous[previous.source == "nih"] if previous is not None else None,
    )
    picked = picked.assign(source="nih")
    if len(picked) < n:
        context.log.warning(
            f"asked for {n} background images, only {len(on_disk)} 'No Finding' images on disk"
        )
    if cfg.include_vinbigdata_no_finding:
        ann = st.read_parquet(*layout.VBD_ANNOTATIONS)
        only_nf = ann.groupby("image_id")["class_id"].apply(lambda s: bool((s == 14).all()))
        vbd = pd.DataFrame(
            {"image_id": only_nf[only_nf].index, "patient_id": -1, "source": "vinbigdata"}
        )
        picked = pd.concat([picked, vbd], ignore_index=True)
    st.write_parquet(picked, "datasets", "background.parquet")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(picked),
            "annotated_nih_images": n_annotated,
            "ratio": cfg.background_ratio,
            "no_finding_candidates": len(on_disk),
            "kept_from_previous_draw": int(picked["image_id"].isin(previous["image_id"]).sum())
            if previous is not None
            else 0,
        },
        data_version=content_version(picked),
    )


@dg.asset(
    group_name="datasets",
    kinds={"pandas", "parquet"},
    owners=OWNERS,
    tags=TAGS,
    deps=[nih_labels, nih_boxes, vinbigdata_images, vinbigdata_boxes, background_samples],
    automation_condition=on_new_data(),
    code_version=code_version(splits),
    metadata={"dagster/column_schema": SPLITS_SCHEMA},
    description="Every image of the study in train, val or test, grouped by patient.",
)
def patient_splits(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """Every image of the study -> train/val/test, grouped by patient (a VinBigData image is its own
    group); a pure function of (patient, seed)."""
    st, cfg = xray.storage, xray.config
    lab = st.read_parquet(*layout.NIH_LABELS)
    nboxes = st.read_parquet(*layout.NIH_BOXES)
    bg = st.read_parquet("datasets", "background.parquet")
    man = read_manifests(st)
    man = man[man["status"] == "ok"]
    # where each converted PNG is on this storage root (or its mirror), whatever machine converted it
    man = man.assign(
        path=[str(st.local_path("vinbigdata", "images", "png", Path(p).name)) for p in man["path"]]
    )
    table, missing = study_images(
        nboxes["image_id"],
        list(bg.loc[bg.source == "nih", "image_id"]),
        dict(zip(lab["image_id"], lab["patient_id"])),
        nih_image_index(xray.data("nih"), xray.shared),
        st.read_parquet(*layout.VBD_BOXES)["image_id"],
        list(bg.loc[bg.source == "vinbigdata", "image_id"]),
        man,
    )
    table["split"] = assign_splits(table["group"], cfg.split_fractions, seed=cfg.seed).to_numpy()
    st.write_parquet(table, *layout.SPLITS)
    st.write_parquet(
        pd.DataFrame({"image_id": pd.Series(missing, dtype=str)}),
        "datasets",
        "missing_images.parquet",
    )
    if missing:
        context.log.warning(
            f"{len(missing)} referenced image(s) not on disk (or not converted), left out: {missing[:5]}"
        )
    summary = (
        table.groupby(["source", "kind", "split"])
        .size()
        .unstack("split")
        .fillna(0)
        .astype(int)
        .reset_index()
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "patients": int(table["group"].nunique()),
            "missing_images": len(missing),
            "images_per_split": table_value(summary),
        },
        data_version=content_version(table.drop(columns=["path"])),
    )


@dg.asset_check(
    asset=patient_splits, blocking=True, description="No patient appears in two splits."
)
def no_patient_in_two_splits(xray: XrayResource) -> dg.AssetCheckResult:
    table = xray.storage.read_parquet(*layout.SPLITS)
    per_group = table.groupby("group")["split"].nunique()
    leaked = per_group[per_group > 1]
    return dg.AssetCheckResult(
        passed=leaked.empty,
        metadata={
            "leaked_patients": len(leaked),
            "examples": ", ".join(map(str, leaked.index[:10])) or "none",
        },
    )


@dg.asset_check(asset=patient_splits, description="No referenced image is missing on disk.")
def no_missing_images(xray: XrayResource) -> dg.AssetCheckResult:
    missing = xray.storage.read_parquet("datasets", "missing_images.parquet")
    return dg.AssetCheckResult(
        passed=missing.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"missing": len(missing)},
    )


DATASET_CHECKS = {
    "no_patient_in_two_splits": (
        "No patient's images in two splits of this task's dataset.",
        dg.AssetCheckSeverity.ERROR,
        True,
    ),
    "boxes_inside_images": (
        "Every box inside its image with positive area.",
        dg.AssetCheckSeverity.ERROR,
        True,
    ),
    "every_class_in_every_split": (
        "Every class of the task has instances in train, val and test.",
        dg.AssetCheckSeverity.WARN,
        False,
    ),
    "listed_images_exist": (
        "Every image the dataset lists exists on disk.",
        dg.AssetCheckSeverity.ERROR,
        True,
    ),
}


def read_task_inputs(xray: XrayResource, task_name: str):
    st = xray.storage
    return task_inputs(
        st.read_parquet(*layout.SPLITS),
        st.read_parquet(*layout.NIH_BOXES),
        st.read_parquet(*layout.VBD_BOXES),
        TASKS[task_name],
        nih_labels=st.read_parquet(*layout.NIH_LABELS),
        exclude_unboxed=xray.config.exclude_unboxed_findings,
    )


@dg.asset(
    group_name="datasets",
    partitions_def=TASK_PARTITIONS,
    kinds={"yolo", "parquet"},
    owners=OWNERS,
    tags=TAGS,
    deps=[patient_splits, nih_labels, nih_boxes, vinbigdata_boxes],
    automation_condition=on_new_data(),
    code_version=code_version(yolo_dataset),
    metadata={"dagster/column_schema": SPLITS_SCHEMA},
    check_specs=[
        dg.AssetCheckSpec(name, asset="yolo_datasets", description=d, blocking=b)
        for name, (d, _, b) in DATASET_CHECKS.items()
    ],
    description="One YOLO-format dataset per task, its test split free of unboxed findings.",
)
def yolo_datasets(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """One YOLO-format dataset per task: data.yaml, labels, linked images, split lists (images.parquet
    has the columns shown). NIH images that list a finding of the task without a box are left out of
    the test split, and of training only where the profile says so (excluded.parquet)."""
    task = TASKS[context.partition_key]
    st = xray.storage
    images, boxes, excluded = read_task_inputs(xray, task.name)
    fetched = st.localise(
        images["path"]
    )  # converted images kept on an object store come to the mirror
    if fetched:
        context.log.info(f"{task.name}: fetched {fetched} image(s) from {st.url}")
    final = st.local_path("datasets", task.name)
    with st.atomic_dir("datasets", task.name) as tmp:
        built = build_dataset(tmp, task, images, boxes, final_dir=final)
        tb = built["boxes"]
        images.to_parquet(tmp / layout.DATASET_IMAGES, index=False)
        tb.to_parquet(tmp / layout.DATASET_BOXES, index=False)
        excluded.to_parquet(tmp / layout.DATASET_EXCLUDED, index=False)
        inst = instances_table(images, tb, task.classes)
        (tmp / "labels.png").write_bytes(plots.label_distribution(tb, images, task.classes))
        (tmp / "mosaic.png").write_bytes(plots.dataset_mosaic(images, tb, task.classes))
        digest = content_hash(images, tb)
        (tmp / layout.DATASET_HASH).write_text(digest)
    context.log.info(
        f"{task.name}: {len(images)} images, {len(tb)} boxes, hash {digest}; "
        f"{excluded['image_id'].nunique()} NIH image(s) left out for an unboxed finding"
    )
    checks = []
    for name, (passed, facts) in dataset_checks(images, tb, task.classes).items():
        if not passed:
            context.log.warning(f"{task.name}: check {name} failed: {facts}")
        checks.append(
            dg.AssetCheckResult(
                check_name=name, passed=passed, severity=DATASET_CHECKS[name][1], metadata=facts
            )
        )
    ex_counts = (
        excluded.groupby("finding")["image_id"]
        .nunique()
        .rename_axis("finding")
        .reset_index(name="images")
        if len(excluded)
        else pd.DataFrame({"finding": [], "images": []})
    )
    return dg.MaterializeResult(
        metadata={
            "data_yaml": dg.MetadataValue.path(
                str(st.root.joinpath(*layout.dataset(task.name), layout.DATA_YAML))
            ),
            "dataset_hash": digest,
            "images": len(images),
            "boxes": len(tb),
            "dagster/row_count": len(images),
            "excluded_unboxed_images": int(excluded["image_id"].nunique()),
            "excluded_by_finding": table_value(ex_counts),
            "instances_per_class_and_split": table_value(inst),
            "label_distribution": thumbnail(final / "labels.png"),
            "sample_mosaic": thumbnail(final / "mosaic.png"),
        },
        data_version=dg.DataVersion(digest),
        check_results=checks,
    )


defs = dg.Definitions(
    assets=[background_samples, patient_splits, yolo_datasets],
    asset_checks=[no_patient_in_two_splits, no_missing_images],
)
