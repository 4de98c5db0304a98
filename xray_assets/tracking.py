"""MLflow's side of the study: the registry (champion/challenger aliases, version tags), a version's
weights, and evaluation figures logged into a model's run. I/O only: the decisions are in `core`.

Used by the Dagster shell (`defs/`) and by the web app (`serve/`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .core import atomic, layout
from .core.champion import CHALLENGER, CHAMPION


def ensure_store(tracking_uri: str) -> None:
    """Create the embedded sqlite store once, under a file lock: two runs side by side would otherwise
    race its schema migration ("table _alembic_tmp_... already exists"). A server needs nothing."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        client(tracking_uri).search_experiments(max_results=1)


def client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(tracking_uri: str, model_name: str, alias: str):
    """The model version holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def served_version(tracking_uri: str, model_name: str) -> tuple[str | None, str]:
    """(version, how it was chosen): the champion alias, else the latest version, else None."""
    mv = alias_version(tracking_uri, model_name, CHAMPION)
    if mv is not None:
        return str(mv.version), CHAMPION
    try:
        versions = client(tracking_uri).search_model_versions(f"name='{model_name}'")
    except Exception:
        versions = []
    if versions:
        return str(max(int(v.version) for v in versions)), "latest"
    return None, "none"


def version_info(tracking_uri: str, model_name: str, version: str) -> dict:
    """A version's run id and tags."""
    mv = client(tracking_uri).get_model_version(model_name, str(version))
    return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags or {})}


def fetch_weights(tracking_uri: str, run_id: str, cache: Path) -> Path:
    """The run's `weights/best.pt` (else last.pt), downloaded once into `cache/best.pt` (atomically)."""
    import mlflow

    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / layout.BEST_WEIGHTS
    if weights.exists():
        return weights
    got = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/weights",
            tracking_uri=tracking_uri,
            dst_path=tempfile.mkdtemp(dir=cache),
        )
    )
    try:
        best = got / layout.BEST_WEIGHTS
        pick = best if best.exists() else got / layout.LAST_WEIGHTS
        if not pick.exists():
            raise FileNotFoundError(f"run {run_id} has no weights/best.pt artefact")
        atomic.copy_file(pick, weights)
    finally:
        shutil.rmtree(got.parent if got.name == "weights" else got, ignore_errors=True)
    return weights


def apply_gate(
    tracking_uri: str, model_name: str, version: str, gate, champ, move_back: bool
) -> None:
    """The champion gate's decision on the registry: its tags on the version; `champion` moves to a
    promoted version; a challenger gets `challenger`, and (`move_back`: no blocking check held it) a
    hand-moved `champion` alias goes back to the version the gate keeps."""
    tag_version(tracking_uri, model_name, version, gate.tags())
    if gate.decision == CHAMPION:
        set_alias(tracking_uri, model_name, CHAMPION, version)
    elif gate.decision == CHALLENGER:
        set_alias(tracking_uri, model_name, CHALLENGER, version)
        if champ is not None and move_back:
            set_alias(tracking_uri, model_name, CHAMPION, str(champ.version))


def tag_version(tracking_uri: str, model_name: str, version: str, tags: dict) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(model_name, str(version), k, str(v))


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    client(tracking_uri).set_registered_model_alias(model_name, alias, str(version))


def log_evaluation(
    tracking_uri: str,
    run_id: str,
    metrics: dict[str, float],
    files: list[Path],
    artifact_path: str = "evaluation",
    tags: dict[str, str] | None = None,
) -> None:
    """Figures (NaN left out), tags (the detection rule) and report files into the model's own run."""
    c = client(tracking_uri)
    for k, v in (tags or {}).items():
        c.set_tag(run_id, k, v)
    for k, v in metrics.items():
        if v is not None and not math.isnan(float(v)):
            c.log_metric(run_id, k, float(v))
    for f in files:
        c.log_artifact(run_id, str(f), artifact_path=artifact_path)


