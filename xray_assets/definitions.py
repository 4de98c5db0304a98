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


def executor_from_env() -> dg.ExecutorDefinition | None:
    """`XRAY_EXECUTOR=k8s` (set by deploy/helm/values.yaml): each step in its own Kubernetes Job."""
    import os

    if os.environ.get("XRAY_EXECUTOR", "").lower() != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured({"max_concurrent": int(os.environ.get("XRAY_K8S_MAX_CONCURRENT", "8"))})


def build_definitions(xray: XrayResource | None = None, executor: dg.ExecutorDefinition | None = None
                      ) -> dg.Definitions:
    return dg.Definitions(
        executor=executor or executor_from_env(),
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[automation.ingest_labels_job, automation.train_models_job],
        sensors=[automation.new_annotations, automation.downstream_automation],
        schedules=[automation.retrain_schedule()],
        resources={"xray": xray or XrayResource.from_settings()},
    )


defs = build_definitions()
