"""Background sampling, patient splits and the six task datasets."""


from pathlib import Path

import dagster as dg
import pandas as pd

from ..core import plots
from ..core.classes import TASKS
from ..core.sampling import sample_background
from ..core.splits import assign_splits
from ..core.yolo_dataset import build_dataset, content_hash, dataset_checks, instances_table, task_inputs
from .nih import nih_boxes, nih_labels
from .resources import TASK_PARTITIONS, XrayResource, md_image, table_md
from .vinbigdata import read_manifests, vinbigdata_annotations, vinbigdata_boxes

NIH_PNG_SIZE = 1024


def nih_image_index(data_dir: Path) -> dict[str, Path]:
    """image file name -> path, over `images_001/images` .. `images_012/images` (or a flat `images/`)."""
    index: dict[str, Path] = {}
    for pattern in ("images_*/images/*.png", "images/*.png"):
        for p in data_dir.glob(pattern):
            index.setdefault(p.name, p)
    return index


@dg.asset(group_name="datasets", kinds={"pandas", "parquet"},
          deps=[nih_labels, nih_boxes, vinbigdata_annotations],
          description="'No Finding' NIH images drawn as background: ratio x annotated images, seeded "
                      "and stable (a larger draw keeps every earlier pick).")
def background_samples(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    st, cfg = xray.storage, xray.config
    lab = st.read_parquet("nih", "labels.parquet")
    boxes = st.read_parquet("nih", "boxes.parquet")
    index = nih_image_index(xray.data("nih"))
    no_finding = lab[lab["findings"].map(lambda f: list(f) == ["No Finding"])]
    on_disk = no_finding[no_finding["image_id"].isin(index)]
    n_annotated = int(boxes["image_id"].nunique())
    n = int(round(cfg.background_ratio * n_annotated))
    previous = st.read_parquet("datasets", "background.parquet") if st.exists("datasets", "background.parquet") else None
    picked = sample_background(on_disk[["image_id", "patient_id"]], n, seed=cfg.seed,
                               previous=previous[previous.source == "nih"] if previous is not None else None)
    picked = picked.assign(source="nih")
    if len(picked) < n:
        context.log.warning(f"asked for {n} background images, only {len(on_disk)} 'No Finding' images on disk")
    if cfg.include_vinbigdata_no_finding:
        ann = st.read_parquet("vinbigdata", "annotations.parquet")
        only_nf = ann.groupby("image_id")["class_id"].apply(lambda s: bool((s == 14).all()))
        vbd = pd.DataFrame({"image_id": only_nf[only_nf].index, "patient_id": -1, "source": "vinbigdata"})
        picked = pd.concat([picked, vbd], ignore_index=True)
    st.write_parquet(picked, "datasets", "background.parquet")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(picked),
        "annotated_nih_images": n_annotated,
        "ratio": cfg.background_ratio,
        "no_finding_candidates": len(on_disk),
        "kept_from_previous_draw": int(picked["image_id"].isin(previous["image_id"]).sum()) if previous is not None else 0,
    })


@dg.asset(group_name="datasets", kinds={"pandas", "parquet"},
          deps=[nih_labels, nih_boxes, vinbigdata_boxes, background_samples],
          description="Every image of the study -> train/val/test, grouped by patient (a VinBigData "
                      "image is its own group); a pure function of (patient, seed).")
def patient_splits(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    st, cfg = xray.storage, xray.config
    lab = st.read_parquet("nih", "labels.parquet").set_index("image_id")
    nboxes = st.read_parquet("nih", "boxes.parquet")
    bg = st.read_parquet("datasets", "background.parquet")
    index = nih_image_index(xray.data("nih"))
    rows, missing = [], []
    nih_ids = [(i, "annotated") for i in sorted(nboxes["image_id"].unique())]
    nih_ids += [(i, "background") for i in bg.loc[bg.source == "nih", "image_id"]]
    for image_id, kind in nih_ids:
        if image_id not in index:
            missing.append(image_id)
            continue
        pid = int(lab.loc[image_id, "patient_id"]) if image_id in lab.index else int(image_id[:8])
        rows.append({"image_id": image_id, "source": "nih", "kind": kind, "group": f"nih:{pid}",
                     "path": str(index[image_id]), "width": NIH_PNG_SIZE, "height": NIH_PNG_SIZE,
                     "orig_width": NIH_PNG_SIZE, "orig_height": NIH_PNG_SIZE})
    man = read_manifests(st)
    man = man[man["status"] == "ok"].set_index("image_id")
    vbox = st.read_parquet("vinbigdata", "boxes.parquet")
    vbd_ids = [(i, "annotated") for i in sorted(vbox["image_id"].unique())]
    vbd_ids += [(i, "background") for i in bg.loc[bg.source == "vinbigdata", "image_id"]]
    for image_id, kind in vbd_ids:
        if image_id not in man.index:
            missing.append(image_id)
            continue
        m = man.loc[image_id]
        rows.append({"image_id": image_id, "source": "vinbigdata", "kind": kind, "group": f"vbd:{image_id}",
                     # where the converted PNG is on this storage root (or its mirror), whatever
                     # machine converted it
                     "path": str(st.local_path("vinbigdata", "images", "png", Path(m["path"]).name)),
                     "width": int(m["width"]), "height": int(m["height"]),
                     "orig_width": int(m["orig_width"]), "orig_height": int(m["orig_height"])})
    table = pd.DataFrame(rows)
    table["split"] = assign_splits(table["group"], cfg.split_fractions, seed=cfg.seed).to_numpy()
    st.write_parquet(table, "datasets", "splits.parquet")
    st.write_parquet(pd.DataFrame({"image_id": missing}), "datasets", "missing_images.parquet")
    if missing:
        context.log.warning(f"{len(missing)} referenced image(s) not on disk (or not converted), "
                            f"left out: {missing[:5]}")
    summary = table.groupby(["source", "kind", "split"]).size().unstack("split").fillna(0).astype(int).reset_index()
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(table),
        "patients": int(table["group"].nunique()),
        "missing_images": len(missing),
        "images_per_split": table_md(summary),
    })


