"""Dagster's local run launcher, able to tell run monitoring whether a run's worker is alive.

`dg.DefaultRunLauncher` starts each run in a process of the code server but cannot say whether that
process still lives, so Dagster's run monitoring can only time such a run out
(`max_runtime_seconds`): a run whose worker was OOM-killed, or that was running when `make ui` was
closed, would stay STARTED for good and hold its `gpu` pool slot. The run worker writes its pid
into the run's event log ("Started process for run (pid: N)"); this launcher reads it back and
answers the monitoring daemon's health check: RUNNING while that process lives, FAILED once it is
gone (or its pid belongs to a younger process). Monitoring then marks the run FAILURE, the
concurrency iteration frees its slots, and the run can be re-executed (`xray-assets reexecute` or
the UI's button). Configured in `dagster_home/dagster.yaml`; a team's Kubernetes launcher answers
the same check itself.
"""

from __future__ import annotations

import dagster as dg

PID_MESSAGE = "Started process for run (pid:"


class LocalRunLauncher(dg.DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def worker(self, run) -> tuple[int, float] | None:
        """(pid, when it was recorded) of the run's worker, from its latest engine event that names one."""
        records = self._instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, ascending=False
        ).records
        for rec in records:
            entry = rec.event_log_entry
            event = entry.dagster_event
            if event is None or not (event.message or "").startswith(PID_MESSAGE):
                continue
            pid = (getattr(event.event_specific_data, "metadata", None) or {}).get("pid")
            if pid is not None:
                return int(pid.value), entry.timestamp
        return None

    def check_run_worker_health(self, run):
        import psutil

        from .dagster_adapter import worker_health

        found = self.worker(run)
        if found is None:  # no worker recorded (yet): nothing to judge
            return worker_health(True, "no run worker pid recorded")
        pid, since = found
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since + 2
        except psutil.Error:
            alive = False
        if alive:
            return worker_health(True, f"run worker pid {pid} is alive", str(pid))
        return worker_health(
            False,
            f"run worker pid {pid} is gone (killed, out of memory, or its Dagster process "
            "was closed)",
            str(pid),
        )
