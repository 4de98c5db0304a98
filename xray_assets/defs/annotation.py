"""The annotation loop's proposals: `annotation_queue` ranks label-only NIH images per task for a
radiologist's time (see `core/acquisition.py` for the score and the test split's share)."""

import json
import shutil
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from .. import tracking
from ..core import acquisition, atomic, batch_export, detection, layout
from ..core.bounds import png_dimensions
from ..core.classes import TASKS
from ..core.detection import AP_FLOOR, DetectionRule
from ..core.splits import shard_of
from ..records import ModelRecord, find_rule
from ..serve import runtime as fast
from .automation import code_version, content_version, on_new_data
from .drop_tables import nih_image_index, read_drop_tables
from .evaluation import nms_thresholds
from .gate import champion_gate
from .nih import nih_boxes, nih_labels
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource, share_cores, table_value
from .serving import served_int8
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
            xray.tracking_uri, mv.run_id, xray.storage.dir(*layout.served_version(task, mv.version))
        )
        return weights, str(mv.version), DetectionRule.from_tags(mv.tags), int(mv.tags["imgsz"])
    record = ModelRecord.read(xray.storage, task)
    rule = find_rule(xray.storage, task)
    if rule is None:
        raise dg.Failure(f"{task}: no champion and no tuned rule yet: materialise nms_thresholds")
    weights = xray.storage.local(*layout.weights(task))
    return weights, record.model_version or "local", rule, record.imgsz


def fast_scorer(xray: XrayResource, task: str, champion: tuple, log):
    """The champion ((weights, version, rule, imgsz), `champion_model`'s) on the served runtime,
    tuned for many images: the fastest OpenVINO path whose test figures hold and whose queue
    scores rank like the float weights' on this CPU (`serve.quantize`), else the float weights."""
    weights, version, rule, imgsz = champion
    from ..serve.models import ServedModel
    from ..serve.runtime import THROUGHPUT

    settings = xray.settings
    return ServedModel(
        task=task,
        version=str(version),
        chosen="queue",
        rule=rule,
        imgsz=imgsz,
        classes=list(TASKS[task].classes),
        weights=weights,
        int8=settings.int8,
        serve_tolerance=settings.serve_tolerance,
        storage=xray.storage,
        hint=THROUGHPUT,
        for_queue=True,
    ).load(log)


def pending_images(xray: XrayResource, task: str) -> set[str]:
    """Images of this task's exported batches whose annotations have not come back in a drop."""

    st = xray.storage
    if not st.exists(*layout.batches_table(task)):
        return set()
    sent = set(st.read_parquet(*layout.batches_table(task))["image_id"])
    back = read_drop_tables(xray.shared, "tasks")
    return sent - (set(back["image_id"]) if len(back) else set())


