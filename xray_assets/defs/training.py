"""One YOLO model per task, trained through ultralytics and tracked in one MLflow run each."""


import subprocess
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..core import train as core_train
from ..core.classes import TASKS
from .datasets import yolo_datasets
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource, md_image

CODE_VERSION = "train-v1"
EXPERIMENT = "xray-assets"


class TrainConfig(dg.Config):
    weights: str | None = Field(default=None, description="local pretrained weights file (e.g. yolov8s.pt)")
    device: str | None = Field(default=None, description="None: GPU when present, else CPU")
    epochs: int | None = Field(default=None, description="override the profile's epochs")
    resume: bool = Field(default=False, description="continue a killed training from its last checkpoint")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


@dg.asset(group_name="models", partitions_def=TASK_PARTITIONS, kinds={"pytorch", "mlflow"},
          deps=[yolo_datasets], pool="gpu", op_tags=GPU_STEP_TAGS, code_version=CODE_VERSION,
          description="A YOLOv8 model per task, an MLflow run (params, per-epoch metrics, plots, "
                      "weights) and a registered model version `xray-<task>`.")
def trained_models(context: dg.AssetExecutionContext, config: TrainConfig, xray: XrayResource
                   ) -> dg.MaterializeResult:
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    params = profile.train
    if config.epochs:
        from dataclasses import replace

        params = replace(params, epochs=config.epochs)
    ds_root = st.local("datasets", task.name)   # (from an object store: with the images it links to)
    dataset_hash = (ds_root / "dataset_hash.txt").read_text().strip()
    tags = {"dagster_run_id": context.run.run_id, "task": task.name, "profile": profile.name,
            "dataset_hash": dataset_hash, "code_version": code_version()}
    run_params = {**profile.as_params(), "task": task.name, "classes": ",".join(task.classes),
                  "dataset_hash": dataset_hash, "weights": config.weights or "none (built from yaml)"}
    previous = st.read_json("models", task.name, "model.json") if st.exists("models", task.name, "model.json") else {}
    with st.workdir("models", task.name) as out_dir:
        result = core_train.train(
            task=task.name, data_yaml=ds_root / "data.yaml", params=params, out_dir=out_dir,
            tracking_uri=xray.tracking_uri, experiment=EXPERIMENT, artifact_root=st.uri("mlflow", "artifacts"),
            run_params=run_params, tags=tags, weights=config.weights, device=config.device,
            resume=config.resume, log=context.log.info,
        )
    info = {"task": task.name, "weights": str(result.weights), "run_id": result.run_id,
            "experiment_id": result.experiment_id, "model_version": result.model_version,
            "dataset_hash": dataset_hash, "metrics": result.metrics, "profile": profile.name,
            "imgsz": params.imgsz, "classes": list(task.classes), "seconds": round(result.seconds, 1)}
    st.write_json(info, "models", task.name, "model.json")
    md = {
        "weights": dg.MetadataValue.path(str(result.weights)),
        "mlflow_run": dg.MetadataValue.url(xray.run_url(result.experiment_id, result.run_id)),
        "mlflow_run_id": result.run_id,
        "registered_model": f"xray-{task.name}",
        "registered_version": str(result.model_version),
        "dataset_hash": dataset_hash,
        "dataset_changed_since_last_model": (
            "first model" if not previous else
            ("no: same dataset as version " + str(previous.get("model_version")))
            if previous.get("dataset_hash") == dataset_hash else "yes"),
        "train_seconds": round(result.seconds, 1),
        **{f"val_{k.split('_', 1)[-1]}": round(v, 4) for k, v in result.metrics.items() if "mAP" in k or "recall" in k},
    }
    if result.results_png:
        md["results"] = md_image(result.results_png)
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(f"{dataset_hash}-{result.run_id[:8]}"))
