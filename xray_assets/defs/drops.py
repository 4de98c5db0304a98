"""Annotation drops as partitions: the inbox sensor only looks and requests; a run accepts a drop.

The `new_annotations` sensor lists the inbox, keeps complete drops (a `READY` file) whose content
hash it has not requested before, adds each as a partition of `annotation_drops` and requests that
partition with `run_key` = the hash. It copies, writes and moves nothing.

The `annotation_drops` run validates the drop against the data (the original files plus every other
accepted drop), then stores it under the storage root, shared by all profiles:
`drops/<partition>/images|dicom/...`, its rows as parquet (`labels`/`boxes` or `annotations`), and
last `drop.json`, the commit. The label assets read the original files plus every committed drop,
so the raw files are never written and each row keeps its `source`. Every write replaces a whole
object, so a run killed anywhere and run again leaves each row exactly once. A malformed drop
fails its run with the reason, and moves to `rejected/` with `ERROR.txt`.
"""

import json
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import atomic, inbox, layout
from ..core.labels import read_nih_labels, read_vinbigdata_annotations
from ..storage import Storage
from .automation import LABEL_ASSETS, ingest_labels_job
from .drop_tables import DROPS_READ, committed, nih_image_index, read_drop_tables
from .resources import DROP_PARTITIONS, XrayResource, table_value

CURSOR_KEEP = 500


def drops_behind(instance: dg.DagsterInstance, accepted: list[str]) -> dict[str, list[str]]:
    """label asset -> the committed drops its latest materialisation did not read."""
    behind = {}
    for name in LABEL_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        read: set[str] = set()
        if event is not None and event.asset_materialization is not None:
            entry = event.asset_materialization.metadata.get(DROPS_READ)
            read = set(entry.value) if entry is not None else set()
        missing = [k for k in accepted if k not in read]
        if missing:
            behind[name] = missing
    return behind


ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class DropConfig(dg.Config):
    folder: str = Field(
        default="",
        description="the drop's folder (the sensor sets it); empty: found by partition key",
    )


def _known(xray: XrayResource, key: str) -> inbox.Known:
    """What the data holds besides this drop (a re-run of an accepted drop is no duplicate)."""
    from ..core.bounds import png_dimensions
    from ..core.labels import read_nih_boxes

    nih_ids, vbd_ids, boxed = set(), set(), {}
    entry = xray.data("nih", "Data_Entry_2017.csv")
    if entry.exists():
        nih_ids |= set(read_nih_labels(entry)["image_id"])
    box_list = xray.data("nih", "BBox_List_2017.csv")
    if box_list.exists():
        b = read_nih_boxes(box_list)
        boxed.update(dict.fromkeys(zip(b["image_id"], b["label"]), box_list.name))
    train = xray.data("vinbigdata", "train.csv")
    if train.exists():
        vbd_ids |= set(read_vinbigdata_annotations(train)["image_id"])
    labels = read_drop_tables(xray.shared, "labels", exclude=key)
    if len(labels):
        nih_ids |= set(labels["image_id"])
    boxes = read_drop_tables(xray.shared, "boxes", exclude=key)
    if len(boxes):
        boxed.update(
            {
                p: f"drop {src}"
                for p, src in zip(zip(boxes["image_id"], boxes["label"]), boxes["source"])
            }
        )
    ann = read_drop_tables(xray.shared, "annotations", exclude=key)
    if len(ann):
        vbd_ids |= set(ann["image_id"])
    index: dict[str, Path] | None = None

    def nih_size(image_id: str):
        nonlocal index
        if index is None:
            index = nih_image_index(xray.data("nih"), xray.shared)
        path = index.get(image_id)
        if path is None:
            return None
        with open(path, "rb") as fh:
            d = png_dimensions(fh.read(64))
        return d.width, d.height

    return inbox.Known(nih_ids, vbd_ids, boxed, nih_size)


def pseudonym_key(shared: Storage) -> bytes:
    """The team's key for annotators' pseudonyms, made once under the shared root."""
    import secrets

    if not shared.exists(*layout.PSEUDONYM_KEY):
        shared.write_bytes(secrets.token_bytes(32), *layout.PSEUDONYM_KEY)
    return shared.local(*layout.PSEUDONYM_KEY).read_bytes()


def _validated(xray: XrayResource, key: str, folder: Path, digest: str) -> inbox.Drop:
    """The drop read and checked against the data; a malformed one (or a file no reader can take)
    is moved to rejected/ with the reason and fails the run: rejected, never lost."""
    try:
        return inbox.validate(
            folder,
            _known(xray, key),
            digest=digest,
            max_megapixels=xray.decode.max_megapixels,
            pseudonym_key=pseudonym_key(xray.shared),
        )
    except Exception as exc:
        reason = (
            str(exc)
            if isinstance(exc, inbox.DropError)
            else f"unreadable drop ({exc.__class__.__name__}: {exc})"
        )
        target = inbox.reject(folder, xray.inbox, reason)
        raise dg.Failure(
            description=f"drop {folder.name} rejected: {reason}",
            metadata={"moved_to": dg.MetadataValue.path(str(target))},
        ) from None


