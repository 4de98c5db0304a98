"""The one place this project reaches into Dagster's private modules, and why.

Tied to Dagster 1.13.27 (`DAGSTER_RELEASE`, the release pyproject.toml pins). Everything here has
no public equivalent in that release:

- the backfill daemon's and the run queue's iterations (`execute_backfill_jobs`,
  `QueuedRunCoordinatorDaemon`): `xray-assets materialize` drives them itself when no daemon runs
  (a fresh clone, `make demo`). The GraphQL `launchPartitionBackfill` mutation creates a backfill but
  still needs a daemon to execute it;
- run monitoring's iterations (`execute_run_monitoring_iteration`,
  `execute_concurrency_slots_iteration`) and the type of a launcher's worker-health answer
  (`worker_health`), so a run whose process died ends FAILURE without a daemon;
- loading the code location as the UI does (`WorkspaceProcessContext`, `ModuleTarget`), creating an
  asset backfill (`PartitionBackfill`, its selectors, `BulkActionStatus`, `make_new_backfill_id`) and
  re-executing a run from its failure (`JobSubsetSelector`, `ReexecutionStrategy`).

What has a public name is used through it elsewhere (`dg.RunsFilter`, `dg.DagsterEventType`, the
system tag strings below, `time.time`). `tests/test_dagster_contract.py` checks every name and the
signatures used here against the installed Dagster and fails on another release, so an upgrade
starts by re-reading this file.
"""

from __future__ import annotations

from dagster._core.definitions.selector import (
    JobSubsetSelector,
    PartitionRangeSelector,
    PartitionsByAssetSelector,
    PartitionsSelector,
)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_jobs
from dagster._daemon.monitoring import (
    execute_concurrency_slots_iteration,
    execute_run_monitoring_iteration,
)
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

#: the Dagster release this adapter was written against
DAGSTER_RELEASE = "1.13.27"

__all__ = [
    "DAGSTER_RELEASE",
    "BulkActionStatus",
    "JobSubsetSelector",
    "ModuleTarget",
    "PartitionBackfill",
    "PartitionRangeSelector",
    "PartitionsByAssetSelector",
    "PartitionsSelector",
    "QueuedRunCoordinatorDaemon",
    "ReexecutionStrategy",
    "WorkspaceProcessContext",
    "execute_backfill_jobs",
    "execute_concurrency_slots_iteration",
    "execute_run_monitoring_iteration",
    "make_new_backfill_id",
    "worker_health",
]


def worker_health(alive: bool, message: str, worker_id: str | None = None) -> CheckRunHealthResult:
    """Run monitoring's answer for a run worker: RUNNING when `alive`, else FAILED (marks the run
    failed)."""
    return CheckRunHealthResult(
        WorkerStatus.RUNNING if alive else WorkerStatus.FAILED, message, run_worker_id=worker_id
    )
