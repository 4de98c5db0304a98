"""Annotation drops: the sensor only looks and requests; a run accepts a drop, crash-safe; the raw
files are never written; malformed drops fail their run and land in rejected/."""

import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import dagster as dg
import pandas as pd
import pytest
from conftest import ROOT, project_dagster_home

from xray_assets.core import inbox
from xray_assets.core.labels import read_nih_boxes, read_nih_labels
from xray_assets.core.synthetic import write_drop
from xray_assets.defs.drops import new_annotations
from xray_assets.defs.resources import XrayResource


@pytest.fixture
def xray(data_copy, tmp_path):
    return XrayResource(
        data_dir=str(data_copy), storage_dir=str(tmp_path / "storage"), profile="smoke"
    )


def _tree(folder) -> dict:
    """Every file under `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _raw(data_dir) -> dict:
    files = ["nih/Data_Entry_2017.csv", "nih/BBox_List_2017.csv", "vinbigdata/train.csv"]
    return {f: hashlib.sha256((data_dir / f).read_bytes()).hexdigest() for f in files}


def _tick(xray, instance, cursor=None):
    return new_annotations(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"xray": xray})
    )


def _accept(xray, instance, key, folder=None, raise_on_error=True):
    from helpers import graph

    _, everything = graph(xray)
    config = {"ops": {"annotation_drops": {"config": {"folder": str(folder) if folder else ""}}}}
    return dg.materialize(
        everything,
        selection=["annotation_drops"],
        partition_key=key,
        instance=instance,
        resources={"xray": xray},
        run_config=config,
        raise_on_error=raise_on_error,
    )


def test_sensor_only_looks_and_requests(xray, data_copy):
    write_drop(xray.inbox / "batch-1", "nih", n_annotated=4)
    write_drop(xray.inbox / "half", "nih", n_annotated=2, ready=False)
    before, raw = _tree(data_copy), _raw(data_copy)
    with dg.instance_for_test() as instance:
        result = _tick(xray, instance)
    (rr,) = result.run_requests
    digest = inbox.drop_digest(xray.inbox / "batch-1")
    assert rr.run_key == digest and rr.partition_key == inbox.partition_key("batch-1", digest)
    assert result.dynamic_partitions_requests[0].partition_keys == [rr.partition_key]
    assert rr.run_config["ops"]["annotation_drops"]["config"]["folder"] == str(
        xray.inbox / "batch-1"
    )
    assert _tree(data_copy) == before and _raw(data_copy) == raw, (
        "the tick copied, wrote or moved nothing"
    )


def test_same_export_twice_is_requested_once_and_incomplete_drops_wait(xray, tmp_path):
    drop = write_drop(tmp_path / "export", "vinbigdata", n_annotated=3)
    shutil.copytree(drop, xray.inbox / "batch")
    write_drop(xray.inbox / "later", "nih", n_annotated=2, ready=False)
    with dg.instance_for_test() as instance:
        first = _tick(xray, instance)
        assert len(first.run_requests) == 1
        shutil.copytree(drop, xray.inbox / "batch-again")  # the same export dropped again
        second = _tick(xray, instance, first.cursor)
        assert not second.run_requests and "already requested" in second.skip_reason.skip_message
        assert "without READY" in second.skip_reason.skip_message
        (xray.inbox / "later" / "READY").write_text("")
        third = _tick(xray, instance, second.cursor)
        assert [r.partition_key.startswith("later-") for r in third.run_requests] == [True]


@pytest.mark.slow  # a real instance on disk, opened twice
@pytest.mark.timeout(300)
def test_cursor_survives_a_restart_of_a_real_instance(xray, tmp_path, monkeypatch):
    """The sensor ticks through the daemon's own code on a sqlite instance; the instance is closed and
    opened again from DAGSTER_HOME; the next tick does not request the drop a second time."""
    import logging

    from dagster._core.scheduler.instigation import InstigatorType  # private: no public name
    from dagster._daemon.sensor import execute_sensor_iteration  # private: the daemon's own tick

    from xray_assets.backfill import workspace

    home = project_dagster_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for k, v in {
        "XRAY_DATA_DIR": xray.data_dir,
        "XRAY_STORAGE_DIR": xray.storage_dir,
        "XRAY_PROFILE": "smoke",
    }.items():
        monkeypatch.setenv(k, v)
    write_drop(xray.inbox / "batch-1", "nih", n_annotated=3)
    log = logging.getLogger("test")

    def tick():
        with dg.DagsterInstance.get() as instance, workspace(instance, str(ROOT)) as ctx:
            list(
                execute_sensor_iteration(
                    ctx, log, threadpool_executor=None, submit_threadpool_executor=None
                )
            )
            (state,) = [
                s
                for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                if s.name == "new_annotations"
            ]
            (last,) = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            return len(instance.get_runs()), state.instigator_data.cursor, last

    runs, cursor, first = tick()
    assert runs == 1 and inbox.drop_digest(xray.inbox / "batch-1") in cursor and first.run_keys
    from dagster._core.test_utils import freeze_time  # private: no public name
    from dagster._time import get_current_datetime  # private: the clock freeze_time sets

    with freeze_time(
        get_current_datetime() + datetime.timedelta(seconds=90)
    ):  # past the 30 s interval
        runs_after, cursor_after, second = (
            tick()
        )  # a new instance object, the same DAGSTER_HOME: a restart
    assert runs_after == 1, "the drop was not requested again after the restart"
    # the sensor itself skipped the drop because the restored cursor lists it (a lost cursor would
    # request it again, and only Dagster's run-key dedup would hide that)
    assert not second.run_keys and "already requested" in (second.skip_reason or ""), second
    assert json.loads(cursor_after)["requested"] == json.loads(cursor)["requested"]


def test_accepted_drop_is_stored_and_read_with_its_source_raw_files_untouched(xray, data_copy):
    from helpers import materialize_stages

    raw = _raw(data_copy)
    folder = write_drop(xray.inbox / "radiology-1", "nih", n_annotated=4, seed=7)
    drop_labels = read_nih_labels(folder / "Data_Entry_2017.csv")
    drop_boxes = read_nih_boxes(folder / "BBox_List_2017.csv")
    with dg.instance_for_test() as instance:
        rr = _tick(xray, instance).run_requests[0]
        instance.add_dynamic_partitions("annotation_drops", [rr.partition_key])
        res = _accept(xray, instance, rr.partition_key, folder)
        assert res.success
        materialize_stages(xray, instance, select=["nih_labels", "nih_boxes"])
    assert _raw(data_copy) == raw, "the original CSVs are byte-identical"
    assert (xray.inbox / "accepted" / rr.partition_key / "READY").exists() and not folder.exists()
    labels = pd.read_parquet(xray.storage.root / "nih" / "labels.parquet")
    boxes = pd.read_parquet(xray.storage.root / "nih" / "boxes.parquet")
    mine = labels[labels["source"] == rr.partition_key]
    assert sorted(mine["image_id"]) == sorted(drop_labels["image_id"])
    assert (
        labels.loc[labels["source"] != rr.partition_key, "source"] == "Data_Entry_2017.csv"
    ).all()
    assert len(boxes[boxes["source"] == rr.partition_key]) == len(drop_boxes)
    stored = xray.shared.root / "drops" / rr.partition_key
    assert sorted(p.name for p in (stored / "images").iterdir()) == sorted(drop_labels["image_id"])


def _unknown_label(folder):
    p = folder / "BBox_List_2017.csv"
    lines = p.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = "Alien"
    p.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    return "BBox_List_2017.csv row 2: label 'Alien' is not one of the 8 NIH box classes"


def _missing_image(folder):
    png = sorted(folder.rglob("*.png"))[0]
    png.unlink()
    return f"missing image file(s) named by Data_Entry_2017.csv: {png.name}"


def _bad_csv(folder):
    (folder / "BBox_List_2017.csv").write_text("this is not,an annotation export\n1,2\n")
    return "header is neither"


def _bad_row(folder):
    p = folder / "Data_Entry_2017.csv"
    p.write_text(p.read_text().rstrip("\n") + "\nbroken.png\n")
    return "Data_Entry_2017.csv row"


def _existing_image(folder):
    png = sorted(folder.rglob("*.png"))[0]
    old, new = png.name, "00000001_000.png"  # the sample data's first image
    for f in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        (folder / f).write_text((folder / f).read_text().replace(old, new))
    png.rename(png.with_name(new))
    return f"Data_Entry row(s) for image(s) already in the data: {new}"


def _bomb_image(folder):
    import hostile

    png = sorted(folder.rglob("*.png"))[0]
    png.write_bytes(hostile.png(30000, 30000, rows=2))
    return (
        f"{png.name} declares 30000 x 30000 pixels (900.0 megapixels); the limit is 50 megapixels"
    )


def _cut_image(folder):
    png = sorted(folder.rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:20])
    return f"{png.name}: PNG header truncated"


@pytest.mark.parametrize(
    "break_it",
    [_unknown_label, _missing_image, _bad_csv, _bad_row, _existing_image, _bomb_image, _cut_image],
)
def test_malformed_drop_fails_its_run_with_the_reason_and_is_rejected(xray, data_copy, break_it):
    raw = _raw(data_copy)
    folder = write_drop(xray.inbox / "bad", "nih", n_annotated=3)
    files_before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    expected = break_it(folder)
    with dg.instance_for_test() as instance:
        rr = _tick(xray, instance).run_requests[0]
        instance.add_dynamic_partitions("annotation_drops", [rr.partition_key])
        res = _accept(xray, instance, rr.partition_key, folder, raise_on_error=False)
        assert not res.success
        (failure,) = [e for e in res.all_events if e.event_type_value == "STEP_FAILURE"]
        assert expected in str(failure.event_specific_data.error.message) + str(
            failure.event_specific_data.user_failure_data.description
            if failure.event_specific_data.user_failure_data
            else ""
        )
    rejected = xray.inbox / "rejected" / "bad"
    assert expected in (rejected / inbox.ERROR_FILE).read_text()
    kept = sorted(
        p.relative_to(rejected)
        for p in rejected.rglob("*")
        if p.is_file() and p.name != inbox.ERROR_FILE
    )
    assert len(kept) == len(files_before) - (break_it is _missing_image), (
        "nothing in the drop is lost"
    )
    assert (
        _raw(data_copy) == raw
        and not (xray.shared.root / "drops" / rr.partition_key / "drop.json").exists()
    )


KILL = {
    # kill point -> a patch, in the run's own process, that ends it there with os._exit (a killed process)
    "after_images": "Storage.write_parquet = lambda self, *a, **k: os._exit(137)",
    "between_tables": textwrap.dedent("""\
        real = Storage.write_parquet
        calls = []
        def write(self, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                os._exit(137)
            return real(self, *a, **k)
        Storage.write_parquet = write"""),
    "before_the_partition_is_recorded": "inbox.archive = lambda *a, **k: os._exit(137)",
}


@pytest.mark.slow  # runs killed in subprocesses, then run again
@pytest.mark.parametrize("point", list(KILL))
def test_drop_killed_at_any_point_then_run_again_has_each_row_once(
    xray, data_copy, tmp_path, point
):
    from helpers import materialize_stages

    raw = _raw(data_copy)
    folder = write_drop(xray.inbox / "radiology-2", "nih", n_annotated=4, seed=11)
    want_labels = read_nih_labels(folder / "Data_Entry_2017.csv")
    want_boxes = read_nih_boxes(folder / "BBox_List_2017.csv")
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        key = _tick(xray, instance).run_requests[0].partition_key
        instance.add_dynamic_partitions("annotation_drops", [key])
    script = textwrap.dedent(f"""\
        import os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import dagster as dg
        from xray_assets.core import inbox
        from xray_assets.storage import Storage
        from xray_assets.defs.resources import XrayResource
        {{patch}}
        from helpers import graph
        xray = XrayResource(data_dir={xray.data_dir!r}, storage_dir={xray.storage_dir!r}, profile="smoke")
        _, everything = graph(xray)
        with dg.instance_for_test(temp_dir={str(home)!r}) as instance:
            dg.materialize(everything, selection=["annotation_drops"], partition_key={key!r}, instance=instance,
                           resources={{"xray": xray}}, run_config={{"ops": {{"annotation_drops": {{"config": {{"folder": {str(folder)!r}}}}}}}}})
        """)
    patch = textwrap.indent(KILL[point], "")
    killed = subprocess.run(
        [sys.executable, "-c", script.replace("{patch}", patch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == 137, killed.stderr[-2000:]
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert _accept(xray, instance, key).success, "run again, it completes"
        materialize_stages(xray, instance, select=["nih_labels", "nih_boxes"])
    labels = pd.read_parquet(xray.storage.root / "nih" / "labels.parquet")
    boxes = pd.read_parquet(xray.storage.root / "nih" / "boxes.parquet")
    got = labels[labels["image_id"].isin(want_labels["image_id"])]
    assert len(got) == len(want_labels) and got["image_id"].is_unique, (
        "each Data_Entry row exactly once"
    )
    mine = boxes[boxes["image_id"].isin(want_labels["image_id"])]
    assert len(mine) == len(want_boxes), "each box exactly once"
    assert _raw(data_copy) == raw


def test_vinbigdata_drop_with_a_dicom_over_the_pixel_budget_is_rejected_naming_it(tmp_path):
    """A drop's DICOM is measured by its header (the conversion's own reading, no pixels decoded)."""
    import pydicom

    from xray_assets.core.synthetic import write_drop

    folder = write_drop(tmp_path / "vbd", "vinbigdata", n_annotated=2)
    dcm = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".dicom", ".dcm"))[0]
    ds = pydicom.dcmread(dcm)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(dcm)
    with pytest.raises(
        inbox.DropError,
        match=rf"{dcm.name} declares 60000 x 60000 pixels .* limit is 50 megapixels",
    ):
        inbox.validate(folder, inbox.Known())


def test_label_drops_requests_ingest_until_every_committed_drop_is_read(xray):
    """Catches: a committed drop that no label run reads (a drop landing between the same two ticks
    as a label run's end was never ingested), a request while an ingest run is still queued, or a
    request repeated once every drop is in the label tables."""
    from helpers import graph

    from xray_assets.defs.drops import label_drops

    defs, everything = graph(xray)
    ingest = defs.resolve_job_def("ingest_labels")

    def tick(instance):
        return label_drops(dg.build_sensor_context(instance=instance, resources={"xray": xray}))

    with dg.instance_for_test() as instance:
        assert ingest.execute_in_process(instance=instance, resources={"xray": xray}).success
        assert not tick(instance).run_requests, "no drop yet"
        keys = []
        for name, seed in (("one", 1), ("two", 2)):
            folder = write_drop(xray.inbox / name, "nih", n_annotated=2, seed=seed)
            (rr,) = _tick(xray, instance).run_requests
            instance.add_dynamic_partitions("annotation_drops", [rr.partition_key])
            assert _accept(xray, instance, rr.partition_key, folder).success
            keys.append(rr.partition_key)
            # the label assets last read before this drop was committed: a request
            (request,) = tick(instance).run_requests
            assert request.run_key.startswith("drops-")
        # an ingest run in progress holds the next request back
        running = instance.create_run_for_job(ingest, status=dg.DagsterRunStatus.STARTED)
        assert not tick(instance).run_requests
        instance.report_run_failed(running)
        assert ingest.execute_in_process(instance=instance, resources={"xray": xray}).success
        assert not tick(instance).run_requests, "every committed drop is read"
        event = instance.get_latest_materialization_event(dg.AssetKey("nih_boxes"))
        assert event.asset_materialization.metadata["drops_read"].value == keys
        boxes = xray.storage.read_parquet("nih", "boxes.parquet")
        assert set(keys) <= set(boxes["source"])
