"""The annotation loop against a real daemon (`dagster dev` started as `make ui` starts it): drops
that land while the label assets run, just after, and two at once all reach the label tables with no
one launching anything; `make ui`'s session stopped with SIGTERM in the middle of a run and `dagster
dev` started again, and that work completes (Dagster's run retries, `dagster_home/dagster.yaml`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from browser import free_port, start
from conftest import ROOT, project_dagster_home

from xray_assets.core import layout

BIN = Path(sys.executable).parent


def _dagster_dev(env: dict, log: Path) -> subprocess.Popen:
    """`dagster dev` with the Makefile's `ui` arguments, in its own session."""
    port = free_port()
    cmd = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    return start(cmd, f"http://127.0.0.1:{port}/server_info", env, ROOT, log, 240)


def _stop(proc: subprocess.Popen, group: bool = False, timeout: float = 90) -> None:
    """SIGTERM to `dagster dev` (or to its whole session, `group`); whatever of the session is left
    after `timeout` is killed."""
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _drop(env: dict, name: str, size: int = 2) -> None:
    """The documented command: `xray-assets sample-drop <name>` (new patients per name)."""
    subprocess.run(
        [str(BIN / "xray-assets"), "sample-drop", name, "--size", str(size)],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def _wait(what: str, condition, timeout: float, proc=None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = condition()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"dagster dev exited while waiting for {what}: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _committed(storage: Path) -> dict[str, str]:
    """drop folder name -> partition key of every committed drop."""
    out = {}
    for commit in storage.glob("drops/*/drop.json"):
        record = json.loads(commit.read_text())
        out[record["name"]] = record["key"]
    return out


def _sources(storage: Path) -> tuple[set, set]:
    """The drop keys in nih/labels.parquet and nih/boxes.parquet (smoke profile)."""
    root = storage / "smoke"
    found = []
    for parts in (layout.NIH_LABELS, layout.NIH_BOXES):
        path = root.joinpath(*parts)
        try:
            found.append(set(pd.read_parquet(path)["source"]) if path.exists() else set())
        except Exception:  # written atomically; an old reader may race a rename on some FS
            found.append(set())
    return found[0], found[1]


def _ingest_runs(instance) -> list:
    return instance.get_runs(dg.RunsFilter(job_name="ingest_labels"))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_drop_reaches_the_labels_and_a_run_stopped_by_sigterm_completes(tmp_path, data_copy):
    home = project_dagster_home(tmp_path / "dagster_home")
    storage = tmp_path / "storage"
    env = {
        "DAGSTER_HOME": str(home),
        "XRAY_DATA_DIR": str(data_copy),
        "XRAY_STORAGE_DIR": str(storage),
        "XRAY_INBOX_DIR": str(tmp_path / "inbox"),
        "XRAY_PROFILE": "smoke",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
    }
    log = tmp_path / "dagster.log"
    os.environ["DAGSTER_HOME"] = str(home)
    # only the loop here: the automation sensor stopped (with Dagster's own CLI), or it would go on
    # to convert, train and evaluate the whole smoke study below the label tables
    subprocess.run(
        [str(BIN / "dagster"), "sensor", "stop", "retrain_downstream", "-w", "workspace.yaml"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    proc = _dagster_dev(env, log)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def in_tables(names):
                keys = _committed(storage)
                labels, boxes = _sources(storage)
                want = {keys.get(n) for n in names}
                return None not in want and want <= labels and want <= boxes

            # 1. a drop; while the label run it causes is running, a second lands
            _drop(env, "while-1")
            first = _wait(
                "an ingest_labels run started by the label_drops sensor",
                lambda: [r for r in _ingest_runs(instance) if r.status.value == "STARTED"],
                600,
                proc,
                log,
            )[0]
            _drop(env, "while-2")
            # 2. just after a label run ends, two land at the same moment
            _wait(
                "the first label run to end",
                lambda: instance.get_run_by_id(first.run_id).is_finished,
                600,
                proc,
                log,
            )
            _drop(env, "after-3")
            _drop(env, "after-4")
            names = ["while-1", "while-2", "after-3", "after-4"]
            _wait("every drop in nih labels and boxes", lambda: in_tables(names), 900, proc, log)
            _wait(
                "the label runs to end",
                lambda: all(r.is_finished for r in _ingest_runs(instance)),
                300,
                proc,
                log,
            )
            assert all(r.status.value == "SUCCESS" for r in _ingest_runs(instance))
            assert not (tmp_path / "inbox" / "rejected").exists(), "each sample drop is new"

            # 3. `make ui`'s processes stopped with SIGTERM while a run of the loop is in progress
            # (the signal reaches the whole session, run workers included, as a service manager or
            # `kill -TERM -- -PGID` sends it), then `dagster dev` started again. A run that wins the
            # race (it lasts about a second) proves nothing: another drop is landed, up to 4 times.
            killed = None
            for attempt in range(4):
                before = {r.run_id for r in instance.get_runs()}
                name = f"stopped-{attempt}"
                _drop(env, name)
                started = _wait(
                    f"a run for drop {name} to start",
                    lambda: [
                        r
                        for r in instance.get_runs(limit=5)
                        if r.run_id not in before and r.status.value == "STARTED"
                    ],
                    600,
                    proc,
                    log,
                )[0]
                _stop(proc, group=True)
                if instance.get_run_by_id(started.run_id).status.value != "SUCCESS":
                    killed = started
                proc = _dagster_dev(env, log)
                _wait(
                    f"drop {name} in the tables after the restart",
                    lambda: in_tables([name]),
                    900,
                    proc,
                    log,
                )
                if killed is not None:
                    break
            assert killed is not None, "four stops in a row came after their run had ended"
            group = instance.get_run_group(killed.run_id)
            runs = group[1] if group else []
            reasons = [(r.status.value, r.tags.get("dagster/failure_reason")) for r in runs]
            assert instance.get_run_by_id(killed.run_id).status.value == "FAILURE", reasons
            retried = [r for r in runs if r.parent_run_id == killed.run_id]
            assert retried and retried[0].status.value == "SUCCESS", (
                "the daemon's run retries re-executed the run that the stop failed",
                reasons,
            )
            assert retried[0].tags.get("dagster/retry_number") == "1", retried[0].tags
    finally:
        _stop(proc)
