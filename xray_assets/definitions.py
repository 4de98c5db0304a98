"""The code location: every asset, check and resource of the study."""

from __future__ import annotations

import dagster as dg

from .config import configure_ultralytics
from .defs import checks, datasets, evaluation, nih, training, vinbigdata
from .defs.resources import XrayResource

configure_ultralytics()

ASSETS = [
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
CHECKS = [datasets.no_patient_in_two_splits, datasets.no_missing_images, *checks.quarantine_checks]


def build_definitions(xray: XrayResource | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        resources={"xray": xray or XrayResource.from_settings()},
    )


defs = build_definitions()
