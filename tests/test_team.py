"""Running for a team: Postgres-backed Dagster, artefacts on S3, the Kubernetes executor config."""

import shutil

import dagster as dg
import pytest
from conftest import ROOT
from services import postgres


def _ingest_and_datasets() -> list[str]:
    """The study up to the task datasets, in the graph's order."""
    from xray_assets.definitions import defs
    from xray_assets.graph_order import study_assets

    return study_assets(defs.resolve_asset_graph(), up_to="yolo_datasets")


@pytest.mark.slow
def test_postgres_instance_materialises_ingest_and_datasets(sample_dir, tmp_path, monkeypatch):
    from helpers import materialize_stages

    from xray_assets.defs.resources import XrayResource

    with postgres(tmp_path) as pg:
        for k, v in pg.items():
            monkeypatch.setenv(k, v)
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        xray = XrayResource(
            data_dir=str(sample_dir), storage_dir=str(tmp_path / "storage"), profile="smoke"
        )
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            results = materialize_stages(
                xray, instance, select=_ingest_and_datasets(), tasks=["united_binary"]
            )
            assert results and all(r.success for r in results)
            ids = {r.run_id for r in results}
            assert ids <= {r.run_id for r in instance.get_runs()}
            mat = instance.get_latest_materialization_event(dg.AssetKey("patient_splits"))
            assert mat is not None and mat.run_id in ids
        # and the rows really are in Postgres (not a sqlite file under DAGSTER_HOME)
        import psycopg2

        conn = psycopg2.connect(
            host=pg["DAGSTER_PG_HOST"],
            port=pg["DAGSTER_PG_PORT"],
            dbname="dagster",
            user="postgres",
            password=pg["DAGSTER_PG_PASSWORD"],
        )
        with conn, conn.cursor() as cur:
            cur.execute("select count(*) from runs")
            assert cur.fetchone()[0] == len(ids)
        conn.close()
        assert not list(home.rglob("*.db")), "no sqlite storage beside the Postgres config"
    assert (tmp_path / "storage" / "smoke" / "datasets" / "united_binary" / "data.yaml").exists()