@dg.asset(
    partitions_def=DROP_PARTITIONS,
    group_name="datasets",
    kinds={"parquet", "png", "dicom"},
    owners=["team:radiology-data"],
    tags={"stage": "ingest"},
    description="One accepted annotation drop: its rows and images stored under the shared storage root.",
)
def annotation_drops(
    context: dg.AssetExecutionContext, config: DropConfig, xray: XrayResource
) -> dg.MaterializeResult:
    """One accepted annotation drop from the inbox: its rows as parquet and its images under the
    storage root (shared by all profiles). A malformed drop fails its run and moves to rejected/
    with ERROR.txt."""
    key = context.partition_key
    folder = (
        Path(config.folder)
        if config.folder and Path(config.folder).is_dir()
        else inbox.find(xray.inbox, key)
    )
    if folder is None:
        raise dg.Failure(
            description=f"drop {key}: no folder in {xray.inbox} or its accepted/ (moved or deleted?)"
        )
    digest = inbox.drop_digest(folder)
    drop = _validated(xray, key, folder, digest)
    st = xray.shared
    # 1. the images (whole files; a re-run rewrites the same names)
    sub = "images" if drop.fmt == "nih" else "dicom"
    with st.workdir(*layout.drop(key, sub), pull=False) as out:
        for name, src in drop.images.items():
            target = out / (name if drop.fmt == "nih" else f"{name}.dicom")
            if not target.exists() or target.stat().st_size != src.stat().st_size:
                atomic.copy_file(src, target)
    context.log.info(f"drop {key}: {len(drop.images)} new image file(s) stored")
    for r in drop.tables.get("kept_out", pd.DataFrame()).itertuples(index=False):
        context.log.warning(f"drop {key}: kept out: {r.reason}")
    # 2. the rows, one table after another
    for name, table in drop.tables.items():
        st.write_parquet(table, *layout.drop_table(key, name))
    # 3. the commit: from here the label assets read this drop
    record = {
        "key": key,
        "name": folder.name,
        "digest": digest,
        **drop.summary,
        "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dagster_run_id": context.run_id,
    }
    st.write_json(record, *layout.drop_commit(key))
    kept_at = inbox.archive(folder, xray.inbox, key)
    context.log.info(f"drop {key} accepted: {drop.summary}; archived at {kept_at}")
    rows = sum(len(t) for t in drop.tables.values())
    return dg.MaterializeResult(
        metadata={
            "format": drop.fmt,
            # one figure for the images a drop annotates, the same as its summary's
            "images": drop.summary["images"],
            "new_images": len(drop.images),
            "rows": rows,
            "digest": digest[:16],
            "summary": table_value(pd.DataFrame([drop.summary])),
            **(
                {"kept_out": table_value(drop.tables["kept_out"][["image_id", "label", "reason"]])}
                if len(drop.tables.get("kept_out", ()))
                else {}
            ),
            "stored_at": dg.MetadataValue.path(str(st.root.joinpath(*layout.drop(key)))),
            "archived_at": dg.MetadataValue.path(str(kept_at)),
            "dagster/row_count": rows,
        },
        data_version=dg.DataVersion(digest[:16]),
    )


@dg.sensor(
    target=[annotation_drops],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the inbox and requests one annotation_drops partition per complete drop (a folder "
    "with READY), run_key = its content hash. It never copies, writes or moves anything.",
)
def new_annotations(context: dg.SensorEvaluationContext, xray: XrayResource) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    requested: list[str] = state.get("requested", [])
    digests: dict[str, list[str]] = state.get("digests", {})  # folder -> [stat key, digest]
    complete, incomplete = inbox.pending(xray.inbox)
    requests, new_keys, notes, seen_now = [], [], [], {}
    for folder in complete:
        key_now = inbox.stat_key(folder)
        cached = digests.get(folder.name)
        digest = cached[1] if cached and cached[0] == key_now else inbox.drop_digest(folder)
        seen_now[folder.name] = [key_now, digest]
        if digest in requested:
            notes.append(f"{folder.name}: already requested (same content), waiting for its run")
            continue
        key = inbox.partition_key(folder.name, digest)
        new_keys.append(key)
        requested.append(digest)
        requests.append(
            dg.RunRequest(
                run_key=digest,
                partition_key=key,
                run_config={"ops": {"annotation_drops": {"config": {"folder": str(folder)}}}},
                tags={"xray/drop": folder.name, "xray/drop_digest": digest[:16]},
            )
        )
    if incomplete:
        notes.append(
            f"{len(incomplete)} drop(s) without READY yet: {', '.join(p.name for p in incomplete[:5])}"
        )
    cursor = json.dumps({"requested": requested[-CURSOR_KEEP:], "digests": seen_now})
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[DROP_PARTITIONS.build_add_request(new_keys)]
        if new_keys
        else [],
        skip_reason=None
        if requests
        else dg.SkipReason("; ".join(notes) or f"no complete drop in {xray.inbox}"),
    )


@dg.sensor(
    job=ingest_labels_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Compares the committed drops with the drops each label asset's latest run read (its "
    "`drops_read` metadata) and, while one is missing and no ingest_labels run is queued or running, "
    "requests ingest_labels (run_key: the missing drops). Every accepted drop reaches the label "
    "tables, whenever it lands. It never copies, writes or moves anything.",
)
def label_drops(context: dg.SensorEvaluationContext, xray: XrayResource) -> dg.SensorResult:
    import hashlib

    accepted = committed(xray.shared)
    behind = drops_behind(context.instance, accepted)
    if not behind:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"every committed drop ({len(accepted)}) is in the label tables"
            )
        )
    active = context.instance.get_runs(
        dg.RunsFilter(job_name=ingest_labels_job.name, statuses=ACTIVE), limit=1
    )
    missing = sorted({k for keys in behind.values() for k in keys})
    if active:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"{len(missing)} drop(s) not yet read; waiting for run {active[0].run_id[:8]}"
            )
        )
    digest = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"drops-{digest}",
                tags={"xray/drops_missing": str(len(missing))},
            )
        ]
    )


defs = dg.Definitions(assets=[annotation_drops], sensors=[new_annotations, label_drops])
