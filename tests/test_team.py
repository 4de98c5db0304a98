"""Running for a team: Postgres-backed Dagster, artefacts on S3, the Kubernetes executor config."""

import shutil

import dagster as dg
import pytest

from conftest import ROOT
from services import postgres

INGEST_AND_DATASETS = ["nih_labels", "nih_boxes", "vinbigdata_annotations", "vinbigdata_images",
                       "vinbigdata_boxes", "background_samples", "patient_splits", "yolo_datasets"]


@pytest.mark.slow
def test_postgres_instance_materialises_ingest_and_datasets(sample_dir, tmp_path, monkeypatch):
    from xray_assets.cli import materialize_graph
    from xray_assets.defs.resources import XrayResource

    with postgres(tmp_path) as pg:
        for k, v in pg.items():
            monkeypatch.setenv(k, v)
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        xray = XrayResource(data_dir=str(sample_dir), storage_dir=str(tmp_path / "storage"), profile="smoke")
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            results = materialize_graph(instance=instance, xray=xray, select=INGEST_AND_DATASETS,
                                        tasks=["united_binary"])
            assert results and all(r.success for r in results)
            ids = {r.run_id for r in results}
            assert ids <= {r.run_id for r in instance.get_runs()}
            mat = instance.get_latest_materialization_event(dg.AssetKey("patient_splits"))
            assert mat is not None and mat.run_id in ids
        # and the rows really are in Postgres (not a sqlite file under DAGSTER_HOME)
        import psycopg2

        conn = psycopg2.connect(host=pg["DAGSTER_PG_HOST"], port=pg["DAGSTER_PG_PORT"], dbname="dagster",
                                user="postgres", password=pg["DAGSTER_PG_PASSWORD"])
        with conn, conn.cursor() as cur:
            cur.execute("select count(*) from runs")
            assert cur.fetchone()[0] == len(ids)
        conn.close()
        assert not list(home.rglob("*.db")), "no sqlite storage beside the Postgres config"
    assert (tmp_path / "storage" / "datasets" / "united_binary" / "data.yaml").exists()



@pytest.mark.slow
def test_ingest_assets_materialise_into_s3(sample_dir, tmp_path, monkeypatch):
    """The storage root is an s3:// URL on a real S3-compatible server (moto) on 127.0.0.1."""
    import boto3
    import pandas as pd

    from services import s3_server
    from xray_assets.cli import materialize_graph
    from xray_assets.core.labels import read_nih_boxes
    from xray_assets.defs.resources import XrayResource

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with s3_server(tmp_path) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="xray-team")
        xray = XrayResource(data_dir=str(sample_dir), storage_dir="s3://xray-team/study", profile="smoke",
                            mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        with dg.DagsterInstance.ephemeral() as instance:
            results = materialize_graph(instance=instance, xray=xray, select=["nih_labels", "nih_boxes",
                                                                              "vinbigdata_annotations"])
            assert results and all(r.success for r in results)
            checks = [c for r in results for c in r.get_asset_check_evaluations()]
            assert len(checks) == 3 and all(c.passed for c in checks), "quarantine checks read from S3"
            mats = [e for r in results for e in r.get_asset_materialization_events()]
            paths = {e.materialization.metadata["path"].value for e in mats}
            assert paths == {"s3://xray-team/study/nih/labels.parquet", "s3://xray-team/study/nih/boxes.parquet",
                             "s3://xray-team/study/vinbigdata/annotations.parquet"}
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="xray-team")["Contents"]}
        assert {"study/nih/boxes.parquet", "study/nih/boxes_quarantine.parquet",
                "study/vinbigdata/annotations.parquet"} <= keys
        assert not any(".xray-upload-" in k or ".tmp" in k for k in keys), "no temp objects left behind"
        body = s3.get_object(Bucket="xray-team", Key="study/nih/boxes.parquet")["Body"].read()
        import io

        got = pd.read_parquet(io.BytesIO(body))
        want = read_nih_boxes(sample_dir / "nih" / "BBox_List_2017.csv")
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert not (tmp_path / "storage").exists() and not list(tmp_path.glob("s3:*")), "nothing written locally"


def test_kubernetes_executor_config_and_gpu_tags(monkeypatch):
    import yaml
    from dagster_k8s.job import get_user_defined_k8s_config

    from xray_assets.definitions import build_definitions
    from xray_assets.defs.resources import XrayResource

    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    dep = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env["XRAY_EXECUTOR"] == "k8s" and dep["dagsterApiGrpcArgs"] == ["-m", "xray_assets.definitions"]
    assert values["concurrency"]["enabled"] and values["concurrency"]["pools"]["defaultLimit"] >= 1
    assert "postgres" in yaml.safe_load((ROOT / "deploy" / "dagster.postgres.yaml").read_text())["storage"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "xray_assets.definitions" in dockerfile and "YOLO_OFFLINE=1" in dockerfile

    monkeypatch.setenv("XRAY_EXECUTOR", "k8s")   # what the Helm values set in the user-code pods
    defs = build_definitions(XrayResource(data_dir="/data", storage_dir="/artefacts", profile="study"))
    dg.Definitions.validate_loadable(defs)
    for name in ("train_models", "ingest_labels"):
        job = defs.resolve_job_def(name)
        assert job.executor_def.name == "k8s", name
        run_config = {"execution": {"config": {"job_namespace": "xray", "max_concurrent": 4,
                                               "step_k8s_config": {"container_config": {"env": []}}}}}
        assert dg.validate_run_config(job, run_config)

    graph = defs.resolve_asset_graph()
    op_tags = {a.key.to_user_string(): a.op.tags for a in defs.assets}
    assert len(op_tags) == 12
    gpu = {"trained_models", "nms_thresholds", "evaluation_reports"}
    for name, tags in op_tags.items():
        node = graph.get(dg.AssetKey(name))
        cfg = get_user_defined_k8s_config(tags)
        limits = (cfg.container_config.get("resources") or {}).get("limits", {})
        if name in gpu:
            assert limits.get("nvidia.com/gpu") == "1", name
            assert cfg.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
            assert node.pools == {"gpu"}, name
        else:
            assert "nvidia.com/gpu" not in limits, name
    conv = get_user_defined_k8s_config(op_tags["vinbigdata_images"])
    assert conv.container_config["resources"]["requests"]["cpu"] == "8"
    shards = graph.get(dg.AssetKey("vinbigdata_images")).partitions_def.get_partition_keys()
    assert len(shards) >= 2, "shards are separate runs, hence separate pods"
