"""Training: the starting weights are what was asked for and are recorded; a killed run resumes to
completion in the same MLflow run; a failed run registers nothing."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from xray_assets import tracking
from xray_assets import train as core_train
from xray_assets.config import Settings, get_profile
from xray_assets.core.dicom import file_sha256
from xray_assets.core.synthetic import toy_yolo_dataset


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return toy_yolo_dataset(
        tmp_path, "united_cardiomegaly", 12, 128, [[], ["Cardiomegaly"]], (8 / 12, 10 / 12)
    )


def _train(tmp_path, data_yaml, epochs=3, init=None, out="models", **kw):
    params = replace(get_profile("smoke").train, epochs=epochs)
    init = init or core_train.Init("scratch", params.model)
    request = core_train.TrainRequest(
        task="united_cardiomegaly",
        data_yaml=data_yaml,
        params=params,
        out_dir=tmp_path / out,
        init=init,
        **kw,
    )
    run = tracking.TrainingRun(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="xray-assets",
        artifact_root=tmp_path / "artifacts",
        params={"task": "united_cardiomegaly"},
        tags={"task": "united_cardiomegaly"},
    )
    return core_train.train(request, run, log=lambda m: None)


def _state(model) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_given_weights_are_the_starting_point_and_are_recorded(tmp_path, tiny_dataset):
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    first = _train(tmp_path, tiny_dataset, epochs=1, out="toy")
    ckpt = first.save_dir / "weights" / "last.pt"
    init = core_train.resolve_init(get_profile("smoke").train, weights=str(ckpt))
    assert (
        init.label == "pretrained:last.pt"
        and init.sha256 == file_sha256(ckpt)
        and init.size == ckpt.stat().st_size
    )
    seen = {}

    def on_train_start(trainer):
        seen["state"] = _state(trainer.model)

    result = _train(
        tmp_path, tiny_dataset, epochs=1, init=init, callbacks={"on_train_start": on_train_start}
    )
    expected = _state(load_checkpoint(str(ckpt))[0])
    assert seen["state"].keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(seen["state"][k], expected[k])]
    assert not differing, (
        f"{len(differing)} tensors differ from the checkpoint before the first step: {differing[:3]}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.data.params["xray.init"] == "pretrained:last.pt"
    assert run.data.params["xray.init_sha256"] == init.sha256 == run.data.tags["init_sha256"]
    version = client.search_model_versions("name='xray-united_cardiomegaly'")
    assert {v.tags.get("init") for v in version} >= {"pretrained:last.pt"}


@pytest.mark.slow
def test_from_scratch_trains_and_says_scratch(tmp_path, tiny_dataset):
    init = core_train.resolve_init(
        get_profile("study").train, from_scratch=True, weights_dir=tmp_path / "none"
    )
    assert init.label == "scratch" and init.source == "yolov8s.yaml"
    result = _train(
        tmp_path, tiny_dataset, epochs=1, init=core_train.Init("scratch", "yolov8n.yaml")
    )
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id)
    assert run.data.params["xray.init"] == "scratch" and run.data.params["xray.init_sha256"] == ""


def test_study_profile_offline_without_weights_fails_before_training_naming_the_folder(
    tmp_path, monkeypatch
):
    from xray_assets.defs.resources import XrayResource
    from xray_assets.defs.training import TrainConfig, trained_models

    monkeypatch.setenv("XRAY_ALLOW_DOWNLOADS", "0")  # offline: ultralytics may not fetch yolov8s.pt
    weights = tmp_path / "weights"
    with pytest.raises(core_train.InitError, match=f"yolov8s.pt is not in {weights}") as err:
        core_train.resolve_init(
            get_profile("study").train,
            weights_dir=weights,
            allow_downloads=Settings.resolve(profile="study").downloads_allowed(),
        )
    assert "from_scratch: true" in str(err.value)
    # the asset stops there, before it reads a dataset or opens an MLflow run
    xray = XrayResource(
        data_dir=str(tmp_path / "data"),
        storage_dir=str(tmp_path / "st"),
        profile="study",
        weights_dir=str(weights),
    )
    ctx = dg.build_asset_context(partition_key="united_cardiomegaly")
    with pytest.raises(core_train.InitError, match=str(weights)):
        trained_models(ctx, TrainConfig(), xray)
    assert not (tmp_path / "st").exists(), "nothing written before the error"
    # a file in the folder is found and used
    weights.mkdir()
    (weights / "yolov8s.pt").write_bytes(b"checkpoint bytes")
    found = core_train.resolve_init(get_profile("study").train, weights_dir=weights)
    assert found.label == "pretrained:yolov8s.pt" and found.size == 16
    # demo and smoke build from the yaml when there is no file, and say so
    said = []
    demo = core_train.resolve_init(
        get_profile("demo").train, weights_dir=tmp_path / "empty", log=said.append
    )
    assert demo.label == "scratch" and "from scratch" in said[0]


@pytest.mark.slow
def test_killed_training_resumes_to_completion(tmp_path, tiny_dataset):
    def kill_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt("killed after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_dataset, callbacks={"on_fit_epoch_end": kill_after_first_epoch})
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xray-assets")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_model_versions("name='xray-united_cardiomegaly'") == []
    assert (tmp_path / "models" / "train" / "weights" / "last.pt").exists()

    result = _train(tmp_path, tiny_dataset, resume=True)
    assert result.run_id == run.info.run_id, "resumed in the same MLflow run"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    results = pd.read_csv(result.save_dir / "results.csv")
    assert results["epoch"].max() == 3, "trained to the end after resuming"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/box_loss")}
    assert {0, 1, 2} <= steps
    (version,) = client.search_model_versions("name='xray-united_cardiomegaly'")
    assert version.run_id == run.info.run_id


def test_resume_without_checkpoint_and_missing_weights_are_clear_errors(tmp_path, tiny_dataset):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _train(tmp_path, tiny_dataset, resume=True)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        core_train.resolve_init(get_profile("smoke").train, weights=str(tmp_path / "nope.pt"))


@pytest.mark.slow
def test_training_leaves_no_tracking_uri_in_the_environment(tmp_path, tiny_dataset, monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the process environment: after a training
    it must not point later work (another test, another asset in the same run) at this store."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _train(tmp_path, tiny_dataset, epochs=1)
    assert "MLFLOW_TRACKING_URI" not in os.environ
