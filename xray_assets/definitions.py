"""The code location: each `defs` module contributes its assets, checks, sensors and jobs; this file
merges them, adds the resource and the executor, and links every asset to its source."""

from __future__ import annotations

import os
import warnings

import dagster as dg

# code references, pools and a few automation conditions are beta/preview in Dagster 1.13
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

# the filters above must run before the asset modules define anything
from .defs import (  # noqa: E402
    annotation,
    automation,
    checks,
    datasets,
    drops,
    evaluation,
    gate,
    nih,
    serving,
    training,
    vinbigdata,
)
from .defs.resources import XrayResource  # noqa: E402

MODULES = (
    drops,
    nih,
    vinbigdata,
    datasets,
    training,
    evaluation,
    gate,
    serving,
    annotation,
    checks,
)


def executor_from_env() -> dg.ExecutorDefinition:
    """In process by default (one machine: no subprocess per step, no torch import per step);
    `XRAY_EXECUTOR=k8s` (set by deploy/helm/values.yaml): each step in its own Kubernetes Job."""
    if os.environ.get("XRAY_EXECUTOR", "").lower() != "k8s":
        return dg.in_process_executor
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(
        {"max_concurrent": int(os.environ.get("XRAY_K8S_MAX_CONCURRENT", "8"))}
    )


def build_definitions(
    xray: XrayResource | None = None,
    executor: dg.ExecutorDefinition | None = None,
    cron: str | None = None,
) -> dg.Definitions:
    merged = dg.Definitions.merge(*(m.defs for m in MODULES), automation.build_defs(cron))
    assets = dg.with_source_code_references(list(merged.assets or []))
    return dg.Definitions(
        assets=assets,
        asset_checks=merged.asset_checks,
        jobs=merged.jobs,
        sensors=merged.sensors,
        schedules=merged.schedules,
        executor=executor or executor_from_env(),
        resources={"xray": xray or XrayResource.from_env()},
    )


defs = build_definitions()
