"""The champion gate: a newly evaluated model version is promoted only if it is not worse.

After evaluation on the (stable) test patients, the new registered version of `xray-<task>` gets the
MLflow alias `champion` when its test mAP50 is at least the current champion's minus `margin`, and
the alias `challenger` otherwise. The first version of a model becomes champion. Both figures and
the decision are tagged on the new version and returned for the asset's metadata. Serving reads the
`champion` alias.
"""

from __future__ import annotations

import math

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_TAG = "test_map50"


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _score(client, mv) -> float:
    if SCORE_TAG in (mv.tags or {}):
        return float(mv.tags[SCORE_TAG])
    run = client.get_run(mv.run_id)
    return float(run.data.metrics.get("test_map50", float("nan")))


def decide(new_score: float, champion_score: float | None, margin: float) -> str:
    """champion when there is none, or the new score >= the champion's minus the margin."""
    if champion_score is None or math.isnan(champion_score):
        return CHAMPION
    if math.isnan(new_score):
        return CHALLENGER
    return CHAMPION if new_score >= champion_score - margin else CHALLENGER


def gate(tracking_uri: str, model_name: str, version: str | int, new_score: float, margin: float,
         tags: dict[str, str] | None = None) -> dict:
    """Decide and set the alias; `tags` (e.g. the tuned thresholds) are set on the new version too."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = str(version)
    current = _alias_version(client, model_name, CHAMPION)
    if current is not None and str(current.version) == version:  # re-evaluating the champion itself
        current = None
    champ_score = _score(client, current) if current is not None else None
    decision = decide(new_score, champ_score, margin)
    client.set_model_version_tag(model_name, version, SCORE_TAG, f"{new_score:.6f}")
    client.set_model_version_tag(model_name, version, "gate_decision", decision)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(model_name, version, k, str(v))
    if current is not None:
        client.set_model_version_tag(model_name, version, "gate_compared_with", str(current.version))
    client.set_registered_model_alias(model_name, decision, version)
    return {"decision": decision, "model": model_name, "version": version, "new_map50": new_score,
            "champion_version_before": None if current is None else str(current.version),
            "champion_map50_before": champ_score, "margin": margin}


def served_version(tracking_uri: str, model_name: str) -> tuple[str | None, str]:
    """(version, how it was chosen): the champion alias, else the latest version, else None."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = _alias_version(client, model_name, CHAMPION)
    if mv is not None:
        return str(mv.version), CHAMPION
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except Exception:
        versions = []
    if versions:
        return str(max(int(v.version) for v in versions)), "latest"
    return None, "none"
