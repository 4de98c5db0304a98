"""The contract with Dagster's private modules (`xray_assets/dagster_adapter.py`): every name the
adapter re-exports exists with the signature this project calls it with, the system tags are the
strings Dagster writes, and the installed release is the one the adapter was written against. A
Dagster upgrade fails here first, pointing at the one file to re-read."""

import inspect

import dagster

from xray_assets import backfill, dagster_adapter


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_adapter_was_written_against_the_installed_dagster():
    assert dagster.__version__ == dagster_adapter.DAGSTER_RELEASE, (
        f"Dagster {dagster.__version__} is installed, the adapter was written against "
        f"{dagster_adapter.DAGSTER_RELEASE}: re-read xray_assets/dagster_adapter.py and its callers"
    )
    for name in dagster_adapter.__all__:
        assert hasattr(dagster_adapter, name), name


def test_the_calls_match_the_private_signatures():
    a = dagster_adapter
    assert _params(a.execute_backfill_jobs)[:2] == ["workspace_process_context", "logger"]
    assert "interval_seconds" in _params(a.QueuedRunCoordinatorDaemon.__init__)
    assert hasattr(a.QueuedRunCoordinatorDaemon, "run_iteration")
    assert _params(a.execute_run_monitoring_iteration)[:2] == [
        "workspace_process_context",
        "logger",
    ]
    assert _params(a.execute_concurrency_slots_iteration)[:2] == [
        "workspace_process_context",
        "logger",
    ]
    assert "code_server_log_level" in _params(a.WorkspaceProcessContext.__init__)
    # records: the fields this project fills by name
    assert {"module_name", "attribute", "working_directory", "location_name"} <= set(
        a.ModuleTarget._fields
    )
    assert {
        "location_name",
        "repository_name",
        "job_name",
        "asset_selection",
        "asset_check_selection",
        "op_selection",
    } <= set(a.JobSubsetSelector._fields)
    assert {
        "backfill_id",
        "status",
        "from_failure",
        "tags",
        "backfill_timestamp",
        "title",
        "description",
        "run_config",
        "asset_backfill_data",
    } <= set(a.PartitionBackfill._fields)
    assert {
        "backfill_id",
        "asset_graph",
        "backfill_timestamp",
        "tags",
        "dynamic_partitions_store",
        "partitions_by_assets",
        "title",
        "description",
        "run_config",
    } <= set(_params(a.PartitionBackfill.from_partitions_by_assets))
    assert a.ReexecutionStrategy.FROM_FAILURE and a.BulkActionStatus.REQUESTED
    assert isinstance(a.make_new_backfill_id(), str)
    health = a.worker_health(False, "gone", "w1")
    assert health.status.value == "FAILED" and health.msg == "gone" and health.run_worker_id == "w1"


def test_the_system_tags_are_the_strings_dagster_writes():
    from dagster._core.storage.tags import (
        BACKFILL_ID_TAG,
        PARTITION_NAME_TAG,
    )  # private: what we compare with

    assert (backfill.BACKFILL_TAG, backfill.PARTITION_TAG) == (BACKFILL_ID_TAG, PARTITION_NAME_TAG)
