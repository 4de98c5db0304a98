"""`xray-assets materialize`: one asset backfill through the Dagster instance, as the UI's
"Materialize all" makes it.

The backfill is created in the instance of DAGSTER_HOME (it shows on the UI's Backfills page, every
run carries its id, a code origin and the profile). Its runs are submitted by the backfill daemon's
own code and go through the instance's run coordinator and launcher, so pools, run limits and the
executor (`XRAY_EXECUTOR=k8s`) apply, and a failed run can be re-executed from the UI.

When a Dagster daemon is alive (`make ui`), it executes the backfill and this only follows it. When
none is (a fresh clone, `make demo`), this process drives the two daemon iterations a backfill needs,
the backfill daemon's and the run queue's, and no others (no sensor ticks): it submits a stage as
soon as the one before finishes, with no idle wait, and stops when the backfill is done. The choice
is made again at every poll: when the daemon stops (`make ui` closed; its last heartbeat older than
DAEMON_FRESH_SECONDS) this process takes over, and when one starts this process hands over to it.
An iteration's error is printed, not dropped; MAX_ITERATION_ERRORS in a row end the command.
Either way it prints each run's progress and log lines, and the outcome.

Dagster exposes no public call for these daemon iterations: they come from `dagster_adapter`, the
one module that imports Dagster's private modules (and says why).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .graph_order import study_assets

LOCATION = "xray_assets.definitions"  # the code location name in workspace.yaml (the UI's)
#: Dagster's system tags (public strings; `tests/test_dagster_contract.py` checks them)
BACKFILL_TAG = "dagster/backfill"
PARTITION_TAG = "dagster/partition"
DAEMON_FRESH_SECONDS = 60  # a daemon heartbeats every 30 s (Dagster's default)
MAX_ITERATION_ERRORS = 10  # daemon iterations that failed in a row before `materialize` gives up


@dataclass
class Outcome:
    backfill_id: str
    status: str
    runs: list = field(default_factory=list)  # DagsterRun objects, in launch order
    seconds: float = 0.0

    @property
    def failed_runs(self) -> list:
        return [r for r in self.runs if r.status.value in ("FAILURE", "CANCELED")]

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED_SUCCESS" and not self.failed_runs


#: the clock heartbeats are judged by (a test sets its own, so nothing races the code location's load)
clock = time.time


def daemon_alive(instance) -> bool:
    beats = instance.get_daemon_heartbeats()
    beat = beats.get("BACKFILL")
    return beat is not None and clock() - beat.timestamp < DAEMON_FRESH_SECONDS


class _Driver:
    """The daemon's part, done in this process while no Dagster daemon is alive: the backfill daemon's
    iteration and the run queue's. Looks at the daemon's heartbeat at every step and takes over or
    hands over as it stops or starts; prints an iteration's errors (once per message)."""

    def __init__(self, instance, ctx, say, drive: bool = True):
        self.instance, self.ctx, self.say = instance, ctx, say
        self.queue = None
        self.errors_in_a_row = 0
        self.seen: set[str] = set()
        self.driving = drive and not daemon_alive(instance)
        self.last_monitoring = 0.0
        if self.driving:
            self._open_queue()

    def _open_queue(self) -> None:
        from .dagster_adapter import QueuedRunCoordinatorDaemon

        self.queue = QueuedRunCoordinatorDaemon(interval_seconds=1)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.__exit__(None, None, None)
            self.queue = None

    def step(self, backfill=None) -> None:
        """One poll: hand over if the daemon started or stopped; when driving, the backfill daemon's
        iteration over `backfill` (None: not this time) and the run queue's."""
        from .dagster_adapter import execute_backfill_jobs

        alive = daemon_alive(self.instance)
        if self.driving and alive:
            self.say("a Dagster daemon is running now: it executes the rest, this process follows")
            self.driving = False
            self.close()
        elif not self.driving and not alive:
            self.say(
                f"the Dagster daemon stopped (no heartbeat for {DAEMON_FRESH_SECONDS}s): "
                "this process executes the rest"
            )
            self.driving = True
            self._open_queue()
        if not self.driving:
            return
        errors = list(
            execute_backfill_jobs(self.ctx, logging.getLogger("xray_assets.backfill"), [backfill])
            if backfill is not None
            else []
        )
        errors += list(self.queue.run_iteration(self.ctx))
        errors += self.monitor()
        errors = [e for e in errors if e is not None]
        self.errors_in_a_row = self.errors_in_a_row + 1 if errors else 0
        for e in errors:
            first = (e.message or e.to_string()).strip().splitlines()[0]
            if first not in self.seen:
                self.seen.add(first)
                self.say(f"    daemon iteration error: {first}")
        if self.errors_in_a_row >= MAX_ITERATION_ERRORS:
            raise RuntimeError(
                f"the daemon iterations failed {self.errors_in_a_row} times in a row; last: "
                f"{errors[-1].to_string().strip()}"
            )

    def monitor(self, force: bool = False) -> list:
        """The monitoring daemon's iteration, at its poll interval (dagster.yaml `run_monitoring`): a
        run whose worker died is marked FAILURE, and the pool slots of finished runs are freed."""
        import dagster as dg

        from .dagster_adapter import (
            execute_concurrency_slots_iteration,
            execute_run_monitoring_iteration,
        )

        if not self.instance.run_monitoring_enabled:
            return []
        now = time.time()
        if (
            not force
            and now - self.last_monitoring < self.instance.run_monitoring_poll_interval_seconds
        ):
            return []
        self.last_monitoring = now
        log = logging.getLogger("xray_assets.monitoring")
        started = [
            r.run_id
            for r in self.instance.get_runs(
                filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
            )
        ]
        errors = list(execute_run_monitoring_iteration(self.ctx, log))
        errors += list(execute_concurrency_slots_iteration(self.ctx, log))
        for run_id in started:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.status == dg.DagsterRunStatus.FAILURE:
                self.say(
                    f"run {run_id} ended FAILURE: its worker is gone (xray-assets reexecute {run_id} runs it again)"
                )
        return errors


