"""Integration: a real `mlflow server` on 127.0.0.1 (sqlite backend, local artefacts) as the store."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from xray_assets.definitions import build_definitions
from xray_assets.defs.resources import XrayResource
from xray_assets.graph_order import study_assets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not become healthy in 120 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_model_tracked_in_a_real_mlflow_server(mlflow_server, sample_dir, tmp_path):
    from helpers import materialize_stages

    xray = XrayResource(
        data_dir=str(sample_dir),
        storage_dir=str(tmp_path / "st"),
        profile="smoke",
        mlflow_tracking_uri=mlflow_server,
    )
    select = study_assets(build_definitions(xray).resolve_asset_graph(), up_to="trained_models")
    with dg.DagsterInstance.ephemeral() as instance:
        results = materialize_stages(xray, instance, select=select, tasks=["united_binary"])
        assert all(r.success for r in results)
        (event,) = [
            e
            for r in results
            for e in r.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "trained_models"
        ]
        assert event.materialization.metadata["mlflow_run"].value.startswith(mlflow_server)

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("xray-smoke-assets")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["xray.task"] == "united_binary" and run.data.params["epochs"] == "1"
    assert run.data.tags["task"] == "united_binary" and "dataset_hash" in run.data.tags
    assert client.get_metric_history(run.info.run_id, "train/box_loss")
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "weights" in arts and "results.csv" in arts
    assert run.data.params["xray.init"] == "scratch" and run.data.tags["init"] == "scratch"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} >= {
        "weights/best.pt"
    }
    (version,) = client.search_model_versions("name='xray-smoke-united_binary'")
    assert (
        version.run_id == run.info.run_id
        and version.tags["dataset_hash"] == run.data.tags["dataset_hash"]
    )
    assert any((tmp_path / "server-artifacts").rglob("best.pt")), "artefacts stored by the server"
