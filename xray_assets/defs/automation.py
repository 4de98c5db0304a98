"""Keeping the study alive: the annotation inbox sensor, the retraining schedule, and the
automation condition that carries a change from the label files down to the evaluation reports."""

import json

import dagster as dg

from ..config import Settings
from ..core import inbox
from .resources import TASK_PARTITIONS, XrayResource

#: The three label readers: a merged drop or a scheduled retrain re-materialises these in one run;
#: everything below them follows through ON_UPSTREAM_CHANGE (Dagster's automation sensor).
LABEL_ASSETS = ["nih_labels", "nih_boxes", "vinbigdata_annotations"]
#: Everything downstream of the labels re-materialises when its inputs change.
ON_UPSTREAM_CHANGE = dg.AutomationCondition.eager()

ingest_labels_job = dg.define_asset_job(
    "ingest_labels", selection=dg.AssetSelection.assets(*LABEL_ASSETS),
    description="Re-read the raw label files; the automation sensor re-materialises everything downstream.")

train_models_job = dg.define_asset_job(
    "train_models", selection=dg.AssetSelection.assets("yolo_datasets", "trained_models", "nms_thresholds",
                                                       "evaluation_reports"),
    partitions_def=TASK_PARTITIONS,
    description="One task end to end from its dataset: train, tune, evaluate, gate (a partition per task).")

CURSOR_KEEP = 500

#: Dagster's own automation sensor, running by default: it evaluates ON_UPSTREAM_CHANGE each tick.
downstream_automation = dg.AutomationConditionSensorDefinition(
    "retrain_downstream", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-materialises what became stale below the labels: conversions, splits, datasets, "
                "models, thresholds, reports (one layer per tick).")


@dg.sensor(job=ingest_labels_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Merges complete annotation drops (a folder with READY) from the inbox into the raw "
                       "data and re-ingests the labels; malformed drops go to rejected/ with ERROR.txt.")
def new_annotations(context: dg.SensorEvaluationContext, xray: XrayResource) -> dg.SensorResult | dg.SkipReason:
    box = xray.inbox
    seen: list[str] = json.loads(context.cursor)["merged"] if context.cursor else []
    complete, incomplete = inbox.pending(box)
    requests, notes = [], []
    ledger = inbox.read_ledger(box)
    for folder in complete:
        digest = inbox.drop_digest(folder)
        if digest in ledger or digest in seen:
            first = ledger.get(digest, {}).get("drop", "an earlier drop")
            target = inbox.set_aside(folder, box)
            context.log.info(f"drop {folder.name} is a copy of {first}, already merged; set aside at {target}")
            notes.append(f"{folder.name}: already merged (as {first}), no new run")
            continue
        try:
            drop = inbox.validate(folder, xray.data(), digest=digest)
        except Exception as exc:   # DropError, or a file no reader can take: rejected, never lost
            exc = exc if isinstance(exc, inbox.DropError) else inbox.DropError(
                f"unreadable drop ({exc.__class__.__name__}: {exc})")
            target = inbox.reject(folder, box, str(exc))
            context.log.warning(f"rejected drop {folder.name}: {exc} (moved to {target})")
            notes.append(f"rejected {folder.name}: {str(exc).splitlines()[0]}")
            continue
        inbox.merge(drop, xray.data(), box)
        seen.append(digest)
        context.log.info(f"merged drop {folder.name}: {drop.summary}")
        requests.append(dg.RunRequest(run_key=drop.run_key, tags={"xray/drop": folder.name,
                                                                  "xray/drop_digest": digest[:16]}))
    if incomplete:
        notes.append(f"{len(incomplete)} drop(s) without READY yet: {', '.join(p.name for p in incomplete[:5])}")
    cursor = json.dumps({"merged": seen[-CURSOR_KEEP:]})
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(notes) or f"no complete drop in {box}"),
                               cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def retrain_schedule(cron: str | None = None) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retrain", job=ingest_labels_job, cron_schedule=cron or Settings.from_env().retrain_cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-ingest the labels on a cron (XRAY_RETRAIN_CRON, weekly by default); the models "
                    "downstream retrain, are evaluated and gated. Stopped until someone starts it.")