@dg.asset(
    group_name="datasets",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "parquet"},
    owners=OWNERS,
    tags={"stage": "annotate"},
    deps=[champion_gate, served_int8, trained_models, nms_thresholds, nih_labels, nih_boxes],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=on_new_data(only=["champion_gate", "nih_boxes"]),
    code_version=code_version(acquisition),
    description="Label-only NIH images ranked for a radiologist's time by the champion's uncertainty.",
)
def annotation_queue(
    context: dg.AssetExecutionContext, config: QueueConfig, xray: XrayResource
) -> dg.MaterializeResult:
    """Label-only NIH images ranked for annotation by the champion's uncertainty and the known label
    (partially boxed images first where the profile leaves them out of training); train/val patients
    by acquisition, test patients only at random, at a fixed share. Scores are cached per (image,
    model version)."""
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
    splits = acquisition.patient_splits(cands["patient_id"], profile.split_fractions, profile.seed)
    trainval = cands[cands["patient_id"].map(splits) != "test"]
    todo = acquisition.to_score(trainval, cache, version)
    if config.shards > 1:
        todo = todo[todo["image_id"].map(lambda i: shard_of(i, config.shards)) == config.shard]
    if config.limit:
        todo = todo.head(config.limit)
    seconds, per_minute, runtime, scored = 0.0, None, "nothing scored this run", 0
    if len(todo):
        share_cores()
        champion = (weights, version, rule, imgsz)
        fresh, seconds, runtime = _score(context, xray, task, champion, todo)
        scored = len(fresh)
        per_minute = round(60 * scored / seconds, 1) if seconds > 0 else None
        cache = pd.concat([cache[cache["image_id"].isin(set(cands["image_id"]))], fresh])
        cache = cache.drop_duplicates(["image_id", "model_version"], keep="last")
        st.write_parquet(cache.reset_index(drop=True), *layout.queue_scores(task.name))
    current = cache[cache["model_version"] == str(version)]
    queue = acquisition.rank(
        cands,
        current,
        pd.Series(splits),
        profile.seed,
        partial_first=profile.exclude_unboxed_findings,
    )
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
            "scored_this_run": scored,
            "not_yet_scored": unscored,
            "images_per_minute": per_minute,
            "scoring_seconds": round(seconds, 1),
            "scoring_runtime": runtime,
            "score": "mean over listed unboxed findings of (1 - champion's best confidence) + "
            f"{acquisition.LAMBDA} x mean binary entropy of its detections",
            "top": table_value(shown.drop(columns=["patient_id"])),
        },
        data_version=content_version(queue[["image_id", "rank"]], version),
    )


def _score(context, xray: XrayResource, task, champion, todo: pd.DataFrame):
    """(acquisition scores of `todo`'s images, seconds spent, the runtime used): the champion on
    the served runtime's fastest path that ranks like its float weights on this CPU, else PyTorch."""
    weights, version, rule, imgsz = champion
    index = nih_image_index(xray.data("nih"), xray.shared)
    todo = todo[todo["image_id"].isin(set(index))]
    images = pd.DataFrame(
        {"image_id": todo["image_id"], "path": [str(index[i]) for i in todo["image_id"]]}
    )
    scorer = fast_scorer(xray, task.name, champion, context.log.info)
    verdict = f"INT8 {scorer.check.verdict}"
    runtime = (
        f"openvino {scorer.precision} (the {scorer.check.queue} path; {verdict})"
        if scorer.runner is not None
        else f"pytorch f32 (no fast path ranks like the float weights; {verdict})"
    )
    context.log.info(
        f"{task.name}: scoring {len(images)} candidate(s) with version {version} on "
        f"{runtime}: {scorer.check.reason}"
    )
    t0 = time.time()

    def progress(n: int, m: int) -> None:
        context.log.info(f"{task.name}: scored {n}/{m}")

    floor = rule.at(conf=AP_FLOOR)
    dets = (
        fast.detect_paths(scorer.runner, images, floor, task.classes, progress=progress)
        if scorer.runner is not None
        else detection.detect_images(scorer.model, images, floor, imgsz, task.classes, progress)
    )
    seconds = time.time() - t0
    return acquisition.score_images(todo, dets, version), seconds, runtime


# -- batches: the top of the queue, exported ------------------------------------------------------

BATCH_PARTITIONS = dg.DynamicPartitionsDefinition(name="annotation_batches")


def batch_key(task: str, n: int) -> str:
    return f"{task}-{n:03d}"


def task_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def next_batch_number(existing: list[str], task: str) -> int:
    """1 + the highest batch number of this task among the partition keys (1 for the first)."""
    numbers = [
        int(k.rsplit("-", 1)[1])
        for k in existing
        if task_of(k) == task and k.rsplit("-", 1)[1].isdigit()
    ]
    return max(numbers, default=0) + 1


class BatchConfig(dg.Config):
    size: int = Field(default=20, description="images in the batch (K)")
    quota: dict[str, int] = Field(
        default_factory=dict,
        description="at most this many images listing a finding (task class -> count)",
    )
    test_share: float = Field(
        default=acquisition.TEST_SHARE,
        description="share of the batch drawn at random from test patients' candidates",
    )
    min_score: float = Field(
        default=0.0,
        description="pre-annotations from this confidence (0: the task's tuned rule's conf)",
    )
    max_per_image: int = Field(
        default=10, description="at most this many pre-annotations per image"
    )