@pytest.mark.slow
def test_whole_graph_materialises_into_s3(sample_dir, tmp_path, monkeypatch, request):
    """The storage root is an s3:// URL on a real S3-compatible server (moto) on 127.0.0.1. Every stage
    runs as if on a fresh pod: the local mirror is wiped between stages, so whatever a stage needs
    (converted images, datasets, weights, reports) has to come back from the object store."""
    import io

    import boto3
    import mlflow
    import pandas as pd
    from helpers import STAGES, materialize_stages
    from services import s3_server

    from xray_assets.config import Settings
    from xray_assets.core.labels import read_nih_boxes
    from xray_assets.defs.resources import XrayResource
    from xray_assets.serve.models import resolve
    from xray_assets.storage import Storage

    tasks = [
        "united_multi",
        "nih_binary",
    ]  # one task on converted VinBigData images, one on NIH's own
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    url, tracking = "s3://xray-team/study", f"sqlite:///{tmp_path / 'mlflow.db'}"
    with s3_server(tmp_path) as endpoint:
        # the recording guard (conftest) refuses and records anything that is not loopback
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="xray-team")
        xray = XrayResource(
            data_dir=str(sample_dir), storage_dir=url, profile="smoke", mlflow_tracking_uri=tracking
        )
        results = []
        with dg.DagsterInstance.ephemeral() as instance:
            for stage, keys, _ in STAGES:
                # conversion pods may keep their scratch elsewhere: the splits name images by the storage layout
                monkeypatch.setenv(
                    "XRAY_CACHE_DIR",
                    str(tmp_path / ("convert-scratch" if "vinbigdata_images" in keys else "cache")),
                )
                mirror = Storage(url).mirror
                for (
                    key
                ) in keys:  # one asset at a time, as k8s_job_executor gives each step its own pod
                    got = materialize_stages(xray, instance, select=[key], tasks=tasks)
                    assert got and all(r.success for r in got), key
                    results += got
                    if stage == "ingest":
                        assert not mirror.exists(), "tables go straight to the object store"
                    shutil.rmtree(mirror, ignore_errors=True)  # the next step runs elsewhere
        mats = [e for r in results for e in r.get_asset_materialization_events()]
        assert {e.asset_key.to_user_string() for e in mats} == {
            "nih_labels",
            "nih_boxes",
            "vinbigdata_annotations",
            "vinbigdata_images",
            "vinbigdata_boxes",
            "background_samples",
            "patient_splits",
            "yolo_datasets",
            "trained_models",
            "nms_thresholds",
            "evaluation_reports",
            "champion_gate",
            "served_int8",
            "annotation_queue",
            "study_report",
        }
        checks = [c for r in results for c in r.get_asset_check_evaluations()]
        assert all(
            c.passed
            for c in checks
            if c.check_name
            in ("no_patient_in_two_splits", "listed_images_exist", "boxes_inside_images")
        ), "the dataset checks found every image on this machine"
        paths = {
            e.materialization.metadata["path"].value
            for e in mats
            if "path" in e.materialization.metadata
        }
        assert {
            "s3://xray-team/study/smoke/nih/labels.parquet",
            "s3://xray-team/study/smoke/nih/boxes.parquet",
            "s3://xray-team/study/smoke/vinbigdata/annotations.parquet",
        } <= paths

        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="xray-team")
        everything = {
            o["Key"][len("study/") :]: o["Size"] for page in pages for o in page.get("Contents", [])
        }
        # the profile's artefacts under smoke/; MLflow's (shared by the profiles) at the root
        objects = {k[len("smoke/") :]: v for k, v in everything.items() if k.startswith("smoke/")}
        objects.update({k: v for k, v in everything.items() if k.startswith("mlflow/")})
        assert not any(
            ".xray-" in k and not k.endswith(".xray-links.json") or ".tmp" in k for k in objects
        ), "no temp objects left behind"
        manifest = pd.concat(
            pd.read_parquet(
                io.BytesIO(s3.get_object(Bucket="xray-team", Key=f"study/smoke/{k}")["Body"].read())
            )
            for k in objects
            if k.startswith("vinbigdata/images/manifest-")
        )
        ok = manifest[manifest["status"] == "ok"]
        assert len(ok) > 0 and all(
            f"vinbigdata/images/png/{i}.png" in objects for i in ok["image_id"]
        )
        for task in tasks:
            assert {
                f"datasets/{task}/data.yaml",
                f"datasets/{task}/dataset_hash.txt",
                f"tuning/{task}/best.json",
                f"reports/{task}/metrics.parquet",
                f"reports/{task}/champion.json",
            } <= set(objects), task
            assert objects[f"models/{task}/best.pt"] > 100_000, task
        assert "datasets/united_multi/.xray-links.json" in objects
        assert not any(
            k.startswith("datasets/") and k.endswith(".png") and "/images/" in k for k in objects
        ), "dataset images are links, not copies"
        assert {"reports/study/report.html", "reports/study/report.md"} <= set(objects)
        body = s3.get_object(Bucket="xray-team", Key="study/smoke/nih/boxes.parquet")["Body"].read()
        stored = pd.read_parquet(io.BytesIO(body)).reset_index(drop=True)
        assert (stored.pop("source") == "BBox_List_2017.csv").all()
        pd.testing.assert_frame_equal(
            stored, read_nih_boxes(sample_dir / "nih" / "BBox_List_2017.csv").reset_index(drop=True)
        )

        # MLflow's artefacts are on the object store too, and the web app serves the champion from there
        mlflow.set_tracking_uri(tracking)
        client = mlflow.MlflowClient()
        for task in tasks:
            run = client.search_runs(
                [client.get_experiment_by_name("xray-smoke-assets").experiment_id],
                f"tags.task = '{task}'",
            )[0]
            assert run.info.artifact_uri.startswith("s3://xray-team/study/mlflow/artifacts/")
            assert {"weights", "evaluation"} <= {
                a.path for a in client.list_artifacts(run.info.run_id)
            }
        assert any(
            k.startswith("mlflow/artifacts/") and k.endswith("/weights/best.pt") for k in objects
        )
        shutil.rmtree(mirror, ignore_errors=True)
        settings = Settings(
            data_dir=sample_dir, storage_dir=url, profile="smoke", mlflow_tracking_uri=tracking
        )
        served = resolve(settings, "united_multi", backend="pytorch")
        assert served.chosen == "champion" and served.weights.stat().st_size > 100_000

        # the sample DICOMs carry made-up patient names, IDs and dates: none may reach any object
        leaks = [
            f"{k}: {tag!r}"
            for k, size in everything.items()
            if size < 50_000_000
            for data in [s3.get_object(Bucket="xray-team", Key=f"study/{k}")["Body"].read()]
            for tag in (b"SYNTHETIC^PATIENT", b"SYN00", b"19600101", b"20200102")
            if tag in data
        ]
        assert not leaks, leaks
    assert not (tmp_path / "storage").exists() and not list(tmp_path.glob("s3:*")), (
        "nothing outside the mirror"
    )


def test_kubernetes_executor_config_and_gpu_tags(monkeypatch):
    import yaml
    from dagster_k8s.job import get_user_defined_k8s_config

    from xray_assets.definitions import build_definitions
    from xray_assets.defs.resources import XrayResource

    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    dep = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env["XRAY_EXECUTOR"] == "k8s" and dep["dagsterApiGrpcArgs"] == [
        "-m",
        "xray_assets.definitions",
    ]
    assert values["concurrency"]["enabled"] and values["concurrency"]["pools"]["defaultLimit"] >= 1
    assert (
        "postgres"
        in yaml.safe_load((ROOT / "deploy" / "dagster.postgres.yaml").read_text())["storage"]
    )
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "xray_assets.definitions" in dockerfile and "YOLO_OFFLINE=1" in dockerfile

    monkeypatch.setenv("XRAY_EXECUTOR", "k8s")  # what the Helm values set in the user-code pods
    defs = build_definitions(
        XrayResource(data_dir="/data", storage_dir="/artefacts", profile="study")
    )
    dg.Definitions.validate_loadable(defs)
    for name in ("train_models", "ingest_labels"):
        job = defs.resolve_job_def(name)
        assert job.executor_def.name == "k8s", name
        run_config = {
            "execution": {
                "config": {
                    "job_namespace": "xray",
                    "max_concurrent": 4,
                    "step_k8s_config": {"container_config": {"env": []}},
                }
            }
        }
        assert dg.validate_run_config(job, run_config)

    graph = defs.resolve_asset_graph()
    op_tags = {a.key.to_user_string(): a.op.tags for a in defs.assets}
    assert len(op_tags) == 17
    gpu = {
        "trained_models",
        "nms_thresholds",
        "evaluation_reports",
        "champion_gate",
        "annotation_queue",
    }
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
