"""The champion gate as its own node: the decision a team most wants to see, audit and re-run.

`champion_gate` (per task, after `evaluation_reports`) re-scores the current champion on the current
test split with its own detection rule, computes the paired patient-level difference and decides by
`core.champion`'s rule; then it moves the `champion` alias, unless one of its blocking checks fails,
which holds the promotion (the alias stays where it was and the record says why). Re-materialised
alone it decides again from the registry as it stands, so a manual alias change is undone.
"""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from .. import tracking
from ..core import champion, detection, layout, metrics
from ..core import evaluation as core_eval
from ..core.classes import TASKS
from ..core.detection import AP_FLOOR, DetectionRule
from ..core.report import markdown_to_html
from ..records import GateRecord, ModelRecord
from .automation import code_version, content_version, on_new_data
from .evaluation import evaluation_reports, test_split
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource

OWNERS = ["team:ml"]
#: label tables whose quarantined rows each task's data passed through
QUARANTINES = {
    "nih": [layout.NIH_LABELS_QUARANTINE, layout.NIH_BOXES_QUARANTINE],
    "vinbigdata": [layout.VBD_ANNOTATIONS_QUARANTINE],
}
#: the checks that can hold a promotion: name -> description
GUARDS = {
    "inputs_within_quarantine_limit": "The label tables this task learned from quarantined no more rows than the "
    "profile allows; otherwise the promotion is held.",
    "evaluated_on_current_test_split": "The evaluation the gate rests on covers the task's current test split; a "
    "stale evaluation holds the promotion.",
    "champion_rescored": "The current champion was re-scored on the current test split; a champion that "
    "cannot be (no detection rule on its tags, weights missing, an error while scoring) holds the promotion.",
}


def _guards(
    xray: XrayResource, task, evaluated_ids: set, test_ids: set
) -> dict[str, tuple[bool, dict]]:
    st, limit = xray.storage, xray.config.max_quarantine_rows
    sources = ("nih",) if task.name.startswith("nih_") else ("nih", "vinbigdata")
    counts = {
        "/".join(parts): len(st.read_parquet(*parts))
        for s in sources
        for parts in QUARANTINES[s]
        if st.exists(*parts)
    }
    return {
        "inputs_within_quarantine_limit": (
            all(n <= limit for n in counts.values()),
            {"limit": limit, **{k: v for k, v in counts.items()}},
        ),
        "evaluated_on_current_test_split": (
            evaluated_ids == test_ids,
            {
                "evaluated_images": len(evaluated_ids),
                "test_images": len(test_ids),
                "not_evaluated": len(test_ids - evaluated_ids),
            },
        ),
    }


def _baseline(xray: XrayResource, model_name: str, version: str):
    """The version to compare with: the `champion` alias's holder, or, when the alias already points at
    this version (the gate ran before, or someone moved it by hand), the version its last gate compared
    with; None when there is nothing to compare with."""
    current = tracking.alias_version(xray.tracking_uri, model_name, tracking.CHAMPION)
    if current is None:
        return None
    if str(current.version) != str(version):
        return current
    before = dict(current.tags or {}).get("gate_compared_with")
    return (
        tracking.client(xray.tracking_uri).get_model_version(model_name, before) if before else None
    )


class RescoreError(RuntimeError):
    """The champion could not be re-scored on the current test split: the gate holds."""


def _rescore(xray: XrayResource, task, champ, images: pd.DataFrame, context) -> pd.DataFrame:
    """The champion's detections of the current test images by its own rule; RescoreError names
    what failed (no rule on its tags, weights that cannot be fetched, an error while scoring)."""
    tags = dict(champ.tags or {})
    if "nms_conf" not in tags:
        raise RescoreError("no detection rule (nms_conf) on its tags")
    rule = DetectionRule.from_tags(tags)
    try:
        weights = tracking.fetch_weights(
            xray.tracking_uri,
            champ.run_id,
            xray.storage.dir(*layout.served_version(task.name, champ.version)),
        )
    except Exception as exc:
        raise RescoreError(f"its weights could not be fetched ({exc.__class__.__name__}: {exc})")
    context.log.info(
        f"{task.name}: re-scoring champion v{champ.version} on the current {len(images)} test images "
        f"({rule.describe()})"
    )
    try:
        return detection.detect_images(
            detection.load_model(weights),
            images,
            rule.at(conf=AP_FLOOR),
            int(tags.get("imgsz", 640)),
            task.classes,
        )
    except Exception as exc:
        raise RescoreError(f"re-scoring raised {exc.__class__.__name__}: {exc}")


