"""The graph: its catalog (keys, groups, partitions, owners, kinds, code versions, conditions, schemas,
declared reads), and `xray-assets materialize` as one backfill through the instance."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
from conftest import ROOT, project_dagster_home

DESIGN_ASSETS = {
    "annotation_drops": ("datasets", "drops"),
    "nih_labels": ("nih", None),
    "nih_boxes": ("nih", None),
    "vinbigdata_annotations": ("vinbigdata", None),
    "vinbigdata_images": ("vinbigdata", "shards"),
    "vinbigdata_boxes": ("vinbigdata", None),
    "background_samples": ("datasets", None),
    "patient_splits": ("datasets", None),
    "yolo_datasets": ("datasets", "tasks"),
    "trained_models": ("models", "tasks"),
    "nms_thresholds": ("models", "tasks"),
    "evaluation_reports": ("reports", "tasks"),
    "champion_gate": ("reports", "tasks"),
    "served_int8": ("reports", "tasks"),
    "annotation_queue": ("datasets", "tasks"),
    "annotation_batches": ("datasets", "batches"),
    "study_report": ("reports", None),
}
TASKS = [
    "nih_multi",
    "nih_binary",
    "united_multi",
    "united_binary",
    "united_cardiomegaly",
    "united_mass_nodule",
]
TABLE_ASSETS = [
    "nih_labels",
    "nih_boxes",
    "vinbigdata_annotations",
    "vinbigdata_images",
    "vinbigdata_boxes",
    "background_samples",
    "patient_splits",
    "yolo_datasets",
    "evaluation_reports",
]
#: every file an asset reads is a declared dependency
READS = {
    "patient_splits": {
        "nih_labels",
        "nih_boxes",
        "vinbigdata_images",
        "vinbigdata_boxes",
        "background_samples",
    },
    "yolo_datasets": {"patient_splits", "nih_labels", "nih_boxes", "vinbigdata_boxes"},
    "nms_thresholds": {"trained_models", "yolo_datasets"},
    "evaluation_reports": {"nms_thresholds", "trained_models", "yolo_datasets", "nih_labels"},
    "champion_gate": {"evaluation_reports"},
    "served_int8": {"champion_gate", "trained_models", "nms_thresholds", "yolo_datasets"},
    "annotation_queue": {
        "champion_gate",
        "trained_models",
        "nms_thresholds",
        "nih_labels",
        "nih_boxes",
    },
    "study_report": {
        "evaluation_reports",
        "champion_gate",
        "patient_splits",
        "yolo_datasets",
        "vinbigdata_annotations",
        "vinbigdata_boxes",
    },
}


def test_catalog_specs_a_team_can_read():
    from xray_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(DESIGN_ASSETS)
    specs = {s.key.to_user_string(): s for a in defs.assets for s in a.specs}
    for key, (group, parts) in DESIGN_ASSETS.items():
        node, spec = graph.get(dg.AssetKey(key)), specs[key]
        assert node.group_name == group, key
        pdef = node.partitions_def
        if parts is None:
            assert pdef is None, key
        elif parts == "tasks":
            assert pdef.get_partition_keys() == TASKS, key
        elif parts in ("drops", "batches"):
            assert (
                isinstance(pdef, dg.DynamicPartitionsDefinition)
                and pdef.name == f"annotation_{parts}"
            )
        else:
            assert len(pdef.get_partition_keys()) >= 2, key
        assert spec.owners and all(o.startswith("team:") for o in spec.owners), key
        assert spec.kinds and len(spec.kinds) <= 3, key
        assert spec.description and len(spec.description) > 40, key
        assert "dagster/code_references" in spec.metadata, key
        if key != "annotation_drops":
            assert node.code_version and len(node.code_version) == 12, (
                f"{key}: code version from its source"
            )
            if key != "annotation_batches":  # a person's decision, never automated (below)
                assert spec.automation_condition is not None, (
                    f"{key}: its condition is on the asset"
                )
        if key in TABLE_ASSETS:
            schema = spec.metadata.get("dagster/column_schema")
            assert schema is not None and len(schema.columns) >= 3, key
    for key, reads in READS.items():
        deps = {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}
        assert reads <= deps, (key, reads - deps)
    assert graph.get(dg.AssetKey("trained_models")).pools == {"gpu"}
    # conditions: the labels follow drops, the rest follow changed data; the report tolerates missing tasks
    assert "label_drops sensor" in str(specs["nih_labels"].automation_condition.get_label())
    # a batch is made by a person (xray-assets batch, or the UI's Materialize): automation exporting
    # a newly added partition raced the CLI's own run and sent Label Studio every task twice
    assert specs["annotation_batches"].automation_condition is None
    assert "missing inputs allowed" in str(specs["study_report"].automation_condition.get_label())
    checks = {c.name for c in graph.asset_check_keys}
    assert {
        "no_patient_in_two_splits",
        "nih_boxes_quarantine",
        "conversion_quarantine",
        "listed_images_exist",
        "inputs_within_quarantine_limit",
        "evaluated_on_current_test_split",
        "champion_rescored",
    } <= checks
    gate_checks = [c for c in graph.asset_check_keys if c.asset_key == dg.AssetKey("champion_gate")]
    assert len(gate_checks) == 3 and all(graph.get_check_spec(c).blocking for c in gate_checks), (
        "the gate's guards are blocking: a failing one holds the promotion"
    )


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(project_dagster_home(tmp_path))}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_quarantine_check_fails_when_bad_rows_pass_the_profiles_limit(sample_dir, tmp_path):
    from helpers import graph

    from xray_assets.defs.resources import XrayResource

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    box_list = data / "nih" / "BBox_List_2017.csv"
    box_list.write_text(
        box_list.read_text() + "".join(f"bad_{i}.png,Alien,1,2,3,4\n" for i in range(11))
    )
    xray = XrayResource(data_dir=str(data), storage_dir=str(tmp_path / "st"), profile="smoke")
    _, everything = graph(xray)
    with dg.instance_for_test() as instance:
        res = dg.materialize(
            everything, selection=["nih_boxes"], instance=instance, resources={"xray": xray}
        )
        (check,) = [
            e for e in res.get_asset_check_evaluations() if e.check_name == "nih_boxes_quarantine"
        ]
    assert check.passed is False
    assert check.metadata["quarantined_rows"].value == 11 and check.metadata["limit"].value == 10
    assert (
        "label 'Alien'" in check.metadata["reasons"].value
        and "row" in check.metadata["first_rows"].value
    )
    assert res.success, "bad rows are quarantined, the run goes on"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_one_backfill_materialises_the_study_and_a_failed_task_reexecutes(
    sample_dir, tmp_path, monkeypatch
):
    """`xray-assets materialize --profile smoke` with nih_binary's training failing on purpose."""
    import mlflow

    from xray_assets import backfill, cli
    from xray_assets.backfill import BACKFILL_TAG, PARTITION_TAG

    home = project_dagster_home(tmp_path / "dagster_home")
    storage = tmp_path / "storage"
    for k, v in {
        "DAGSTER_HOME": str(home),
        "XRAY_DATA_DIR": str(sample_dir),
        "XRAY_STORAGE_DIR": str(storage),
        "XRAY_PROFILE": "demo",
        "XRAY_WEIGHTS_DIR": str(tmp_path / "no-weights"),
        "XRAY_TEST_FAIL_TASK": "nih_binary",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(ROOT)
    # a launchpad-style run config reaches every run (smoke trains 1 epoch; this asks for 2)
    (tmp_path / "run.yaml").write_text(
        "ops:\n  trained_models:\n    config:\n      epochs: 2\n      seed: 3\n"
    )
    assert (
        cli.main(["materialize", "--profile", "smoke", "--config", str(tmp_path / "run.yaml")]) == 1
    ), "a failed task makes the exit status non-zero"

    with dg.DagsterInstance.get() as instance:
        (bf,) = instance.get_backfills()
        runs = instance.get_runs()
        assert runs and all(r.tags.get(BACKFILL_TAG) == bf.backfill_id for r in runs), (
            "one backfill, all runs"
        )
        assert all(
            r.remote_job_origin is not None and r.job_code_origin is not None for r in runs
        ), "every run has a code origin (the UI can re-execute it)"
        assert all(r.tags.get("xray/profile") == "smoke" for r in runs), (
            "the run config's profile, not the env's"
        )
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        assert [r.tags.get(PARTITION_TAG) for r in failed] == ["nih_binary"]
        done = instance.get_materialized_partitions(dg.AssetKey("evaluation_reports"))
        assert done == set(TASKS) - {"nih_binary"}, "the other tasks went on"

        monkeypatch.delenv("XRAY_TEST_FAIL_TASK")
        again = backfill.reexecute(failed[0].run_id, instance=instance, timeout=600)
        assert (
            again.status == dg.DagsterRunStatus.SUCCESS and again.parent_run_id == failed[0].run_id
        )
        assert instance.get_materialized_partitions(dg.AssetKey("evaluation_reports")) == set(TASKS)
        # the backfill skipped the report below the failed partition; with no daemon, one more backfill
        assert cli.main(["materialize", "--profile", "smoke", "--select", "study_report"]) == 0
        assert len(instance.get_backfills()) == 2

        # the event log stays small: plots are files and thumbnails, not full PNGs
        sizes = [
            len(dg.serialize_value(rec.event_log_entry))
            for r in [*runs, again]
            for rec in instance.get_records_for_run(r.run_id).records
            if rec.event_log_entry.dagster_event
            and rec.event_log_entry.dagster_event.is_step_materialization
        ]
        assert sizes and max(sizes) < 200_000, max(sizes)

    assert (storage / "smoke" / "reports").is_dir() and not (storage / "demo").exists(), (
        "storage per profile"
    )
    client = mlflow.MlflowClient(f"sqlite:///{storage / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xray-smoke-assets")
    mruns = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.data.tags["task"] for r in mruns) == sorted(TASKS)
    for r in mruns:
        task = r.data.tags["task"]
        assert r.info.status == "FINISHED" and r.data.params["xray.init"] == "scratch"
        assert r.data.tags["trained_on_synthetic"] == "true", (
            "the generated sample data marks itself synthetic"
        )
        assert "xray.no_effect.copy_paste" not in r.data.params, "smoke sets copy_paste to 0"
        assert len(client.get_metric_history(r.info.run_id, "train/box_loss")) == 2, (
            "--config's epochs: 2"
        )
        ran = (
            r.data.params["xray.train.seed"],
            r.data.params["xray.train.epochs"],
            r.data.params["seed"],
        )
        assert ran == ("3", "2", "3"), "--config's seed reached ultralytics and is logged as run"
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"weights", "evaluation"} <= arts, task
        (v,) = client.search_model_versions(f"name='xray-smoke-{task}'")
        assert v.tags["init"] == "scratch" and v.tags["gate_decision"] == "champion"
        assert (
            v.tags["gate_stated_null_rate"] == "0.2" and "champion stays" in v.tags["gate_rule"]
        ), v.tags
        best = json.loads((storage / "smoke" / "tuning" / task / "best.json").read_text())
        assert (float(v.tags["nms_conf"]), float(v.tags["nms_iou"])) == (best["conf"], best["iou"])
        assert v.tags["nms_agnostic"] == ("true" if task == "united_multi" else "false")
        summary = json.loads((storage / "smoke" / "reports" / task / "summary.json").read_text())
        assert summary["rule"]["conf"] == best["conf"] and "map_iou40" in summary
        assert {
            "cpm_luna16",
            "cpm_iou",
            "precision_macro",
            "precision_micro",
            "test_patients",
        } <= set(summary)
        if (
            summary["map50"] is not None
        ):  # (undefined, and not logged, when the test split has no boxes of it)
            assert {
                "test_map50",
                "test_cpm_luna16",
                "test_cpm_iou",
                "test_op_recall_macro",
                "test_op_recall_micro",
                "test_bootstrap_resamples",
            } <= set(r.data.metrics), task
            assert r.data.metrics["test_map50"] == pytest.approx(summary["map50"])
    report = (storage / "smoke" / "reports" / "study" / "report.md").read_text()
    for part in (
        "## Comparisons on the same images",
        "No fair comparison exists for",
        "## Results on the test split",
    ):
        assert part in report, part
    # the sample DICOMs carry made-up patient names, IDs and dates: none may reach any output
    leaks = []
    for f in storage.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            leaks += [
                f"{f.name}: {tag!r}"
                for tag in (b"SYNTHETIC^PATIENT", b"SYN00", b"19600101", b"20200102")
                if tag in data
            ]
    assert not leaks, leaks


