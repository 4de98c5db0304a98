"""NMS tuning on val, evaluation on test, and the study report: the storage
and MLflow side. The figures are computed in `core` (detection, tuning, metrics, evaluation)."""

import time
from dataclasses import dataclass, replace

import dagster as dg
import pandas as pd

from .. import tracking
from ..config import get_profile
from ..core import champion, detection, layout, metrics, plots, sizes, study, tuning
from ..core import evaluation as core_eval
from ..core.classes import SERVED_TASKS, TASK_NAMES, TASKS
from ..core.detection import AP_FLOOR, DetectionRule
from ..core.report import markdown_to_html
from ..records import EvaluationSummary, ModelRecord, read_rule, write_rule
from .automation import code_version, content_version, on_new_data
from .datasets import patient_splits, yolo_datasets
from .nih import nih_labels
from .resources import (
    GPU_STEP_TAGS,
    TASK_PARTITIONS,
    XrayResource,
    column_schema,
    share_cores,
    table_value,
    thumbnail,
)
from .training import trained_models
from .vinbigdata import vinbigdata_annotations, vinbigdata_boxes

OWNERS = ["team:ml"]
#: the operating point's figures, both averages (metrics.AVERAGES), as logged to MLflow (test_op_<key>)
METRICS_SCHEMA = column_schema(
    {
        "label": ("string", "the class"),
        "n_gt": ("int", "test boxes"),
        "n_pred": ("int", "detections above 0.001"),
        "n_pred_op": ("int", "detections above the tuned conf"),
        "ap50": ("float", "threshold-free AP at IoU 0.5 (COCO 101-point)"),
        "ap_iou40": ("float", "AP at IoU 0.4"),
        "ap50_95": ("float", "AP averaged over IoU 0.50:0.95"),
        "tp_op": ("int", "true positives above the tuned conf"),
        "fp_op": ("int", "false positives above the tuned conf"),
        "precision": ("float", "at the operating point"),
        "recall": ("float", "at the operating point"),
        "f1": ("float", "at the operating point, from its P and R"),
        "ap50_ci_low": ("float", "95% patient-level bootstrap interval"),
        "ap50_ci_high": ("float", "95% patient-level bootstrap interval"),
        "ci_note": ("string", "why there is no interval (too few test boxes)"),
    }
)