def label_studio_client(xray: XrayResource):
    """(the Label Studio client, "") from XRAY_LABEL_STUDIO_URL and its token, else from the service
    `make annotate` recorded under the storage root; (None, why not) when neither."""
    from .. import label_studio

    s = xray.settings
    url, token, origin = label_studio.connection(
        s.label_studio_url, s.label_studio_token, s.storage_dir
    )
    if not url:
        return None, origin
    return label_studio.Client(url, token), ""


def send_to_label_studio(xray: XrayResource, key, task, batch, dets, model_version):
    """(project id, what happened): the batch's tasks and pre-annotations imported into the task's
    project, the project set to pre-label with this model version; (0, why not) without a service."""
    folder = xray.storage.local_path(*layout.batch(key, "images"))
    from .. import label_studio

    client, why = label_studio_client(xray)
    if client is None:
        return (
            0,
            f"NOT SENT to Label Studio: {why}. Start it with `make annotate`, then re-materialise this partition",
        )
    root = xray.settings.storage_dir
    project = client.project(
        f"xray-assets {xray.config.name} {task.name}",
        batch_export.label_config(task),
        description=f"Boxes for {task.name}: correct the model's boxes, draw what it missed.",
    )
    client.local_storage(project, folder, f"batch {key}")
    tasks = batch_export.label_studio_tasks(
        batch, dets, model_version, lambda i: label_studio.document_url(folder / i, root)
    )
    client.import_tasks(project, tasks)
    client.prelabel_with(project, model_version)
    xray.storage.write_json(
        {"project": project, "url": client.url, "tasks": len(tasks)},
        *layout.batch(key, layout.BATCH_PROJECT),
    )
    return project, f"{len(tasks)} task(s) in Label Studio project {project} ({client.url})"


@dg.asset(
    group_name="datasets",
    partitions_def=BATCH_PARTITIONS,
    kinds={"json", "xml"},
    owners=OWNERS,
    tags={"stage": "annotate"},
    # a batch `<task>-<n>` reads its task's queue; Dagster has no public mapping from a dynamic key
    # to a static one, so the edge spans every task's queue
    deps=[dg.AssetDep(annotation_queue, partition_mapping=dg.AllPartitionMapping())],
    code_version=code_version(batch_export),
    # no automation condition: a batch is a person's decision, with its size and quotas. With
    # `on_missing` the automation sensor exported a partition that `xray-assets batch` was exporting
    # too, at the default size, and Label Studio got both sets of tasks (found walking the loop)
    description="One exported annotation batch: the top of a task's queue, pre-annotated for Label Studio, COCO and CVAT.",
)
def annotation_batches(
    context: dg.AssetExecutionContext, config: BatchConfig, xray: XrayResource
) -> dg.MaterializeResult:
    """One exported annotation batch (partition `<task>-<n>`): the top K of the task's queue, one image
    per patient, quotas per finding, the test split's random share; the champion's boxes as pre-
    annotations to Label Studio (a project per task) and as COCO and CVAT XML files."""
    key = context.partition_key
    task = TASKS[task_of(key)]
    st = xray.storage
    if st.remote:
        raise dg.Failure("annotation batches need a local storage root (Label Studio serves files)")
    _never_twice(st, key, task.name)
    queue = st.read_parquet(*layout.queue(task.name))
    queue = queue[~queue["image_id"].isin(pending_images(xray, task.name))]
    picked = acquisition.batch(queue, config.size, config.quota or None, config.test_share)
    if picked.empty:
        raise dg.Failure(f"{task.name}: the queue has no image to propose")
    batch, boxed = _batch_images(xray, key, task, picked)
    folder = st.local_path(*layout.batch(key, "images"))
    weights, version, rule, imgsz = champion_model(xray, task.name)
    images = pd.DataFrame(
        {"image_id": batch["image_id"], "path": [str(folder / i) for i in batch["image_id"]]}
    )
    shown = rule.at(conf=config.min_score) if config.min_score else rule
    found = detection.detect_images(
        detection.load_model(weights), images, shown, imgsz, task.classes
    )
    dets = batch_export.pre_annotations(
        found, task, dict(zip(batch["image_id"], batch["listed"])), boxed
    )
    dets = (
        dets.sort_values(["image_id", "score"], ascending=[True, False])
        .groupby("image_id")
        .head(config.max_per_image)
        .reset_index(drop=True)
    )
    model_version = f"{xray.config.model_name(task.name)} v{version}"
    _write_batch(st, key, task, batch, dets, version)
    project, sent = send_to_label_studio(xray, key, task, batch, dets, model_version)
    if not project:
        context.log.warning(f"batch {key}: {sent}")
    context.log.info(f"batch {key}: {len(batch)} image(s), {len(dets)} pre-annotation(s); {sent}")
    return dg.MaterializeResult(
        metadata={
            "images": len(batch),
            "pre_annotations": len(dets),
            "test_images_random": int((batch["selection"] != "acquisition").sum()),
            "model_version": model_version,
            "label_studio": sent,
            "label_studio_project": project or 0,
            "coco": dg.MetadataValue.path(
                str(st.root.joinpath(*layout.batch(key, layout.BATCH_COCO)))
            ),
            "cvat": dg.MetadataValue.path(
                str(st.root.joinpath(*layout.batch(key, layout.BATCH_CVAT)))
            ),
            "batch": table_value(
                batch[["rank", "image_id", "selection", "kind"]].assign(
                    to_box=batch["listed"].map(", ".join),
                    boxed_already=batch["boxed"].map(", ".join),
                )
            ),
        },
    )