def workspace(instance, working_directory: str | None = None):
    """The code location as the UI loads it (workspace.yaml's module, same location name)."""
    from .dagster_adapter import ModuleTarget, WorkspaceProcessContext

    target = ModuleTarget(
        module_name="xray_assets.definitions",
        attribute=None,
        working_directory=working_directory or os.getcwd(),
        location_name=LOCATION,
    )
    return WorkspaceProcessContext(instance, target, code_server_log_level="WARNING")


def _label(run) -> str:
    keys = sorted(k.to_user_string() for k in (run.asset_selection or []))
    part = run.tags.get(PARTITION_TAG)
    return (f"[{part}] " if part else "") + ", ".join(keys)


def _runs(instance, backfill_id: str) -> list:
    import dagster as dg

    return sorted(
        instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})),
        key=lambda r: r.run_id,
    )


class _Follower:
    """Prints each run of the backfill as it starts and ends, and its log lines as they arrive."""

    def __init__(self, instance, out=sys.stdout, log_level: int = logging.INFO):
        self.instance, self.out, self.level = instance, out, log_level
        self.status: dict[str, str] = {}
        self.cursors: dict[str, str | None] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def poll(self, runs) -> None:
        import dagster as dg

        for run in runs:
            rid, status = run.run_id, run.status.value
            if self.status.get(rid) != status:
                if status == "STARTED":
                    self.say(f"==> {_label(run)}: started (run {rid[:8]})")
                elif status in ("SUCCESS", "FAILURE", "CANCELED"):
                    record = self.instance.get_run_record_by_id(rid)
                    took = (
                        (record.end_time or time.time())
                        - (record.start_time or record.end_time or time.time())
                        if record
                        else 0.0
                    )
                    word = {"SUCCESS": "ok", "FAILURE": "FAILED", "CANCELED": "canceled"}[status]
                    self.say(f"    {_label(run)}: {word} in {took:.0f}s (run {rid[:8]})")
                self.status[rid] = status
            if status in ("STARTED", "SUCCESS", "FAILURE", "CANCELED"):
                conn = self.instance.get_records_for_run(
                    rid, cursor=self.cursors.get(rid), limit=500
                )
                self.cursors[rid] = conn.cursor
                for rec in conn.records:
                    e = rec.event_log_entry
                    if e.dagster_event is None and e.level >= self.level and e.user_message:
                        self.say(f"    {e.step_key or ''}: {e.user_message}".rstrip())
                    elif (
                        e.dagster_event is not None
                        and e.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE
                    ):
                        err = e.dagster_event.event_specific_data.error
                        self.say(
                            f"    {e.step_key}: FAILED: {err.message.strip().splitlines()[0] if err else ''}"
                        )


