"""The code location: every asset, check and resource of the study."""

from __future__ import annotations

import dagster as dg

from .config import configure_ultralytics
from .defs import automation, checks, datasets, evaluation, nih, training, vinbigdata
from .defs.resources import XrayResource

configure_ultralytics()

_ASSETS = [
    nih.nih_labels,
    nih.nih_boxes,
    vinbigdata.vinbigdata_annotations,
    vinbigdata.vinbigdata_images,
    vinbigdata.vinbigdata_boxes,
    datasets.background_samples,
    datasets.patient_splits,
    datasets.yolo_datasets,
    training.trained_models,
    evaluation.nms_thresholds,
    evaluation.evaluation_reports,
    evaluation.study_report,
]
ASSETS = [a if a.key.to_user_string() in automation.LABEL_ASSETS
          else a.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=automation.ON_UPSTREAM_CHANGE))
          for a in _ASSETS]
CHECKS = [datasets.no_patient_in_two_splits, datasets.no_missing_images, *checks.quarantine_checks]


def build_definitions(xray: XrayResource | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[automation.ingest_labels_job],
        sensors=[automation.new_annotations, automation.downstream_automation],
        schedules=[automation.retrain_schedule()],
        resources={"xray": xray or XrayResource.from_settings()},
    )


defs = build_definitions()