def _never_twice(st, key: str, task: str) -> None:
    """A batch once sent to Label Studio is not sent again: its radiologists would get every task
    twice. The failure names the command for the next batch."""
    if st.exists(*layout.batch(key, layout.BATCH_PROJECT)):
        sent = st.read_json(*layout.batch(key, layout.BATCH_PROJECT))
        raise dg.Failure(
            f"batch {key} was sent already ({sent['tasks']} task(s) in Label Studio project "
            f"{sent['project']}); sending it again would give its radiologists every task twice. "
            f"Make the next batch: xray-assets batch {task}"
        )


def _batch_images(xray: XrayResource, key: str, task, picked: pd.DataFrame):
    """(the batch: the picked images with their sizes, their listed findings still to box and those
    they already have boxes of; image -> boxed findings); the images copied into the batch's folder."""
    st = xray.storage
    index = nih_image_index(xray.data("nih"), xray.shared)
    labels = st.read_parquet(*layout.NIH_LABELS).set_index("image_id")["findings"]
    offered = set(batch_export.nih_labels_of(task))
    boxed = batch_export.boxed_findings(st.read_parquet(*layout.NIH_BOXES), picked["image_id"])
    with st.workdir(*layout.batch(key, "images")) as out:
        for image_id in picked["image_id"]:
            if not (out / image_id).exists():
                shutil.copyfile(index[image_id], out / image_id)
    folder = st.local_path(*layout.batch(key, "images"))
    sizes = [png_dimensions((folder / i).read_bytes()[:64]) for i in picked["image_id"]]
    ids = list(picked["image_id"])
    listed = [[f for f in labels[i] if f in offered] for i in ids]
    batch = picked.assign(
        width=[d.width for d in sizes],
        height=[d.height for d in sizes],
        listed=[[f for f in fs if f not in boxed.get(i, ())] for i, fs in zip(ids, listed)],
        boxed=[[f for f in fs if f in boxed.get(i, ())] for i, fs in zip(ids, listed)],
    )
    return batch, boxed


