"""Training: a killed run resumes to completion in the same MLflow run; a failed run registers nothing."""

from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from xray_assets.config import get_profile
from xray_assets.core import train as core_train
from xray_assets.core.synthetic import toy_yolo_dataset


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return toy_yolo_dataset(tmp_path, "united_cardiomegaly", 12, 128, [[], ["Cardiomegaly"]], (8 / 12, 10 / 12))


def _train(tmp_path, data_yaml, **kw):
    params = replace(get_profile("smoke").train, epochs=3)
    return core_train.train(task="united_cardiomegaly", data_yaml=data_yaml, params=params,
                            out_dir=tmp_path / "models", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            experiment="xray-assets", artifact_root=tmp_path / "artifacts",
                            run_params={"task": "united_cardiomegaly"}, tags={"task": "united_cardiomegaly"}, **kw)


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
        _train(tmp_path, tiny_dataset, weights=str(tmp_path / "nope.pt"))
