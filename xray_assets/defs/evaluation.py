"""NMS tuning on val, evaluation on test, and the study report across tasks."""


import dagster as dg

from ..core import champion
from ..core import evaluation as core_eval
from ..core.classes import TASK_NAMES, TASKS
from .resources import GPU_STEP_TAGS, TASK_PARTITIONS, XrayResource, md_image, table_md
from .training import trained_models


@dg.asset(group_name="models", partitions_def=TASK_PARTITIONS, kinds={"pytorch"}, deps=[trained_models],
          pool="gpu", op_tags=GPU_STEP_TAGS, description="The (conf, iou) pair chosen on val per task, with the whole grid "
                                  "(objective: mean(recall, mAP50)), scored from one forward pass.")
def nms_thresholds(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    out = core_eval.tune_task(st, task, profile, log=context.log.info)
    best, grid = out["best"], out["grid"]
    return dg.MaterializeResult(metadata={
        "conf": best["conf"], "iou": best["iou"],
        "objective": round(best["objective"], 4), "val_map50": round(best["map50"], 4),
        "val_recall": round(best["recall"], 4),
        "grid": table_md(grid.round(4)),
        "heatmap": md_image(st.local("tuning", task.name, "grid.png")),
        "forward_pass_seconds": round(out["predict_seconds"], 2),
        "grid_scoring_seconds": round(out["score_seconds"], 2),
    })


@dg.asset(group_name="reports", partitions_def=TASK_PARTITIONS, kinds={"pytorch", "mlflow"},
          deps=[nms_thresholds], pool="gpu", op_tags=GPU_STEP_TAGS,
          description="Test-split metrics and plots per task at the tuned thresholds, logged to the "
                      "model's MLflow run.")
def evaluation_reports(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    out = core_eval.evaluate_task(st, task, profile, tracking_uri=xray.tracking_uri, log=context.log.info)
    info = out["info"]
    gate = {"decision": "not gated (no registered version)"}
    if info.get("model_version"):
        gate = champion.gate(xray.tracking_uri, f"xray-{task.name}", info["model_version"],
                             float(out["summary"]["map50"]), xray.champion_margin,
                             tags=core_eval.serving_tags(task, out["best"], info))
        before = gate["champion_map50_before"]
        context.log.info(f"{task.name}: version {gate['version']} is {gate['decision']} (test mAP50 "
                         f"{gate['new_map50']:.3f} vs champion " +
                         (f"v{gate['champion_version_before']} {before:.3f}" if before is not None else "none") +
                         f", margin {gate['margin']:g})")
    st.write_json(gate, "reports", task.name, "champion.json")
    root = st.root / "reports" / task.name   # where the report lives (a path or an object URL)
    return dg.MaterializeResult(metadata={
        "test_boxes": int(out["table"]["n_gt"].sum()),
        "test_map50": round(out["summary"]["map50"], 4),
        "test_map50_95": round(out["summary"]["map50_95"], 4),
        "test_recall": round(out["summary"]["recall"], 4),
        "test_precision": round(out["summary"]["precision"], 4),
        "per_class": table_md(out["table"].round(4)),
        "report": dg.MetadataValue.path(str(root / "report.html")),
        "test_map50_ci95": f"{out['summary']['map50_ci_low']:.3f} - {out['summary']['map50_ci_high']:.3f}",
        "pr_curves": md_image(st.local("reports", task.name, "pr_curves.png")),
        "confusion_matrix": md_image(st.local("reports", task.name, "confusion_matrix.png")),
        "labels_vs_predictions": md_image(st.local("reports", task.name, "panels.png")),
        "champion_decision": gate["decision"],
        "champion_margin": xray.champion_margin,
        "previous_champion": (f"v{gate['champion_version_before']}: test mAP50 {gate['champion_map50_before']:.4f}"
                              if gate.get("champion_map50_before") is not None else "none"),
        "new_version": (f"v{gate['version']}: test mAP50 {gate['new_map50']:.4f}" if "version" in gate else "none"),
    })


@dg.asset(group_name="reports", kinds={"markdown", "html"}, deps=[evaluation_reports],
          description="All tasks side by side: the study's write-up regenerated from this materialisation.")
def study_report(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    st = xray.storage
    out = core_eval.study_report(st, xray.config, [t for t in TASK_NAMES])
    context.log.info(f"study report: {out['html']}")
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.path(str(out["html"])),
        "markdown": dg.MetadataValue.path(str(out["md"])),
        "tasks": table_md(out["table"].round(4)),
        "missing_tasks": ", ".join(out["missing"]) or "none",
    })