def _task_tables(st, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return st.read_parquet(*layout.dataset_images(task)), st.read_parquet(
        *layout.dataset_boxes(task)
    )


def test_split(st, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, boxes) of a task dataset's test split (what the evaluation and the gate score)."""
    return core_eval.split(*_task_tables(st, task), "test")


def _model(st, task: str):
    return detection.load_model(st.local(*layout.weights(task)))


@dg.asset(
    group_name="models",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "yolo"},
    owners=OWNERS,
    tags={"stage": "tune"},
    deps=[trained_models, yolo_datasets],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=on_new_data(only=["trained_models"]),
    code_version=code_version(tuning, detection),
    description="The task's detection rule: (conf, iou) chosen on val over the study's grid.",
)
def nms_thresholds(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """The task's detection rule: (conf, iou) chosen on val over the study's grid (objective
    mean(recall, mAP50) as ultralytics' validator scores it), every point the served rule replayed
    on one forward pass."""
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    share_cores()
    images, boxes = core_eval.split(*_task_tables(st, task.name), "val")
    if boxes.empty:
        context.log.warning(
            f"{task.name}: the val split has no boxes of this task; every grid point scores 0"
        )
    info = ModelRecord.read(st, task.name)
    st.localise(images["path"])
    t0 = time.time()
    cands = detection.capture_candidates(
        _model(st, task.name),
        images,
        info.imgsz,
        min(profile.conf_grid),
        progress=lambda n, m: context.log.info(f"{task.name}: val forward pass {n}/{m}"),
    )
    pass_seconds = time.time() - t0
    base = DetectionRule(
        conf=min(profile.conf_grid), iou=max(profile.iou_grid), agnostic=task.agnostic_nms
    )
    grid, timing = tuning.tune_grid(
        cands,
        boxes,
        task.classes,
        base,
        profile.conf_grid,
        profile.iou_grid,
        log=lambda m: context.log.info(f"{task.name}: {m}"),
    )
    best, rule = _choose(context, task, base, grid, len(boxes), timing["candidates"])
    scores = {k: best[k] for k in ("objective", "map50", "recall", "precision", "map50_95")}
    st.write_parquet(grid, *layout.tuning(task.name, "grid.parquet"))
    write_rule(st, task.name, rule, {**scores, **timing, "pass_seconds": pass_seconds})
    st.write_bytes(plots.grid_heatmap(grid, best), *layout.tuning(task.name, "grid.png"))
    context.log.info(f"{task.name}: rule {rule.describe()}; val objective {best['objective']:.3f}")
    return dg.MaterializeResult(
        metadata={
            "conf": rule.conf,
            "iou": rule.iou,
            "agnostic_nms": rule.agnostic,
            "max_det": rule.max_det,
            "rule": rule.describe(),
            "chosen": rule.chosen,
            "objective": round(best["objective"], 4),
            "val_map50_at_conf": round(best["map50"], 4),
            "val_recall": round(best["recall"], 4),
            "grid": table_value(grid),
            "heatmap": thumbnail(st.local(*layout.tuning(task.name, "grid.png"))),
            "forward_pass_seconds": round(pass_seconds, 2),
            "grid_scoring_seconds": round(timing["score_seconds"], 2),
        },
        data_version=content_version(str(sorted(rule.as_dict().items())), info.run_id),
    )


def _choose(context, task, base: DetectionRule, grid, val_boxes: int, candidates: int):
    """(the grid's best row, the rule): val's choice, or the study's own rule where val cannot
    choose (no boxes, no candidates, a tied grid), said in the log."""
    study_train = get_profile("study").train
    best, fallback = tuning.choose_rule(
        grid, val_boxes, candidates, (study_train.conf, study_train.iou)
    )
    rule = replace(base.at(best["conf"], best["iou"]), fallback=fallback)
    if fallback:
        context.log.warning(
            f"{task.name}: val cannot choose the rule ({fallback}); the study's own rule stands "
            f"in: conf {rule.conf:g}, IoU {rule.iou:g}"
        )
    return best, rule


@dg.asset(
    group_name="reports",
    partitions_def=TASK_PARTITIONS,
    kinds={"pytorch", "mlflow"},
    owners=OWNERS,
    tags={"stage": "evaluate"},
    deps=[nms_thresholds, trained_models, yolo_datasets, nih_labels],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=on_new_data(only=["nms_thresholds"]),
    code_version=code_version(core_eval, metrics, detection),
    metadata={"dagster/column_schema": METRICS_SCHEMA},
    description="Test-split figures per task with its detection rule, logged to the model's MLflow run.",
)
def evaluation_reports(
    context: dg.AssetExecutionContext, xray: XrayResource
) -> dg.MaterializeResult:
    """Test-split figures per task with its detection rule: threshold-free AP (AP50, AP@IoU0.4,
    AP50-95) with patient-level intervals, the operating point (macro and micro), FROC under two hit
    rules, NIH subgroups and what the test split lets the gate resolve; logged to the model's run.
    The promotion itself is `champion_gate`'s."""
    task = TASKS[context.partition_key]
    st, profile = xray.storage, xray.config
    share_cores()
    tested = _test_the_model(context, xray, task)
    summary = tested.ev.summary
    power = champion.split_power(
        tested.ev.mean_ap_samples, xray.margin, profile.gate_null_rate, profile.seed
    )
    summary.update(
        gate_null_rate_at_margin=power["null_rate_at_margin"],
        gate_resolvable_margin=power["resolvable_margin"],
        gate_margin=xray.margin,
    )
    context.log.info(
        core_eval.progress_line(
            task.name, summary, tested.rule.conf, len(tested.images), len(tested.gt)
        )
    )
    files = write_evaluation(st, task, profile, tested)
    _track_evaluation(xray, task, tested, files)
    metadata = {
        "test_images": len(tested.images),
        "test_boxes": len(tested.gt),
        **core_eval.figure_metadata(
            summary, tested.rule.conf, profile.bootstrap_resamples, profile.seed
        ),
        "rule": tested.rule.describe(),
        "init": tested.info.init,
        "per_class": table_value(tested.ev.table),
        "froc": table_value(tested.ev.froc),
        "subgroups": table_value(tested.ev.subgroups),
        "by_size": table_value(tested.by_size),
        "report": dg.MetadataValue.path(str(st.root.joinpath(*layout.report(task.name)))),
        "froc_curve": thumbnail(st.local(*layout.report(task.name, "froc.png"))),
        "labels_vs_predictions": thumbnail(st.local(*layout.report(task.name, "panels.png"))),
        "dagster/row_count": len(tested.ev.table),
    }
    return dg.MaterializeResult(
        metadata=metadata, data_version=content_version(tested.ev.table, tested.info.model_version)
    )


@dataclass
class Tested:
    """One task's model run on its test split and scored (what the report files are made of)."""

    ev: core_eval.TaskEvaluation
    dets: pd.DataFrame
    gt: pd.DataFrame
    images: pd.DataFrame
    rule: DetectionRule
    info: ModelRecord
    #: AP50 per class and box size (COCO's strata at the model's input scale)
    by_size: pd.DataFrame


def _test_the_model(context, xray: XrayResource, task) -> Tested:
    """The trained model at the AP floor on every test image, scored with the tuned rule."""
    st, profile = xray.storage, xray.config
    rule, info = read_rule(st, task.name), ModelRecord.read(st, task.name)
    images, gt = test_split(st, task.name)
    st.localise(images["path"])
    dets = detection.detect_images(
        _model(st, task.name),
        images,
        rule.at(conf=AP_FLOOR),
        info.imgsz,
        task.classes,
        progress=lambda n, m: context.log.info(f"{task.name}: test image {n}/{m}"),
    )
    labels = st.read_parquet(*layout.NIH_LABELS)
    nih_ids = images.loc[images["source"] == "nih", "image_id"]
    nih_meta = labels[labels["image_id"].isin(nih_ids)][["image_id", "sex", "age", "view"]]
    context.log.info(
        f"{task.name}: patient-level bootstrap, {profile.bootstrap_resamples} resamples "
        f"(seed {profile.seed})"
    )
    ev = core_eval.evaluate_task(
        gt,
        dets,
        images,
        task.classes,
        rule,
        nih_meta,
        n_boot=profile.bootstrap_resamples,
        seed=profile.seed,
        min_boxes=profile.min_test_boxes,
    )
    scale = sizes.image_scales(images, info.imgsz)
    by_size = sizes.ap_by_size(gt, dets, task.classes, scale)
    sens = sizes.sensitivity_by_size(gt, dets, task.classes, len(images), scale)
    ev.summary.update(core_eval.size_summary(by_size, sens))
    return Tested(ev, dets, gt, images, rule, info, by_size)


#: the report files logged to the training's MLflow run beside report.html
LOGGED_REPORT_FILES = (
    "report.md",
    "pr_curves.png",
    "froc.png",
    "panels.png",
    "confusion_matrix.png",
    "metrics.parquet",
)


def write_evaluation(st, task, profile, tested: Tested) -> list:
    """Every file of a task's evaluation under `reports/<task>/` (tables, plots, the Markdown and
    HTML report, the summary record); returns the local paths logged to MLflow."""
    ev, rule, gt, dets, images = tested.ev, tested.rule, tested.gt, tested.dets, tested.images

    def report(name: str):
        return layout.report(task.name, name)

    for name, frame in (
        ("metrics", ev.table),
        ("bootstrap_ci", ev.ci),
        ("froc", ev.froc),
        ("subgroups", ev.subgroups),
        ("by_size", tested.by_size),
    ):
        st.write_parquet(frame, *report(f"{name}.parquet"))
    st.write_parquet(dets, *layout.detections(task.name))
    st.write_parquet(gt, *layout.ground_truth(task.name))
    st.write_parquet(images[["image_id", "source", "group"]], *layout.test_images(task.name))
    st.write_parquet(ev.confusion.reset_index(names="true"), *report("confusion_matrix.parquet"))
    title = f"{task.name}: test, conf > {rule.conf:g}"
    st.write_bytes(plots.confusion_heatmap(ev.confusion, title), *report("confusion_matrix.png"))
    pr_title = f"{task.name}: PR on test (IoU 0.5)"
    st.write_bytes(plots.pr_curves(ev.pr_curves, pr_title), *report("pr_curves.png"))
    froc_title = f"{task.name}: FROC on test"
    st.write_bytes(
        plots.froc_plot(ev.froc_curves, metrics.FROC_FP_RATES, froc_title), *report("froc.png")
    )
    operating = dets[dets["score"] > rule.conf]
    boxed = set(gt["image_id"])
    panels = [
        (detection.read_gray(p), gt[gt.image_id == i], operating[operating.image_id == i], i[:16])
        for i, p in zip(images["image_id"], images["path"])
        if i in boxed
    ][: profile.report_panels]
    st.write_bytes(plots.gt_vs_pred(panels, task.classes), *report("panels.png"))
    excluded = (
        st.read_parquet(*layout.dataset_excluded(task.name))
        if st.exists(*layout.dataset_excluded(task.name))
        else None
    )
    text = core_eval.report_markdown(task.name, profile.name, ev, rule, tested.info, excluded)
    st.write_text(text, *report("report.md"))
    st.write_text(markdown_to_html(text, f"Evaluation {task.name}"), *layout.report(task.name))
    info = tested.info
    EvaluationSummary(task.name, ev.summary, rule, info.model_version, info.init).write(st)
    return [st.local(*layout.report(task.name))] + [
        st.local(*report(f)) for f in LOGGED_REPORT_FILES
    ]


def _track_evaluation(xray: XrayResource, task, tested: Tested, files: list) -> None:
    """The figures and files on the training's MLflow run; the rule and the figures it was
    evaluated with tagged on its registered version (what the web app and the gate read back)."""
    profile, summary, info, rule = xray.config, tested.ev.summary, tested.info, tested.rule
    logged = core_eval.logged_figures(summary, profile.bootstrap_resamples, profile.seed)
    tracking.log_evaluation(xray.tracking_uri, info.run_id, logged, files, tags=rule.tags())
    if not info.model_version:
        return
    tracking.tag_version(
        xray.tracking_uri,
        profile.model_name(task.name),
        info.model_version,
        {
            **rule.tags(),
            "imgsz": info.imgsz,
            "classes": ",".join(task.classes),
            **core_eval.version_figures(summary, len(tested.images), len(tested.gt)),
        },
    )


def _task_result(st, task: str) -> study.TaskResult | None:
    parts = (layout.summary, layout.detections, layout.ground_truth, layout.test_images)
    if not all(st.exists(*part(task)) for part in parts):
        return None
    s = EvaluationSummary.read(st, task)
    excluded = (
        st.read_parquet(*layout.dataset_excluded(task))
        if st.exists(*layout.dataset_excluded(task))
        else None
    )
    return study.TaskResult(
        name=task,
        summary=s.figures,
        model=ModelRecord.read(st, task),
        rule=s.rule,
        gt=st.read_parquet(*layout.ground_truth(task)),
        detections=st.read_parquet(*layout.detections(task)),
        images=st.read_parquet(*layout.test_images(task)),
        excluded=excluded,
    )


@dg.asset(
    group_name="reports",
    kinds={"markdown", "html"},
    owners=OWNERS,
    tags={"stage": "report"},
    deps=[
        evaluation_reports,
        "champion_gate",
        patient_splits,
        yolo_datasets,
        vinbigdata_annotations,
        vinbigdata_boxes,
    ],
    automation_condition=on_new_data(only=["champion_gate"], allow_missing=True),
    code_version=code_version(study),
    description="All tasks side by side: the study's write-up, regenerated from data.",
)
def study_report(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """All tasks side by side: the study's write-up regenerated from data, comparisons only on the same
    test images and findings (paired bootstrap), unboxed-finding exclusions, subgroups. Runs on the
    tasks that exist and lists the missing ones."""
    st, profile = xray.storage, xray.config
    results = {t: r for t in TASK_NAMES if (r := _task_result(st, t)) is not None}
    missing = [t for t in TASK_NAMES if t not in results]
    n_boot = profile.bootstrap_resamples
    comparisons, unfair = study.fair_comparisons(
        results, n_boot=n_boot, seed=profile.seed, min_boxes=profile.min_test_boxes
    )
    subgroups = {
        t: st.read_parquet(*layout.report(t, "subgroups.parquet"))
        for t in results
        if st.exists(*layout.report(t, "subgroups.parquet"))
    }
    table = study.tasks_table(results)
    _study_plots(st, results, table, comparisons)
    gates = study.gate_table(
        {
            t: st.read_json(*layout.gate_record(t))
            for t in results
            if st.exists(*layout.gate_record(t))
        }
    )
    text = study.study_markdown(
        study.StudyReport(
            profile.name,
            results,
            missing,
            _data_section(st),
            comparisons,
            unfair,
            study.subgroup_table(results, subgroups),
            n_boot,
            list(SERVED_TASKS),
            time.strftime("%Y-%m-%d %H:%M"),
            profile.seed,
            profile.min_test_boxes,
            gates,
        )
    )
    md_path = st.write_text(text, *layout.report("study", "report.md"))
    html_path = st.write_text(markdown_to_html(text, "Study report"), *layout.report("study"))
    st.write_parquet(table, *layout.report("study", "tasks.parquet"))
    st.write_parquet(comparisons, *layout.report("study", "comparisons.parquet"))
    context.log.info(
        f"study report ({len(results)} task(s), missing: {', '.join(missing) or 'none'}): {html_path}"
    )
    metadata = {
        "report": dg.MetadataValue.path(str(html_path)),
        "markdown": dg.MetadataValue.path(str(md_path)),
        "tasks": table_value(table),
        "comparisons": table_value(comparisons.drop(columns=["reading"])),
        "missing_tasks": ", ".join(missing) or "none",
    }
    if len(comparisons):
        metadata["paired_differences"] = thumbnail(
            st.local(*layout.report("study", "comparisons.png"))
        )
    return dg.MaterializeResult(metadata=metadata, data_version=content_version(table, comparisons))


def _data_section(st) -> list[str]:
    """The study report's data section: images per source and split, VinBigData's boxes before
    and after consensus, boxes per class and split of each task's dataset (what exists of them)."""
    lines = []
    if st.exists(*layout.SPLITS):
        counts = study.split_counts(st.read_parquet(*layout.SPLITS))
        lines += [
            "Images per source and split (patient-grouped):",
            "",
            core_eval.md_table(counts),
            "",
        ]
    if st.exists(*layout.VBD_ANNOTATIONS) and st.exists(*layout.VBD_BOXES):
        cons = study.consensus_counts(
            st.read_parquet(*layout.VBD_ANNOTATIONS), st.read_parquet(*layout.VBD_BOXES)
        )
        lines += ["VinBigData boxes before and after consensus:", "", core_eval.md_table(cons), ""]
    per_task = study.boxes_per_class_and_split(
        {t: _task_tables(st, t) for t in TASK_NAMES if st.exists(*layout.dataset_images(t))}
    )
    if len(per_task):
        lines += [
            "Boxes per class and split in each task's dataset (images in brackets):",
            "",
            core_eval.md_table(per_task),
            "",
        ]
    return lines


def _study_plots(st, results: dict, table: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    """The study's plots (mAP50 per task, the paired differences) and the served tasks' panels."""
    if len(table):
        bars = plots.bar_compare(
            table.rename(columns={"map50": "test mAP50"}),
            "test mAP50",
            "threshold-free test mAP50 per task",
        )
        st.write_bytes(bars, *layout.report("study", "map50.png"))
    if len(comparisons):
        diffs = plots.paired_differences(comparisons, "paired differences on shared test images")
        st.write_bytes(diffs, *layout.report("study", "comparisons.png"))
    for t in SERVED_TASKS:
        if t in results and st.exists(*layout.report(t, "panels.png")):
            st.copy_in(
                st.local(*layout.report(t, "panels.png")),
                *layout.report("study", f"panels_{t}.png"),
            )


defs = dg.Definitions(assets=[nms_thresholds, evaluation_reports, study_report])