@dg.asset(
    group_name="reports",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "mlflow"},
    owners=OWNERS,
    tags={"stage": "gate"},
    deps=[evaluation_reports],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=on_new_data(only=["evaluation_reports"]),
    code_version=code_version(champion, metrics, detection),
    check_specs=[
        dg.AssetCheckSpec(name, asset="champion_gate", description=d, blocking=True)
        for name, d in GUARDS.items()
    ],
    description="The promotion decision: the new version against the champion re-scored on today's test split.",
)
def champion_gate(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """The promotion decision: the champion re-scored on the current test split, the paired patient-
    level difference new - champion of test mAP50 and its null rate, the decision by the stated
    rule, the `champion` alias moved unless a blocking check holds it."""
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    version = ModelRecord.read(st, task.name).model_version
    images, _ = test_split(st, task.name)
    evaluated = st.read_parquet(*layout.test_images(task.name))
    guards = _guards(xray, task, set(evaluated["image_id"]), set(images["image_id"]))
    checks = [
        dg.AssetCheckResult(check_name=name, passed=ok, metadata=entries)
        for name, (ok, entries) in guards.items()
    ]
    held = [name for name, (ok, _) in guards.items() if not ok]
    if not version:
        gate = GateRecord("", "not gated (no registered version)", "no registered version")
        gate.write(st, task.name)
        rescored = dg.AssetCheckResult(check_name="champion_rescored", passed=True)
        return dg.MaterializeResult(
            metadata={"decision": gate.decision},
            check_results=[*checks, rescored],
            data_version=content_version(gate.decision),
        )
    model_name = profile.model_name(task.name)
    champ = _baseline(xray, model_name, version)
    compared = _compare(
        context, xray, task, version, champ, images[images["image_id"].isin(evaluated["image_id"])]
    )
    checks.append(
        dg.AssetCheckResult(
            check_name="champion_rescored",
            passed=not compared.failed,
            metadata={"failure": compared.failed or "none"},
        )
    )
    gate = GateRecord.from_dict(
        champion.gate_record(
            compared.paired,
            xray.margin,
            version,
            None if champ is None else str(champ.version),
            profile.gate_null_rate,
            profile.min_test_boxes,
        )
    ).after_checks(compared.failed, held, None if champ is None else str(champ.version))
    tracking.apply_gate(xray.tracking_uri, model_name, version, gate, champ, move_back=not held)
    context.log.info(f"{task.name}: version {version} is {gate.decision} ({gate.reason})")
    gate.write(st, task.name)
    _write_gate_report(st, task.name, gate)
    interval = core_eval.interval_text(gate.diff_ci_low, gate.diff_ci_high) if gate.compared else ""
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(
                str(st.root.joinpath(*layout.report(task.name, "gate.html")))
            ),
            **gate.metadata(interval),
        },
        check_results=checks,
        data_version=content_version(str(version), gate.decision, gate.compared_with or ""),
    )


@dataclass
class Comparison:
    """The champion re-scored on today's test images and the paired bootstrap against it (None
    where there is no other champion), or why it could not be re-scored (`failed`)."""

    paired: dict | None = None
    failed: str = ""


def _compare(context, xray: XrayResource, task, version: str, champ, evaluated: pd.DataFrame):
    """The new version against the champion on the images it was evaluated on; the champion's
    detections kept beside the new model's (what the gate compared)."""
    st, profile = xray.storage, xray.config
    if champ is None or str(champ.version) == str(version):
        return Comparison()
    st.localise(evaluated["path"])
    try:
        champ_dets = _rescore(xray, task, champ, evaluated, context)
    except RescoreError as exc:
        failed = f"champion {profile.model_name(task.name)} v{champ.version} could not be re-scored: {exc}"
        context.log.error(f"{task.name}: {failed}; the promotion is held")
        return Comparison(failed=failed)
    st.write_parquet(champ_dets, *layout.champion_detections(task.name))
    paired = metrics.paired_bootstrap(
        st.read_parquet(*layout.ground_truth(task.name)),
        st.read_parquet(*layout.detections(task.name)),
        champ_dets,
        task.classes,
        evaluated["image_id"],
        n_boot=profile.bootstrap_resamples,
        seed=profile.seed,
        groups=core_eval.patients(evaluated),
    )
    return Comparison(paired=paired)


def _write_gate_report(st, task: str, gate: GateRecord) -> None:
    text = core_eval.gate_markdown(task, gate.as_dict())
    st.write_text(text, *layout.report(task, "gate.md"))
    st.write_text(
        markdown_to_html(text, f"Champion gate {task}"), *layout.report(task, "gate.html")
    )


defs = dg.Definitions(assets=[champion_gate])
