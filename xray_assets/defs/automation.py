"""Keeping the study alive: the automation conditions each asset declares, Dagster's automation
sensor that evaluates them, the weekly re-ingest schedule, and the helpers that version the code.

Every asset returns a content-derived data version, so "changed" means changed content:
- the label assets re-read their files when their reader's code changed (`on_reader_change`); a newly
  accepted annotation drop reaches them through the `label_drops` sensor (`defs/drops.py`), which
  requests `ingest_labels` until every committed drop is in the label tables;
- everything below re-materialises only when the data version of a dependency that feeds it changed,
  or its own code version changed (`on_new_data`); re-ingesting unchanged labels changes no data
  version and launches nothing;
- nothing runs while a dependency is missing or in progress, or while a blocking check on a
  dependency is failing (a leak in `patient_splits` stops datasets and training for every task);
- `study_report` runs on the tasks that exist: a task partition that was never materialised does not
  hold it back (the report lists the missing ones).
"""

import hashlib

import dagster as dg

from ..codeversion import code_version as _code_version
from ..config import current

#: The three label readers: a new drop (or the weekly schedule) re-materialises these.
LABEL_ASSETS = ["nih_labels", "nih_boxes", "vinbigdata_annotations"]


def _changed_deps(only: list[str] | None = None) -> dg.AutomationCondition:
    """True while a dependency (of `only`, if given) has a new data version since the last tick,
    unless the run that produced it also ran this asset."""
    cond = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed()
        & ~dg.AutomationCondition.executed_with_root_target()
    )
    if only:
        cond = cond.allow(dg.AssetSelection.assets(*only))
    return cond.with_label("dependency data changed" + (f" ({', '.join(only)})" if only else ""))


def on_new_data(
    only: list[str] | None = None, allow_missing: bool = False
) -> dg.AutomationCondition:
    """Re-materialise when the content of a dependency (of `only`) or this asset's code changed."""
    cond = (
        (_changed_deps(only) | dg.AutomationCondition.code_version_changed()).since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    )
    if not allow_missing:
        cond = cond & ~dg.AutomationCondition.any_deps_missing()
    return cond.with_label("on new data" + (" (missing inputs allowed)" if allow_missing else ""))


def on_reader_change() -> dg.AutomationCondition:
    """The label readers re-read their files when their own code changed. A newly accepted drop is
    not this condition's: `any_deps_updated().since_last_handled()` misses a drop committed between
    the same two ticks as the label run's end (both are "new" at once and the reset wins), so the
    `label_drops` sensor requests `ingest_labels` until every committed drop is in the tables."""
    return (
        dg.AutomationCondition.code_version_changed().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("on a change of the reader's code (new drops: the label_drops sensor)")


def code_version(*objects, libraries: tuple[str, ...] = (), settings: tuple = ()) -> str:
    """A step's code version: the parsed code of what it runs (followed through the project, without
    comments or docstrings), the data it reads (class maps), the named libraries' versions and the
    settings given (see `xray_assets.codeversion`)."""
    return _code_version(*objects, libraries=libraries, settings=settings)


def content_version(*parts) -> dg.DataVersion:
    """A data version from content: tables (hashed row by row), strings or bytes."""
    import pandas as pd

    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, pd.DataFrame):
            h.update(pd.util.hash_pandas_object(p.astype(str), index=False).values.tobytes())
            h.update(",".join(map(str, p.columns)).encode())
        else:
            h.update(p if isinstance(p, bytes) else str(p).encode())
    return dg.DataVersion(h.hexdigest()[:16])


ingest_labels_job = dg.define_asset_job(
    "ingest_labels",
    selection=dg.AssetSelection.assets(*LABEL_ASSETS),
    description="Re-read the raw label files and every accepted drop; what changed flows downstream.",
)

train_models_job = dg.define_asset_job(
    "train_models",
    selection=dg.AssetSelection.assets(
        "yolo_datasets", "trained_models", "nms_thresholds", "evaluation_reports", "champion_gate"
    ),
    partitions_def=dg.StaticPartitionsDefinition(
        [
            "nih_multi",
            "nih_binary",
            "united_multi",
            "united_binary",
            "united_cardiomegaly",
            "united_mass_nodule",
        ]
    ),
    description="One task end to end from its dataset: train, tune, evaluate, gate (a partition per task).",
)

#: Dagster's own automation sensor, running by default: it evaluates each asset's condition.
downstream_automation = dg.AutomationConditionSensorDefinition(
    "retrain_downstream",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates each asset's automation condition: what changed below a new drop re-materialises, "
    "layer by layer, never past a failing blocking check.",
)


def retrain_schedule(cron: str | None = None) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retrain",
        job=ingest_labels_job,
        cron_schedule=cron or current().retrain_cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-ingest the labels on a cron (XRAY_RETRAIN_CRON, weekly by default): whatever changed in "
        "the raw files since retrains downstream; unchanged files retrain nothing. Stopped until "
        "someone starts it.",
    )


def build_defs(cron: str | None = None) -> dg.Definitions:
    return dg.Definitions(
        jobs=[ingest_labels_job, train_models_job],
        sensors=[downstream_automation],
        schedules=[retrain_schedule(cron)],
    )