# -- a training's run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRun:
    """Where a training is recorded: the store, the experiment, artefacts (a folder or a URI such as
    s3://...; a server decides for itself), and the run's params and tags."""

    tracking_uri: str
    experiment: str
    artifact_root: Path | str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    experiment_id: str
    artifact_uri: str
    #: a resumed training's run, opened again
    reopened: bool


def experiment(tracking_uri: str, name: str, artifact_root: Path | str | None) -> str:
    """Set the tracking URI and make sure `name` exists, with artefacts under `artifact_root` for a
    local store; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None and not tracking_uri.startswith(("http://", "https://")):
        location = (
            str(artifact_root)
            if "://" in str(artifact_root)
            else Path(artifact_root).resolve().as_uri()
        )
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def training_run(spec: TrainingRun, task: str, out_dir: Path, resume: bool) -> Iterator[ActiveRun]:
    """The MLflow run of one training, active (for ultralytics' callback) inside the block and ended
    FINISHED, or FAILED when the block raises. A resumed training reopens the run recorded in
    `out_dir/run.json`. `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into this process's
    environment, which ultralytics' callback needs while training and nothing after: it is put back."""
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    run_file = out_dir / "run.json"
    try:
        exp_id = experiment(spec.tracking_uri, spec.experiment, spec.artifact_root)
        previous = json.loads(run_file.read_text()) if resume and run_file.exists() else None
        if previous:
            run = mlflow.start_run(run_id=previous["run_id"])
            mlflow.set_tags({**spec.tags, "resumed": "true"})
        else:
            run = mlflow.start_run(
                experiment_id=exp_id,
                run_name=f"{task}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags=spec.tags,
            )
            run_file.write_text(json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id}))
        try:
            with _env(MLFLOW_EXPERIMENT_NAME=spec.experiment):
                yield ActiveRun(run.info.run_id, exp_id, run.info.artifact_uri, bool(previous))
            mlflow.end_run(status="FINISHED")
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
    finally:
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def log_training_params(
    params: dict[str, Any], not_passed: dict, no_effect: dict, tags: dict[str, str]
) -> None:
    """The study's settings, namespaced `xray.` (ultralytics' callback logs its own args beside
    them), what this ultralytics does not take and what acts on nothing for box detection."""
    import mlflow

    mlflow.log_params({f"xray.{k}": str(v)[:500] for k, v in params.items()})
    if not_passed:
        mlflow.log_params({f"xray.not_passed.{k}": v for k, v in not_passed.items()})
    mlflow.log_params({f"xray.no_effect.{k}": v for k, v in no_effect.items()})
    mlflow.set_tags(tags)


def log_epoch(trainer) -> None:
    """An epoch's losses and metrics into the active run (a resumed training: ultralytics' callback
    refuses a reopened run)."""
    import mlflow

    clean = {
        k.replace("(", "").replace(")", ""): float(v)
        for k, v in {
            **trainer.label_loss_items(trainer.tloss, prefix="train"),
            **(trainer.metrics or {}),
        }.items()
    }
    mlflow.log_metrics(clean, step=trainer.epoch)


def log_training_outputs(run_id: str, weights_dir: Path, save_dir: Path, final: dict) -> None:
    """ultralytics logs weights and plots at the end of training; make sure they are there even if
    its callback was switched off in the user's ultralytics settings; and the final metrics."""
    import mlflow

    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    if "weights" not in logged:
        mlflow.log_artifact(str(weights_dir), artifact_path=None)
    for f in save_dir.glob("*"):
        if f.suffix in {".png", ".jpg", ".csv", ".yaml"} and f.name not in logged:
            mlflow.log_artifact(str(f))
    mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})


def register_training(run: ActiveRun, name: str, task: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` from the run's weights; returns its number."""
    import mlflow

    c = mlflow.MlflowClient()
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description=f"YOLO detector for task {task}")
    mv = c.create_model_version(
        name=name, source=f"{run.artifact_uri}/weights", run_id=run.run_id, tags=tags
    )
    return mv.version