@dataclass
class MaterializeRequest:
    """What `materialize` makes one backfill of: `select` (default: the study, in the graph's
    order) over every partition (task partitions: `tasks` if given; any other partitioned asset:
    `partitions` if given), with the profile, and `run_config` merged into every run's config (as
    the launchpad's would be: `ops: {trained_models: {config: {epochs: 5}}}`)."""

    select: list[str] | None = None
    tasks: list[str] | None = None
    profile: str | None = None
    run_config: dict | None = None
    partitions: list[str] | None = None


def materialize(
    request: MaterializeRequest,
    instance=None,
    working_directory: str | None = None,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
    out=sys.stdout,
) -> Outcome:
    """Create one backfill for the request and see it through; returns the outcome (raises nothing
    for failed runs)."""
    import dagster as dg

    from .config import get_profile

    profile = get_profile(request.profile).name
    instance = instance or dg.DagsterInstance.get()
    follower = _Follower(instance, out)
    t0 = time.time()
    with workspace(instance, working_directory) as ctx:
        graph_request = ctx.create_request_context()
        errors = graph_request.code_location_errors()
        if errors:
            raise RuntimeError(f"the code location does not load: {errors[0].message}")
        graph = graph_request.asset_graph
        # by default the study, in the graph's own order (accepted drops are the sensor's business)
        keys = list(request.select) if request.select else study_assets(graph)
        unknown = [k for k in keys if not graph.has(dg.AssetKey(k))]
        if unknown:
            everything = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
            raise ValueError(f"unknown asset(s) {unknown}; the graph has {everything}")
        backfill = _new_backfill(instance, graph, keys, request, profile)
        instance.add_backfill(backfill)
        driver = _Driver(instance, ctx, follower.say)
        follower.say(
            f"backfill {backfill.backfill_id} ({profile} profile): {', '.join(keys)}"
            + ("" if driver.driving else " - executed by the running Dagster daemon")
        )
        try:
            _see_through(instance, driver, follower, backfill.backfill_id, poll_seconds, timeout)
        finally:
            driver.close()
        runs = _runs(instance, backfill.backfill_id)
        follower.poll(runs)
        final = instance.get_backfill(backfill.backfill_id)
    return Outcome(
        backfill_id=backfill.backfill_id,
        status=final.status.value,
        runs=runs,
        seconds=time.time() - t0,
    )


def _new_backfill(instance, graph, keys: list[str], request: MaterializeRequest, profile: str):
    """The asset backfill of `keys` as the UI's "Materialize all" makes one, tagged with the
    profile; a dynamic partition (an annotation batch) is looked up in the instance."""
    import dagster as dg

    from .dagster_adapter import (
        PartitionBackfill,
        PartitionRangeSelector,
        PartitionsByAssetSelector,
        PartitionsSelector,
        make_new_backfill_id,
    )
    from .defs.resources import PROFILE_TAG, TASK_PARTITIONS

    task_keys = set(TASK_PARTITIONS.get_partition_keys())
    selectors = []
    for k in keys:
        pdef = graph.get(dg.AssetKey(k)).partitions_def
        chosen = None
        if pdef is not None and request.tasks and set(pdef.get_partition_keys()) == task_keys:
            chosen = request.tasks
        elif pdef is not None and request.partitions:
            chosen = request.partitions
        parts = (
            PartitionsSelector(ranges=[PartitionRangeSelector(start=p, end=p) for p in chosen])
            if chosen
            else None
        )
        selectors.append(PartitionsByAssetSelector(asset_key=dg.AssetKey(k), partitions=parts))
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return PartitionBackfill.from_partitions_by_assets(
            backfill_id=make_new_backfill_id(),
            asset_graph=graph,
            backfill_timestamp=time.time(),
            tags={PROFILE_TAG: profile, "xray/launched_by": "xray-assets materialize"},
            dynamic_partitions_store=instance,
            partitions_by_assets=selectors,
            title=f"xray-assets materialize ({profile})",
            description=f"{len(keys)} asset(s), every partition"
            + (f" of tasks {', '.join(request.tasks)}" if request.tasks else ""),
            # the profile for every run; the runs' own console stays quiet (this process prints
            # their log lines from the event log, which the UI shows in full)
            run_config=merge_config(
                {
                    "resources": {"xray": {"config": {"profile": profile}}},
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                },
                request.run_config or {},
            ),
        )