@pytest.fixture
def small_instance(sample_dir, tmp_path, monkeypatch):
    """A sqlite instance in its own DAGSTER_HOME (the project's dagster.yaml), the smoke profile on the
    sample data; the code location is started from the checkout as the CLI starts it."""
    home = project_dagster_home(tmp_path / "home")
    for k, v in {
        "DAGSTER_HOME": home,
        "XRAY_DATA_DIR": sample_dir,
        "XRAY_STORAGE_DIR": tmp_path / "storage",
        "XRAY_PROFILE": "smoke",
    }.items():
        monkeypatch.setenv(k, str(v))
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.mark.slow  # the CLI driving a real instance while a daemon stops
@pytest.mark.timeout(300)
def test_materialize_takes_over_when_the_daemon_stops(small_instance, monkeypatch):
    """`make ui` closed a moment before: the daemon's last heartbeat is still fresh when the backfill is
    created, so the CLI follows; once the heartbeat is stale it executes the backfill itself and
    finishes (it used to wait for the dead daemon forever). The heartbeat's age is set by the test's
    own clock: fresh at the first look, stale at every look after, however slow the machine."""
    import io
    import time

    from dagster._daemon.types import DaemonHeartbeat  # private: no public name

    from xray_assets import backfill

    beat = time.time()
    small_instance.add_daemon_heartbeat(
        DaemonHeartbeat(beat, "BACKFILL", "closed-make-ui", errors=[])
    )
    looks = []

    def clock():
        looks.append(1)
        return beat + (1 if len(looks) == 1 else backfill.DAEMON_FRESH_SECONDS + 1)

    monkeypatch.setattr(backfill, "clock", clock)
    out = io.StringIO()
    outcome = backfill.materialize(
        backfill.MaterializeRequest(["nih_labels"], profile="smoke"),
        instance=small_instance,
        working_directory=str(ROOT),
        timeout=200,
        out=out,
    )
    text = out.getvalue()
    assert "executed by the running Dagster daemon" in text, text
    assert "the Dagster daemon stopped" in text, text
    assert outcome.ok and [
        sorted(k.to_user_string() for k in r.asset_selection) for r in outcome.runs
    ] == [["nih_labels"]]