def _write_batch(st, key: str, task, batch: pd.DataFrame, dets: pd.DataFrame, version) -> None:
    """The batch's COCO and CVAT files and images table, and its rows in the task's batches table
    (pending until their drop is committed)."""
    st.write_text(batch_export.coco(batch, dets, task), *layout.batch(key, layout.BATCH_COCO))
    st.write_text(batch_export.cvat(batch, dets, task), *layout.batch(key, layout.BATCH_CVAT))
    st.write_parquet(
        batch.drop(columns=["listed", "boxed"]).assign(
            listed=batch["listed"].map(", ".join), boxed=batch["boxed"].map(", ".join)
        ),
        *layout.batch(key, layout.BATCH_IMAGES),
    )
    record = batch[["image_id", "patient_id", "split", "selection", "rank"]].assign(
        batch=key, model_version=str(version)
    )
    earlier = (
        st.read_parquet(*layout.batches_table(task.name))
        if st.exists(*layout.batches_table(task.name))
        else record.iloc[0:0]
    )
    st.write_parquet(
        pd.concat([earlier[earlier["batch"] != key], record], ignore_index=True),
        *layout.batches_table(task.name),
    )


# -- annotations back: a sensor that only looks, a run that pulls --------------------------------


class PullConfig(dg.Config):
    project: int = Field(description="the Label Studio project")
    task: str = Field(description="the task partition the project annotates")


@dg.op(
    description="Export the project's annotated tasks not yet in a drop into the inbox as a "
    "Label Studio JSON drop (the inbox sensor commits it as an annotation_drops partition)."
)
def pull_annotations(
    context: dg.OpExecutionContext, config: PullConfig, xray: XrayResource
) -> None:
    from ..core import inbox

    client, why = label_studio_client(xray)
    if client is None:
        raise dg.Failure(f"cannot pull from Label Studio: {why}")
    export = client.export(config.project)
    seen = read_drop_tables(xray.shared, "tasks")
    done = set(seen.loc[seen["project"] == str(config.project), "task"]) if len(seen) else set()
    fresh = [t for t in export if str(t.get("id")) not in done]
    if not fresh:
        context.log.info(f"project {config.project}: nothing new to pull")
        return
    ids = sorted(int(t["id"]) for t in fresh)
    name = f"label-studio-{config.task}-p{config.project}-t{ids[0]}-{ids[-1]}-{len(ids)}"
    folder = xray.inbox / name
    # the whole folder appears at once (a hidden temp folder renamed): the inbox sensor never sees half
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "export.json").write_text(json.dumps(fresh))
        (tmp / inbox.READY).write_text("")
    context.log.info(f"project {config.project}: {len(fresh)} annotated task(s) -> {folder.name}")


@dg.job(description="Pull a Label Studio project's new annotations into the inbox.")
def pull_annotations_job():
    pull_annotations()


def batch_projects(xray: XrayResource) -> dict[int, str]:
    """Label Studio project -> task, from the exported batches' records."""
    st, out = xray.storage, {}
    for key in st.subfolders(*layout.BATCHES):
        if st.exists(*layout.batch(key, layout.BATCH_PROJECT)):
            out[int(st.read_json(*layout.batch(key, layout.BATCH_PROJECT))["project"])] = task_of(
                key
            )
    return out


@dg.sensor(
    job=pull_annotations_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Counts each batch project's annotated tasks in Label Studio; past its cursor, requests "
    "a pull. It never copies or writes anything.",
)
def label_studio_annotations(
    context: dg.SensorEvaluationContext, xray: XrayResource
) -> dg.SensorResult | dg.SkipReason:
    client, why = label_studio_client(xray)
    if client is None:
        return dg.SkipReason(why)
    projects = batch_projects(xray)
    if not projects:
        return dg.SkipReason("no batch has been sent to Label Studio")
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests = []
    for project, task in sorted(projects.items()):
        n = len(client.completed(project))
        if n > int(cursor.get(str(project), 0)):
            requests.append(
                dg.RunRequest(
                    run_key=f"label-studio-{project}-{n}",
                    run_config={
                        "ops": {"pull_annotations": {"config": {"project": project, "task": task}}}
                    },
                    tags={"xray/label_studio_project": str(project)},
                )
            )
            cursor[str(project)] = n
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


defs = dg.Definitions(
    assets=[annotation_queue, annotation_batches],
    jobs=[pull_annotations_job],
    sensors=[label_studio_annotations],
)