@dg.asset_check(asset=patient_splits, blocking=True, description="No patient appears in two splits.")
def no_patient_in_two_splits(xray: XrayResource) -> dg.AssetCheckResult:
    table = xray.storage.read_parquet("datasets", "splits.parquet")
    per_group = table.groupby("group")["split"].nunique()
    leaked = per_group[per_group > 1]
    return dg.AssetCheckResult(passed=leaked.empty, metadata={
        "leaked_patients": len(leaked), "examples": ", ".join(map(str, leaked.index[:10])) or "none"})


@dg.asset_check(asset=patient_splits, description="No referenced image is missing on disk.")
def no_missing_images(xray: XrayResource) -> dg.AssetCheckResult:
    missing = xray.storage.read_parquet("datasets", "missing_images.parquet")
    return dg.AssetCheckResult(passed=missing.empty, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"missing": len(missing)})


DATASET_CHECKS = {
    "no_patient_in_two_splits": ("No patient's images in two splits of this task's dataset.", dg.AssetCheckSeverity.ERROR, True),
    "boxes_inside_images": ("Every box inside its image with positive area.", dg.AssetCheckSeverity.ERROR, True),
    "every_class_in_every_split": ("Every class of the task has instances in train, val and test.",
                                   dg.AssetCheckSeverity.WARN, False),
    "listed_images_exist": ("Every image the dataset lists exists on disk.", dg.AssetCheckSeverity.ERROR, True),
}


def read_task_inputs(st, task_name: str):
    return task_inputs(st.read_parquet("datasets", "splits.parquet"), st.read_parquet("nih", "boxes.parquet"),
                       st.read_parquet("vinbigdata", "boxes.parquet"), TASKS[task_name])


@dg.asset(group_name="datasets", partitions_def=TASK_PARTITIONS, kinds={"yolo"}, deps=[patient_splits],
          check_specs=[dg.AssetCheckSpec(name, asset="yolo_datasets", description=d, blocking=b)
                       for name, (d, _, b) in DATASET_CHECKS.items()],
          description="One YOLO-format dataset per task: data.yaml, labels, linked images, split lists.")
def yolo_datasets(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    task = TASKS[context.partition_key]
    st = xray.storage
    images, boxes = read_task_inputs(st, task.name)
    fetched = st.localise(images["path"])   # converted images kept on an object store come to the mirror
    if fetched:
        context.log.info(f"{task.name}: fetched {fetched} image(s) from {st.url}")
    final = st.local_path("datasets", task.name)
    with st.atomic_dir("datasets", task.name) as tmp:
        built = build_dataset(tmp, task, images, boxes, final_dir=final)
        tb = built["boxes"]
        images.to_parquet(tmp / "images.parquet", index=False)
        tb.to_parquet(tmp / "boxes.parquet", index=False)
        inst = instances_table(images, tb, task.classes)
        (tmp / "labels.png").write_bytes(plots.label_distribution(tb, images, task.classes))
        (tmp / "mosaic.png").write_bytes(plots.dataset_mosaic(images, tb, task.classes))
        digest = content_hash(images, tb)
        (tmp / "dataset_hash.txt").write_text(digest)
    root = final
    context.log.info(f"{task.name}: {len(images)} images, {len(tb)} boxes, hash {digest}")
    checks = []
    for name, (passed, facts) in dataset_checks(images, tb, task.classes).items():
        if not passed:
            context.log.warning(f"{task.name}: check {name} failed: {facts}")
        checks.append(dg.AssetCheckResult(check_name=name, passed=passed, severity=DATASET_CHECKS[name][1],
                                          metadata=facts))
    return dg.MaterializeResult(
        metadata={
            "data_yaml": dg.MetadataValue.path(str(st.root / "datasets" / task.name / "data.yaml")),
            "dataset_hash": digest,
            "images": len(images),
            "boxes": len(tb),
            "instances_per_class_and_split": table_md(inst),
            "label_distribution": md_image(root / "labels.png"),
            "sample_mosaic": md_image(root / "mosaic.png"),
        },
        data_version=dg.DataVersion(digest),
        check_results=checks,
    )
