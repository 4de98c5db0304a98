"""The annotation loop's proposals: `annotation_queue` ranks label-only NIH images per task for a
radiologist's time (see `core/acquisition.py` for the score and the test split's share)."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from .. import layout, tracking
from ..core import acquisition, detection
from ..core.classes import TASKS
from ..core.detection import AP_FLOOR, DetectionRule
from ..core.splits import assign_splits
from ..records import ModelRecord, find_rule
from .automation import code_version, content_version, on_new_data
from .datasets import nih_image_index
from .evaluation import nms_thresholds
from .gate import champion_gate
from .nih import nih_boxes, nih_labels
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource, share_cores, table_value
from .training import trained_models

OWNERS = ["team:radiology-data"]


class QueueConfig(dg.Config):
    limit: int = Field(
        default=0,
        description="score at most this many new candidates in this run (0: all); a CPU machine "
        "works through a large pool over several runs, the scores cached per (image, model version)",
    )
    shards: int = Field(default=1, description="split the candidates into this many shards")
    shard: int = Field(default=0, description="the shard this run scores (0 .. shards - 1)")


def champion_model(xray: XrayResource, task: str):
    """(weights, version, rule, imgsz) of the task's champion: the registry's `champion` alias
    (its weights, its rule and size from its tags), else the trained model on the storage root."""
    name = xray.config.model_name(task)
    mv = tracking.alias_version(xray.tracking_uri, name, tracking.CHAMPION)
    if mv is not None and "nms_conf" in (mv.tags or {}):
        weights = tracking.fetch_weights(
            xray.tracking_uri, mv.run_id, xray.storage.dir("serve", task, f"v{mv.version}")
        )
        return weights, str(mv.version), DetectionRule.from_tags(mv.tags), int(mv.tags["imgsz"])
    record = ModelRecord.read(xray.storage, task)
    rule = find_rule(xray.storage, task)
    if rule is None:
        raise dg.Failure(f"{task}: no champion and no tuned rule yet: materialise nms_thresholds")
    weights = xray.storage.local(*layout.weights(task))
    return weights, record.model_version or "local", rule, record.imgsz


def pending_images(xray: XrayResource, task: str) -> set[str]:
    """Images of this task's exported batches whose annotations have not come back as a drop."""
    st = xray.storage
    if not st.exists(*layout.batches_table(task)):
        return set()
    batches = st.read_parquet(*layout.batches_table(task))
    return set(batches.loc[batches["status"] == "pending", "image_id"])


@dg.asset(
    group_name="datasets",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "parquet"},
    owners=OWNERS,
    tags={"stage": "annotate"},
    deps=[champion_gate, trained_models, nms_thresholds, nih_labels, nih_boxes],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=on_new_data(only=["champion_gate", "nih_boxes"]),
    code_version=code_version(acquisition),
    description="Label-only NIH images ranked for annotation by the champion's uncertainty and the known "
    "label (partially boxed images first); train/val patients by acquisition, test patients only at "
    "random, at a fixed share. Scores are cached per (image, model version).",
)
def annotation_queue(
    context: dg.AssetExecutionContext, config: QueueConfig, xray: XrayResource
) -> dg.MaterializeResult:
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    labels = st.read_parquet(*layout.NIH_LABELS)
    boxes = st.read_parquet(*layout.NIH_BOXES)
    cands = acquisition.candidates(labels, boxes, task, pending_images(xray, task.name))
    weights, version, rule, imgsz = champion_model(xray, task.name)
    cache = (
        st.read_parquet(*layout.queue_scores(task.name))
        if st.exists(*layout.queue_scores(task.name))
        else pd.DataFrame(columns=acquisition.SCORE_COLUMNS)
    )
    splits = dict(
        zip(
            cands["patient_id"],
            assign_splits(
                [f"nih:{p}" for p in cands["patient_id"]], profile.split_fractions, profile.seed
            ),
        )
    )
    trainval = cands[cands["patient_id"].map(splits) != "test"]
    todo = acquisition.to_score(trainval, cache, version)
    if config.shards > 1:
        shard = todo["image_id"].map(lambda i: hash_shard(i, config.shards))
        todo = todo[shard == config.shard]
    if config.limit:
        todo = todo.head(config.limit)
    seconds, per_minute = 0.0, None
    if len(todo):
        share_cores()
        index = nih_image_index(xray.data("nih"), xray.shared)
        todo = todo[todo["image_id"].isin(set(index))]
        images = pd.DataFrame(
            {"image_id": todo["image_id"], "path": [str(index[i]) for i in todo["image_id"]]}
        )
        context.log.info(f"{task.name}: scoring {len(images)} candidate(s) with version {version}")
        t0 = time.time()
        dets = detection.detect_images(
            detection.load_model(weights),
            images,
            rule.at(conf=AP_FLOOR),
            imgsz,
            task.classes,
            progress=lambda n, m: context.log.info(f"{task.name}: scored {n}/{m}"),
        )
        seconds = time.time() - t0
        per_minute = round(60 * len(images) / seconds, 1) if seconds > 0 else None
        fresh = acquisition.score_images(todo, dets, version)
        cache = pd.concat([cache[cache["image_id"].isin(set(cands["image_id"]))], fresh])
        cache = cache.drop_duplicates(["image_id", "model_version"], keep="last")
        st.write_parquet(cache.reset_index(drop=True), *layout.queue_scores(task.name))
    current = cache[cache["model_version"] == str(version)]
    queue = acquisition.rank(cands, current, pd.Series(splits), profile.seed)
    st.write_parquet(queue, *layout.queue(task.name))
    unscored = len(trainval) - int(trainval["image_id"].isin(set(current["image_id"])).sum())
    shown = queue.head(20).assign(findings=queue.head(20)["findings"].map(", ".join))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(queue),
            "model_version": version,
            "candidates": len(cands),
            "partially_boxed": int((cands["kind"] == "partial").sum()),
            "label_only": int((cands["kind"] == "label_only").sum()),
            "test_candidates_random_only": int((queue["selection"] != "acquisition").sum()),
            "scored_this_run": len(todo),
            "not_yet_scored": unscored,
            "images_per_minute": per_minute,
            "scoring_seconds": round(seconds, 1),
            "score": "mean over listed unboxed findings of (1 - champion's best confidence) + "
            f"{acquisition.LAMBDA} x mean binary entropy of its detections",
            "top": table_value(shown.drop(columns=["patient_id"])),
        },
        data_version=content_version(queue[["image_id", "rank"]], version),
    )


def hash_shard(image_id: str, shards: int) -> int:
    import hashlib

    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) % shards


defs = dg.Definitions(assets=[annotation_queue])
