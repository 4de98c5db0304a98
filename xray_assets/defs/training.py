"""One YOLO model per task, trained through ultralytics and tracked in one MLflow run each."""

import subprocess
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from .. import config as config_module
from .. import tracking
from .. import train as core_train
from ..core import layout
from ..core.classes import TASKS
from ..core.plots import training_curves
from ..core.synthetic import is_sample_data
from ..records import DatasetManifest, ModelRecord
from .automation import code_version, on_new_data
from .datasets import yolo_datasets
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource, share_cores, thumbnail

OWNERS = ["team:ml"]
TAGS = {"stage": "train"}


class TrainConfig(dg.Config):
    weights: str | None = Field(
        default=None,
        description="a pretrained weights file to start from (overrides the "
        "profile's yolov8*.pt from XRAY_WEIGHTS_DIR)",
    )
    from_scratch: bool = Field(
        default=False, description="start from random weights (the profile's yaml) on purpose"
    )
    device: str | None = Field(default=None, description="None: GPU when present, else CPU")
    epochs: int | None = Field(default=None, description="override the profile's epochs")
    resume: bool = Field(
        default=False, description="continue a killed training from its last checkpoint"
    )
    seed: int | None = Field(
        default=None,
        description="override the profile's training seed (another seed on the "
        "same data: an equally good challenger for the gate)",
    )


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


#: what decides a trained model: the training code (followed into what it calls, TrainParams'
#: defaults included), ultralytics and torch as installed, and the profile's training settings
#: (XRAY_PROFILE's: a change of epochs or imgsz reads "code version changed" in the UI)
def training_code_version(profile: str | None = None) -> str:
    return code_version(
        core_train,
        libraries=("ultralytics", "torch"),
        settings=(config_module.get_profile(profile).train,),
    )


CODE_VERSION = training_code_version()


@dg.asset(
    group_name="models",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "mlflow", "yolo"},
    owners=OWNERS,
    tags=TAGS,
    deps=[yolo_datasets],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    code_version=CODE_VERSION,
    automation_condition=on_new_data(),
    description="A YOLOv8 model per task, tracked in an MLflow run and registered.",
)
def trained_models(
    context: dg.AssetExecutionContext, config: TrainConfig, xray: XrayResource
) -> dg.MaterializeResult:
    """A YOLOv8 model per task (COCO-pretrained start where the profile has one), an MLflow run
    (params, per-epoch metrics, plots, weights) and a registered model version."""
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    context.log.info(f"{task.name}: {share_cores()} torch thread(s)")
    params = replace(profile.train, epochs=config.epochs) if config.epochs else profile.train
    params = replace(params, seed=config.seed) if config.seed is not None else params
    # the starting weights are settled before anything else: a missing file stops the run here
    init = core_train.resolve_init(
        params,
        weights=config.weights,
        from_scratch=config.from_scratch,
        weights_dir=xray.weights,
        allow_downloads=xray.settings.downloads_allowed(),
        log=context.log.info,
    )
    tracking.ensure_store(xray.tracking_uri)
    dataset = DatasetManifest.read(st, task.name)
    synthetic = is_sample_data(xray.data())
    previous = ModelRecord.find(st, task.name)
    with st.workdir("models", task.name) as out_dir:
        request = core_train.TrainRequest(
            task=task.name,
            data_yaml=Path(dataset.data_yaml),
            params=params,
            out_dir=out_dir,
            init=init,
            model_name=profile.model_name(task.name),
            device=config.device,
            resume=config.resume,
        )
        run = _training_run(context, xray, task, params, dataset.dataset_hash, synthetic)
        result = core_train.train(request, run, log=context.log.info)
    record = model_record(profile, task, params, init, result, run)
    record.write(st)
    metadata = _model_metadata(xray, task, record, result, init, previous)
    if result.results_csv:  # our own plot: ultralytics draws its results.png only with `plots`
        curves = training_curves(pd.read_csv(result.results_csv), f"{task.name}: training")
        st.write_bytes(curves, *layout.training_curves(task.name))
        metadata["training_curves"] = thumbnail(st.local(*layout.training_curves(task.name)))
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(f"{dataset.dataset_hash}-{result.run_id[:8]}"),
    )


def _training_run(context, xray: XrayResource, task, params, dataset_hash: str, synthetic: bool):
    """The MLflow run a training is recorded in: its tags (the Dagster run, the dataset, the
    code) and params (the profile's, as run)."""
    profile = xray.config
    return tracking.TrainingRun(
        tracking_uri=xray.tracking_uri,
        experiment=profile.experiment,
        artifact_root=xray.shared.uri("mlflow", "artifacts"),
        params={
            **profile.as_params(),
            "train.epochs": params.epochs,
            "train.seed": params.seed,  # as run
            "task": task.name,
            "classes": ",".join(task.classes),
            "dataset_hash": dataset_hash,
            "trained_on_synthetic": synthetic,
        },
        tags={
            "dagster_run_id": context.run_id,
            "task": task.name,
            "profile": profile.name,
            "dataset_hash": dataset_hash,
            "code_version": git_revision(),
            "trained_on_synthetic": str(synthetic).lower(),
        },
    )


def model_record(profile, task, params, init, result, run) -> ModelRecord:
    """The record of a finished training (`ModelRecord`, what the later steps read); the dataset
    and whether it was synthetic as the MLflow run recorded them."""
    dataset_hash, synthetic = run.params["dataset_hash"], run.params["trained_on_synthetic"]
    return ModelRecord(
        task=task.name,
        weights=str(result.weights),
        run_id=result.run_id,
        experiment_id=result.experiment_id,
        model_version=None if result.model_version is None else str(result.model_version),
        registered_model=profile.model_name(task.name),
        dataset_hash=dataset_hash,
        metrics=result.metrics,
        profile=profile.name,
        imgsz=params.imgsz,
        classes=tuple(task.classes),
        seconds=round(result.seconds, 1),
        trained_on_synthetic=synthetic,
        init=init.label,
        init_source=init.source,
        init_sha256=init.sha256 or "",
        init_bytes=init.size or 0,
    )


def _model_metadata(xray: XrayResource, task, record, result, init, previous) -> dict:
    st, profile = xray.storage, xray.config
    if previous is None:
        changed = "first model"
    elif previous.dataset_hash == record.dataset_hash:
        changed = f"no: same dataset as version {previous.model_version}"
    else:
        changed = "yes"
    val = {
        f"val_{k.split('_', 1)[-1]}": round(v, 4)
        for k, v in result.metrics.items()
        if "mAP" in k or "recall" in k
    }
    return {
        "weights": dg.MetadataValue.path(str(st.root.joinpath(*layout.weights(task.name)))),
        "mlflow_run": dg.MetadataValue.url(xray.run_url(result.experiment_id, result.run_id)),
        "mlflow_run_id": result.run_id,
        "registered_model": profile.model_name(task.name),
        "registered_version": str(result.model_version),
        "init": init.label,
        "init_sha256": init.sha256 or "n/a (random weights)",
        "init_bytes": init.size or 0,
        "trained_on_synthetic": record.trained_on_synthetic,
        "dataset_hash": record.dataset_hash,
        "dataset_changed_since_last_model": changed,
        "train_seconds": round(result.seconds, 1),
        **val,
    }


defs = dg.Definitions(assets=[trained_models])