@pytest.mark.timeout(300)
def test_materialize_prints_daemon_iteration_errors_and_gives_up(small_instance, monkeypatch):
    """An error of the backfill daemon's iteration is printed, and after MAX_ITERATION_ERRORS in a row
    the command ends with it (the errors used to be dropped, and the command polled forever)."""
    import io

    from dagster._utils.error import SerializableErrorInfo  # private: no public name

    from xray_assets import backfill, dagster_adapter

    def failing(*args, **kwargs):
        yield SerializableErrorInfo(
            "BackfillError: the asset graph changed under the backfill\nmore", [], "X"
        )

    monkeypatch.setattr(dagster_adapter, "execute_backfill_jobs", failing)
    monkeypatch.setattr(backfill, "MAX_ITERATION_ERRORS", 3)
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="failed 3 times in a row"):
        backfill.materialize(
            backfill.MaterializeRequest(["nih_labels"], profile="smoke"),
            instance=small_instance,
            working_directory=str(ROOT),
            timeout=120,
            out=out,
        )
    lines = out.getvalue().splitlines()
    assert (
        lines.count(
            "    daemon iteration error: BackfillError: the asset graph changed under the backfill"
        )
        == 1
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_run_whose_dagster_processes_die_ends_failure_and_is_reexecuted(small_instance, tmp_path):
    """`make ui` closed mid-run, an OOM kill of the tree, a reboot: the CLI that launched the run, its
    code server and the run worker all get SIGKILL once the run is STARTED, so nothing is left to
    report the death and the run stays STARTED. `xray-assets reexecute` runs Dagster's monitoring
    check first (dagster.yaml `run_monitoring`, the LocalRunLauncher's pid check): the run ends
    FAILURE, naming its dead worker, and its re-execution succeeds."""
    import io
    import os
    import signal
    import subprocess
    import sys
    import time

    from xray_assets import backfill
    from xray_assets.launcher import LocalRunLauncher

    assert (
        isinstance(small_instance.run_launcher, LocalRunLauncher)
        and small_instance.run_monitoring_enabled
    )
    log = open(tmp_path / "materialize.log", "w")
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xray_assets.cli",
            "materialize",
            "--profile",
            "smoke",
            "--select",
            "vinbigdata_annotations",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    run, deadline = None, time.time() + 240
    while run is None and time.time() < deadline and cli.poll() is None:
        started = small_instance.get_runs(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        )
        run = next((r for r in started if small_instance.run_launcher.worker(r)), None)
        time.sleep(0.02)
    assert run is not None, f"no run STARTED:\n{(tmp_path / 'materialize.log').read_text()}"
    pid = small_instance.run_launcher.worker(run)[0]
    os.killpg(cli.pid, signal.SIGKILL)  # the CLI, its code server and the run worker, at once
    cli.wait(30)
    log.close()
    time.sleep(1)
    assert small_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, (
        "nobody reported it"
    )
    out = io.StringIO()
    again = backfill.reexecute(
        run.run_id, instance=small_instance, working_directory=str(ROOT), timeout=200, out=out
    )
    dead = small_instance.get_run_by_id(run.run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    assert f"run {run.run_id} ended FAILURE: its worker is gone" in out.getvalue(), out.getvalue()
    messages = [
        r.event_log_entry.message for r in small_instance.get_records_for_run(run.run_id).records
    ]
    assert any(f"run worker pid {pid} is gone" in m for m in messages), messages[-5:]
    assert again.status == dg.DagsterRunStatus.SUCCESS and again.parent_run_id == run.run_id


def test_a_live_run_is_not_judged_dead(small_instance):
    """The health check answers RUNNING for a live worker pid and FAILED once it is gone."""
    import subprocess
    import sys
    import time

    from dagster._core.launcher import WorkerStatus  # private: no public name

    launcher = small_instance.run_launcher
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        launcher.worker = lambda run: (proc.pid, time.time())
        assert launcher.check_run_worker_health(None).status == WorkerStatus.RUNNING
    finally:
        proc.kill()
        proc.wait()
    assert launcher.check_run_worker_health(None).status == WorkerStatus.FAILED
    launcher.worker = lambda run: (
        os.getpid(),
        time.time() - 3600,
    )  # a pid reused by a younger process
    assert launcher.check_run_worker_health(None).status == WorkerStatus.FAILED
