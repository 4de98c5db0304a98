"""The graph: its shape matches DESIGN, and the whole study materialises offline (smoke profile)."""

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from conftest import ROOT

DESIGN_ASSETS = {
    "nih_labels": ("nih", None), "nih_boxes": ("nih", None),
    "vinbigdata_annotations": ("vinbigdata", None), "vinbigdata_images": ("vinbigdata", "shards"),
    "vinbigdata_boxes": ("vinbigdata", None), "background_samples": ("datasets", None),
    "patient_splits": ("datasets", None), "yolo_datasets": ("datasets", "tasks"),
    "trained_models": ("models", "tasks"), "nms_thresholds": ("models", "tasks"),
    "evaluation_reports": ("reports", "tasks"), "study_report": ("reports", None),
}
TASKS = ["nih_multi", "nih_binary", "united_multi", "united_binary", "united_cardiomegaly", "united_mass_nodule"]


def test_asset_keys_groups_and_partitions_are_designs():
    from xray_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(DESIGN_ASSETS)
    for key, (group, parts) in DESIGN_ASSETS.items():
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == group, key
        pdef = node.partitions_def
        if parts is None:
            assert pdef is None, key
        elif parts == "tasks":
            assert pdef.get_partition_keys() == TASKS, key
        else:
            assert len(pdef.get_partition_keys()) >= 2, key


def test_dagster_definitions_validate():
    env = {**os.environ, "DAGSTER_HOME": str(ROOT / "dagster_home")}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_whole_graph_materialises_offline_on_smoke(sample_dir, tmp_path, no_network, monkeypatch):
    import mlflow

    from xray_assets.cli import materialize_graph
    from xray_assets.config import get_profile
    from xray_assets.defs.resources import XrayResource

    storage = tmp_path / "storage"
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    xray = XrayResource(data_dir=str(sample_dir), storage_dir=str(storage), profile="smoke")
    with dg.DagsterInstance.ephemeral() as instance:
        results = materialize_graph(instance=instance, xray=xray)
        assert all(r.success for r in results)
        checks = [e for r in results for e in r.get_asset_check_evaluations()]
        leak = [c for c in checks if c.check_name == "no_patient_in_two_splits"]
        assert leak and all(c.passed for c in leak)
        mats = {e.asset_key.to_user_string() for r in results for e in r.get_asset_materialization_events()}
        assert mats == set(DESIGN_ASSETS)

    profile = get_profile("smoke")
    mlflow.set_tracking_uri(xray.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("xray-assets")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    for task in TASKS:
        assert (storage / "models" / task / "best.pt").stat().st_size > 100_000
        best = json.loads((storage / "tuning" / task / "best.json").read_text())
        assert best["conf"] in profile.conf_grid and best["iou"] in profile.iou_grid
        import pandas as pd

        table = pd.read_parquet(storage / "reports" / task / "metrics.parquet")
        assert {"label", "ap50", "ap50_95", "ap40", "precision", "recall", "f1"} <= set(table.columns)
        assert len(table) >= 1
        mine = [r for r in runs if r.data.tags.get("task") == task]
        assert len(mine) == 1, f"{task}: {len(mine)} MLflow runs"
        run = mine[0]
        assert run.info.status == "FINISHED"
        assert run.data.params["xray.task"] == task
        assert run.data.params["xray.train.imgsz"] == str(profile.train.imgsz) == run.data.params["imgsz"]
        assert "dagster_run_id" in run.data.tags
        assert any(k.startswith("test_") for k in run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "train/box_loss")
        assert len(history) >= 1, "ultralytics' callback logged per-epoch metrics into our run"
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "weights" in arts and "evaluation" in arts
        versions = client.search_model_versions(f"name='xray-{task}'")
        assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    assert len(runs) == len(TASKS)
    assert (storage / "reports" / "study" / "report.html").exists()
    report = (storage / "reports" / "study" / "report.md").read_text()
    for part in ("Boxes per class and split", "before and after consensus", "## Comparisons", "## The served panel",
                 *TASKS):
        assert part in report, part
    assert "95% intervals" in report, "comparisons weigh the bootstrap intervals"

    # the sample DICOMs carry made-up patient names, IDs and dates: none may reach any output
    leaks = []
    for f in storage.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            leaks += [f"{f.name}: {tag!r}" for tag in (b"SYNTHETIC^PATIENT", b"SYN00", b"19600101", b"20200102")
                      if tag in data]
    assert not leaks, leaks
