"""MLflow's side of the study: the registry (champion/challenger aliases, version tags), a version's
weights, and evaluation figures logged into a model's run. I/O only: the decisions are in `core`.

Used by the Dagster shell (`defs/`) and by the web app (`serve/`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import layout

CHAMPION, CHALLENGER = "champion", "challenger"


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
        tmp = cache / ".best.pt.tmp"
        shutil.copyfile(pick, tmp)
        os.replace(tmp, weights)
    finally:
        shutil.rmtree(got.parent if got.name == "weights" else got, ignore_errors=True)
    return weights


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
) -> None:
    """Figures (NaN left out) and report files into the model's own run."""
    c = client(tracking_uri)
    for k, v in metrics.items():
        if v is not None and v == v:
            c.log_metric(run_id, k, float(v))
    for f in files:
        c.log_artifact(run_id, str(f), artifact_path=artifact_path)
