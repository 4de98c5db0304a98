"""End to end: annotations for new patients land in the inbox, the sensor's run and Dagster's
automation retrain every task (smoke), existing patients keep their splits, and the gate decides."""

import json

import dagster as dg
import pandas as pd
import pytest

from xray_assets.core.synthetic import write_drop
from xray_assets.defs.resources import XrayResource

TASKS = ["nih_multi", "nih_binary", "united_multi", "united_binary", "united_cardiomegaly", "united_mass_nodule"]


def _requested(result, defs) -> dict[str, set]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): set(result.get_requested_partitions(k)) for k in graph.get_all_asset_keys()
            if result.get_num_requested(k)}


@pytest.mark.slow
def test_drop_for_new_patients_retrains_and_gates(data_copy, tmp_path, no_network, monkeypatch):
    import mlflow

    from xray_assets.cli import materialize_graph
    from xray_assets.definitions import build_definitions
    from xray_assets.defs.automation import new_annotations

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    storage = tmp_path / "storage"
    xray = XrayResource(data_dir=str(data_copy), storage_dir=str(storage), profile="smoke", champion_margin=1.0)
    defs = build_definitions(xray)
    with dg.instance_for_test() as instance:
        assert all(r.success for r in materialize_graph(instance=instance, xray=xray))
        splits_before = pd.read_parquet(storage / "datasets" / "splits.parquet")
        # `make ui` after `make demo`: the automation sensor's first ticks must not retrain anything
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0, _requested(first, defs)
        idle = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert idle.total_requested == 0, "a freshly materialised graph does not retrain by itself"

        write_drop(xray.inbox / "radiology-2026-11", "nih", n_annotated=4, seed=202)
        ctx = dg.build_sensor_context(instance=instance, resources={"xray": xray})
        sensed = new_annotations(ctx)
        assert len(sensed.run_requests) == 1
        rr = sensed.run_requests[0]
        job = defs.resolve_job_def("ingest_labels")
        assert job.execute_in_process(instance=instance, tags=rr.tags, run_config=rr.run_config).success

        # what Dagster's automation sensor does under the daemon: each tick requests what became
        # stale; here each tick's request is run (stage by stage) before the next tick
        cursor, done = idle.cursor, {}
        for _ in range(10):
            ticked = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor, requested = ticked.cursor, _requested(ticked, defs)
            if not requested:
                break
            for key, parts in requested.items():
                done.setdefault(key, set()).update(parts)
            tasks = sorted({p for parts in requested.values() for p in parts if p in TASKS}) or None
            results = materialize_graph(instance=instance, xray=xray, select=list(requested), tasks=tasks)
            assert results and all(r.success for r in results)
        else:
            pytest.fail(f"automation never settled: {done}")
        for key in ("yolo_datasets", "trained_models", "nms_thresholds", "evaluation_reports"):
            assert done.get(key) == set(TASKS), (key, done)
        assert {"vinbigdata_images", "patient_splits", "study_report"} <= set(done)

    drop_ids = set(pd.read_csv(next((xray.inbox / "merged").glob("radiology-2026-11-*")) / "Data_Entry_2017.csv")
                   ["Image Index"])
    splits_after = pd.read_parquet(storage / "datasets" / "splits.parquet")
    old = splits_before.merge(splits_after, on="image_id", suffixes=("_before", "_after"))
    assert len(old) == len(splits_before), "no image left the study"
    assert (old["split_before"] == old["split_after"]).all(), "no existing patient changed split"
    added_boxes = pd.read_parquet(storage / "datasets" / "nih_multi" / "boxes.parquet")
    assert drop_ids & set(added_boxes["image_id"]), "the new boxes are in the datasets"

    client = mlflow.MlflowClient(tracking_uri=xray.tracking_uri, registry_uri=xray.tracking_uri)
    for task in TASKS:
        gate = json.loads((storage / "reports" / task / "champion.json").read_text())
        assert gate["version"] == "2" and gate["champion_version_before"] == "1", gate
        assert gate["decision"] == "champion", "margin 1.0: never worse by more than that"
        assert str(client.get_model_version_by_alias(f"xray-{task}", "champion").version) == "2"