def _see_through(instance, driver, follower, backfill_id: str, poll_seconds: float, timeout):
    """Poll the backfill until it has ended and none of its runs is active; each poll prints the
    runs' news and, once the previous stage is done, lets the backfill iteration submit the next."""
    from .dagster_adapter import BulkActionStatus

    active_states = (
        BulkActionStatus.REQUESTED,
        BulkActionStatus.CANCELING,
        BulkActionStatus.FAILING,
    )
    t0 = time.time()
    while True:
        current = instance.get_backfill(backfill_id)
        runs = _runs(instance, backfill_id)
        follower.poll(runs)
        active = [r for r in runs if not r.is_finished]
        if current.status not in active_states and not active:
            return
        if timeout and time.time() - t0 > timeout:
            raise TimeoutError(f"backfill {backfill_id} not done after {timeout:.0f}s")
        driver.step(current if not active else None)
        time.sleep(poll_seconds)


def merge_config(base: dict, extra: dict) -> dict:
    """`extra` over `base`, dictionaries merged key by key (a copy; neither is changed)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def summary_lines(outcome: Outcome) -> list[str]:
    lines = [
        f"backfill {outcome.backfill_id}: {outcome.status}, {len(outcome.runs)} run(s) in {outcome.seconds:.0f}s"
    ]
    for r in outcome.failed_runs:
        lines.append(
            f"  FAILED run {r.run_id} ({_label(r)}): re-execute it from the UI (Runs -> Re-execute from failure)"
        )
    return lines


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or ./dagster_home (created, with the project's dagster.yaml when one is there)."""
    if not os.environ.get("DAGSTER_HOME"):
        home = Path("dagster_home").resolve()
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    return Path(os.environ["DAGSTER_HOME"])


def reexecute(
    run_id: str,
    instance=None,
    working_directory: str | None = None,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
    out=sys.stdout,
):
    """Re-execute a failed run from its failure, as the UI's button does (a new run through the
    instance's coordinator and launcher, parent run recorded); waits for it and returns it."""
    import dagster as dg

    from .dagster_adapter import JobSubsetSelector, ReexecutionStrategy

    instance = instance or dg.DagsterInstance.get()
    parent = instance.get_run_by_id(run_id)
    if parent is None:
        raise ValueError(f"no run {run_id} in {instance.root_directory}")
    origin = parent.remote_job_origin
    if origin is None:
        raise ValueError(f"run {run_id} has no code origin: it cannot be re-executed")
    follower = _Follower(instance, out)
    t0 = time.time()
    with workspace(instance, working_directory) as ctx:
        if not parent.is_finished:
            # a run left STARTED by a worker that died with its Dagster process (`make ui` closed, a
            # reboot): run monitoring's check settles it first; a live run is not re-executed
            _Driver(instance, ctx, follower.say, drive=False).monitor(force=True)
            parent = instance.get_run_by_id(run_id)
            if not parent.is_finished:
                raise ValueError(
                    f"run {run_id} is {parent.status.value} and its worker is alive: wait for it or "
                    "terminate it before re-executing"
                )
        request = ctx.create_request_context()
        selector = JobSubsetSelector(
            location_name=origin.repository_origin.code_location_origin.location_name,
            repository_name=origin.repository_origin.repository_name,
            job_name=parent.job_name,
            asset_selection=parent.asset_selection,
            asset_check_selection=parent.asset_check_selection,
            op_selection=None,
        )
        location = request.get_code_location(selector.location_name)
        run = instance.create_reexecuted_run(
            parent_run=parent,
            request_context=request,
            code_location=location,
            remote_job=location.get_job(selector),
            strategy=ReexecutionStrategy.FROM_FAILURE,
            use_parent_run_tags=True,
        )
        instance.submit_run(run.run_id, workspace=request)
        driver = _Driver(instance, ctx, follower.say)
        try:
            while not (run := instance.get_run_by_id(run.run_id)).is_finished:
                if timeout and time.time() - t0 > timeout:
                    raise TimeoutError(f"re-execution {run.run_id} not done after {timeout:.0f}s")
                driver.step()
                follower.poll([run])
                time.sleep(poll_seconds)
        finally:
            driver.close()
        follower.poll([run])
    return run
