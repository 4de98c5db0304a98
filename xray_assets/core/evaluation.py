"""Test evaluation per task, computed from frames (no storage, no MLflow: `defs/` does that).

Per task, from the test split's ground truth and the detections of the task's rule at the AP floor:
- threshold-free AP (AP50, AP@IoU0.4, AP50-95; COCO 101-point interpolation) with 95% patient-level
  (cluster) bootstrap intervals, or "too few test boxes (n)", and the operating point (precision,
  recall, F1 at the tuned conf), macro and micro, each named;
- FROC (sensitivity at 1/8..8 false positives per image and their mean, the CPM) under the project's
  IoU rule and LUNA16's centre rule (the CPM comparable with published ones);
- on NIH test images, mAP50 by sex, age band and view position, with counts and intervals.

The study report across tasks is `study.py`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from .detection import DetectionRule
from .metrics import (
    ABSENT_CLASS_RULE,
    AVERAGES,
    HIT_RULES,
    MIN_TEST_BOXES,
    bootstrap_intervals,
    confusion_matrix,
    evaluate,
    froc,
    match_label,
    pr_curve,
    subgroups,
    summarise,
)
from .report import md_table
from .sizes import SIZE_STRATA


class ModelFacts(Protocol):
    """What the reports say of the model they evaluate (`records.ModelRecord` has these fields;
    core reads them and never the file the record lives in)."""

    model_version: str | None
    init: str
    init_sha256: str
    trained_on_synthetic: bool


INTERPOLATION = "COCO 101-point interpolated precision, greedy matching by score, at most 100 detections per image"


@dataclass
class TaskEvaluation:
    table: pd.DataFrame  # per class: AP (threshold-free), its interval, and the operating point
    summary: dict  # means over classes with ground truth, both averages, intervals
    ci: pd.DataFrame  # bootstrap intervals (threshold-free AP50; recall at the operating point)
    froc: pd.DataFrame  # both hit rules (column hit_rule)
    froc_curves: dict
    subgroups: pd.DataFrame
    confusion: pd.DataFrame  # at the operating point
    pr_curves: dict = field(default_factory=dict)
    mean_ap_samples: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # resampled mAP50 (the gate's power)


def split(
    images: pd.DataFrame, boxes: pd.DataFrame, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, boxes) of one split of a task's dataset tables."""
    images = images[images["split"] == name].reset_index(drop=True)
    return images, boxes[boxes["image_id"].isin(images["image_id"])].reset_index(drop=True)


def patients(images: pd.DataFrame) -> dict | None:
    """image_id -> patient (the dataset's `group`: nih:<patient id>, or vbd:<image> for a VinBigData
    image, its own patient); None when the table does not say (each image is then its own)."""
    if "group" not in images:
        return None
    return dict(zip(images["image_id"], images["group"]))


def intervals_sentence(n_boot: int, who: str, seed: int) -> str:
    """How the intervals were drawn; `who`: whose patients ("the 14 test patients")."""
    return (
        f"patient-level bootstrap, {n_boot} resamples of {who} (a patient's images move together; a VinBigData "
        f"image is its own patient), seed {seed}"
    )


def evaluate_task(
    gt: pd.DataFrame,
    detections: pd.DataFrame,
    images: pd.DataFrame,
    classes,
    rule: DetectionRule,
    nih_meta: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_boxes: int = MIN_TEST_BOXES,
) -> TaskEvaluation:
    """`detections`: the task's rule applied at the AP floor to every test image (`images`, with its
    `group` column naming each image's patient). `nih_meta`: image_id, sex, age, view of the NIH
    test images (subgroups); None skips them."""
    classes = list(classes)
    ids = list(images["image_id"])
    groups = patients(images)
    table = evaluate(gt, detections, classes, conf=rule.conf)
    summary = summarise(table)
    operating = detections[detections["score"] > rule.conf]
    ci, mean_ap_samples = bootstrap_intervals(
        gt,
        detections,
        classes,
        ids,
        n_boot=n_boot,
        seed=seed,
        groups=groups,
        conf=rule.conf,
        min_boxes=min_boxes,
    )
    table = _with_intervals(table, ci, summary)
    froc_table, curves = _froc_both_rules(gt, detections, classes, ids, summary)
    if nih_meta is not None and len(nih_meta):
        meta = nih_meta[nih_meta["image_id"].isin(ids)]
        groups_table = subgroups(
            gt[gt["image_id"].isin(meta["image_id"])],
            detections[detections["image_id"].isin(meta["image_id"])],
            classes,
            meta,
            n_boot=n_boot,
            seed=seed,
            groups=groups,
            min_boxes=min_boxes,
        )
    else:
        groups_table = pd.DataFrame(columns=SUBGROUP_COLUMNS)
    n_patients = len(set((groups or {}).get(i, i) for i in ids))
    summary.update(
        test_images=len(ids),
        test_patients=n_patients,
        test_boxes=len(gt),
        resamples=n_boot,
        seed=seed,
        min_test_boxes=min_boxes,
    )
    return TaskEvaluation(
        table=table,
        summary=summary,
        ci=ci,
        froc=froc_table,
        froc_curves=curves,
        subgroups=groups_table,
        confusion=confusion_matrix(gt, operating, classes),
        pr_curves=_pr_curves(gt, detections, classes),
        mean_ap_samples=mean_ap_samples,
    )


def _with_intervals(table: pd.DataFrame, ci: pd.DataFrame, summary: dict) -> pd.DataFrame:
    """The per-class table with its AP50 intervals; the summary gets the mean AP50's and the mean
    recall's (at the operating point)."""
    ci["label"] = ci["label"].replace({"(mean recall)": "(mean recall at the operating point)"})
    cis = ci.set_index("label")
    mean, recall = cis.loc["(mean AP50)"], cis.loc["(mean recall at the operating point)"]
    summary.update(
        map50_ci_low=float(mean["ci_low"]),
        map50_ci_high=float(mean["ci_high"]),
        map50_ci_note=mean["note"],
        recall_macro_ci_low=float(recall["ci_low"]),
        recall_macro_ci_high=float(recall["ci_high"]),
    )
    renamed = ci.rename(
        columns={"ci_low": "ap50_ci_low", "ci_high": "ap50_ci_high", "note": "ci_note"}
    )
    return table.merge(
        renamed[["label", "ap50_ci_low", "ap50_ci_high", "ci_note"]], on="label", how="left"
    )


def _froc_both_rules(gt, detections, classes, ids, summary: dict):
    """(FROC table under both hit rules, curves to plot): every class under LUNA16's centre rule
    and the mean under IoU 0.5; the summary gets each rule's CPM."""
    tables, curves = [], {}
    for hit_rule, tag in (("luna16", "LUNA16"), ("iou", "IoU 0.5")):
        t, c = froc(gt, detections, classes, ids, rule=hit_rule)
        tables.append(t)
        curves.update(
            {
                f"{k} [{tag}]": v
                for k, v in c.items()
                if hit_rule == "luna16" or k == t.iloc[-1]["label"]
            }
        )
        summary[f"cpm_{hit_rule}"] = float(t.iloc[-1]["cpm"])
    return pd.concat(tables, ignore_index=True), curves


def _pr_curves(gt, detections, classes) -> dict:
    """class -> (recall, precision) at IoU 0.5, for classes with test boxes."""
    pr = {}
    for label in classes:
        s, tp, n = match_label(gt[gt.label == label], detections[detections.label == label], 0.5)
        if n:
            r, p, _ = pr_curve(s, tp, n)
            pr[label] = (r, p)
    return pr


#: a subgroup table's columns (`metrics.subgroups`'s, an empty one when the split has no NIH image)
SUBGROUP_COLUMNS = [
    "attribute",
    "group",
    "images",
    "patients",
    "boxes",
    "map50",
    "ci_low",
    "ci_high",
    "note",
]
#: the operating point's figures, both averages
OPERATING_KEYS = tuple(f"{m}_{a}" for a in AVERAGES for m in ("precision", "recall", "f1"))


def _r4(x) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def progress_line(task: str, s: dict, conf: float, n_images: int, n_boxes: int) -> str:
    """The evaluation's one log line."""
    return (
        f"{task}: test mAP50 {s['map50']:.3f} (threshold-free), operating point conf > {conf:g}: "
        f"macro P {s['precision_macro']:.3f} R {s['recall_macro']:.3f}, micro P "
        f"{s['precision_micro']:.3f} R {s['recall_micro']:.3f}; CPM {s['cpm_luna16']:.3f} "
        f"(LUNA16 rule), {s['cpm_iou']:.3f} (IoU rule) ({n_images} images, "
        f"{s['test_patients']} patients, {n_boxes} boxes)"
    )


def logged_figures(s: dict, n_boot: int, seed: int) -> dict[str, float]:
    """The summary as the model's MLflow metrics."""
    return {
        "test_map50": s["map50"],
        "test_map_iou40": s["map_iou40"],
        "test_map50_95": s["map50_95"],
        "test_cpm_luna16": s["cpm_luna16"],
        "test_cpm_iou": s["cpm_iou"],
        **{f"test_op_{k}": s[k] for k in OPERATING_KEYS},
        "test_map50_ci_low": s["map50_ci_low"],
        "test_map50_ci_high": s["map50_ci_high"],
        "test_bootstrap_resamples": n_boot,
        "test_bootstrap_seed": seed,
        "test_patients": s["test_patients"],
        **{f"test_map50_{n}": s[f"map50_{n}"] for n in SIZE_STRATA if f"map50_{n}" in s},
        **{f"test_boxes_{n}": s[f"boxes_{n}"] for n in SIZE_STRATA if f"boxes_{n}" in s},
        **{f"test_{k}": v for k, v in s.items() if k.startswith("sens1_")},
        "gate_resolvable_margin": s["gate_resolvable_margin"],
    }


def version_figures(s: dict, n_images: int, n_boxes: int) -> dict[str, str]:
    """What a registered version is tagged with besides its rule (the web app and the gate read it)."""
    return {
        "test_map50": f"{s['map50']:.6f}",
        "test_images": str(n_images),
        "test_patients": str(s["test_patients"]),
        "test_boxes": str(n_boxes),
    }


def figure_metadata(s: dict, conf: float, n_boot: int, seed: int) -> dict:
    """The summary's scalar figures as the evaluation's catalog entries."""
    return {
        "test_patients": s["test_patients"],
        "test_map50 (threshold-free)": _r4(s["map50"]),
        "test_map50_ci95": interval_text(s["map50_ci_low"], s["map50_ci_high"], s["map50_ci_note"]),
        "intervals": intervals_sentence(n_boot, f"the {s['test_patients']} test patients", seed),
        "test_map_iou40 (threshold-free)": _r4(s["map_iou40"]),
        "test_map50_95 (threshold-free)": _r4(s["map50_95"]),
        "operating_point_macro": f"conf > {conf:g}: precision {s['precision_macro']:.3f}, recall "
        f"{s['recall_macro']:.3f}, macro F1 {s['f1_macro']:.3f} (means over classes)",
        "operating_point_micro": f"conf > {conf:g}: precision {s['precision_micro']:.3f}, recall "
        f"{s['recall_micro']:.3f}, F1 {s['f1_micro']:.3f} (pooled over boxes)",
        "froc_cpm_luna16 (comparable)": _r4(s["cpm_luna16"]),
        "froc_cpm_iou": _r4(s["cpm_iou"]),
        "gate_resolvable_margin": _r4(s["gate_resolvable_margin"]),
    }


TABLE_HEADER = (
    f"  {'task':22s} {'mAP50':>6s} {'95% CI':>13s} {'AP@.4':>6s} {'mAP50-95':>8s} {'CPM':>6s} "
    f"{'CPM-IoU':>7s}   operating point: macro P / R, micro P / R at conf   init"
)


def table_row(
    task: str, s: dict, conf: float, iou: float, init: str | None, fallback: str = ""
) -> str:
    """A task's line in `make demo`'s per-task table, and a second line where val could not choose
    the rule (`fallback`: why)."""
    if not _known(s.get("map50")):
        return f"  {task:22s} n/a (the test split has no boxes of this task)"
    low = s.get("map50_ci_low")
    ci = (
        f"{low:6.3f}-{s['map50_ci_high']:.3f}"
        if _known(low)
        else f"{'too few (' + str(s['test_boxes']) + ')':>13s}"
        if "too few" in (s.get("map50_ci_note") or "")
        else f"{'n/a':>13s}"
    )
    return (
        (
            f"  {task:22s} {s['map50']:6.3f} {ci} {s['map_iou40']:6.3f} {s['map50_95']:8.3f} "
            f"{s['cpm_luna16']:6.3f} {s['cpm_iou']:7.3f}   "
            f"{s['precision_macro']:.3f} / {s['recall_macro']:.3f}, {s['precision_micro']:.3f} / "
            f"{s['recall_micro']:.3f} at conf > {conf:g} (iou {iou:g}, "
            f"{'fallback' if fallback else 'tuned'})   "
            f"{init}  [{s['test_images']} images, {s['test_patients']} patients, "
            f"{s['test_boxes']} boxes]"
        )
        + (
            f"\n  {'':22s} rule: the study's own (conf {conf:g}, IoU {iou:g}), because {fallback}"
            if fallback
            else ""
        )
        + size_line(s)
    )


def size_line(s: dict) -> str:
    """The task's figures by box size, a second line of the table ("small: AP50 x, n boxes")."""
    if "boxes_small" not in s:
        return ""
    parts = []
    for name in SIZE_STRATA:
        n = int(s[f"boxes_{name}"])
        ap = s.get(f"map50_{name}")
        parts.append(
            f"{name}: AP50 {ap:.3f}, {n} boxes" if n and _known(ap) else f"{name}: {n} boxes"
        )
    return f"\n  {'':22s} by size at the model's input: " + "; ".join(parts)


def size_summary(by_size: pd.DataFrame, sensitivity: pd.DataFrame) -> dict:
    """The mean AP50, the box count and the FROC sensitivity at 1 false positive per image (both
    hit rules) of each size stratum, as summary keys."""
    means = by_size[by_size["label"] == "(mean)"].set_index("stratum")
    sens = sensitivity.set_index(["hit_rule", "stratum"])["sensitivity"]
    out = {}
    for name in SIZE_STRATA:
        out[f"map50_{name}"] = float(means.at[name, "ap50"])
        out[f"boxes_{name}"] = int(means.at[name, "boxes"])
        for rule in sensitivity["hit_rule"].unique():
            out[f"sens1_{rule}_{name}"] = float(sens[(rule, name)])
    return out


def _known(x) -> bool:
    """A figure that is there: neither None nor NaN."""
    return x is not None and not math.isnan(x)


def interval_text(low: float, high: float, note: str = "") -> str:
    """ "0.512-0.733", or the note ("too few test boxes (n)") where no interval is given."""
    if _known(low) and _known(high):
        return f"{low:.3f}-{high:.3f}" + (f" ({note})" if note.startswith("every resample") else "")
    return note or "n/a"


def interval_clause(low: float, high: float, note: str = "") -> str:
    """ "95% interval 0.512-0.733", or "no interval: too few test boxes (n)"."""
    text = interval_text(low, high, note)
    return f"95% interval {text}" if _known(low) and _known(high) else f"no interval: {text}"


def power_markdown(summary: dict) -> list[str]:
    """What the champion gate can resolve on this test split, before any second model exists."""
    rate, resolvable = (
        summary.get("gate_null_rate_at_margin"),
        summary.get("gate_resolvable_margin"),
    )
    if rate is None or math.isnan(rate):
        return []
    return [
        "## What this test split lets the champion gate resolve",
        "",
        f"Against an equally good, independent model, the paired difference would fall below the margin "
        f"-{summary.get('gate_margin', 0):g} {rate:.0%} of the time (the old point-estimate rule would keep such a "
        f"model out that often); the smallest margin this split resolves at the gate's stated rate is "
        f"{max(0.0, resolvable):.3f} mAP50. A challenger correlated with the champion narrows both; "
        "`champion_gate` records the figure for the actual pair.",
        "",
    ]


def gate_markdown(task: str, gate: dict) -> str:
    """The champion gate's page: its decision, the rule and the stated rate, the figures behind it."""
    lines = [
        f"# Champion gate: {task}",
        "",
        f"Decision for version {gate.get('version')}: **{gate['decision']}**. "
        f"{gate.get('reason', '')}.",
        "",
    ]
    if "rule" in gate:
        lines += [
            f"Rule: {gate['rule']} (stated rate {gate['stated_null_rate']:.0%}, margin {gate['margin']:g}).",
            "",
        ]
    if gate.get("compared_with") and "new_map50" in gate:
        lines += [
            f"Against champion v{gate['compared_with']}: new {gate['new_map50']:.3f}, champion "
            f"{gate['champion_map50']:.3f} (re-scored on these images), difference {gate['diff']:+.4f} ("
            f"{interval_clause(gate['diff_ci_low'], gate['diff_ci_high'])}) on {gate['test_boxes']} test "
            f"boxes; null rate on this split {gate['null_rate']:.0%}; between two equally good models this "
            f"decision would come {gate['null_probability_of_decision']:.0%} of the time"
            + (f" (one-sided p {gate['p_value']:.3f})." if _known(gate["p_value"]) else "."),
            "",
        ]
    return "\n".join(lines)


def report_markdown(
    task: str,
    profile: str,
    ev: TaskEvaluation,
    rule: DetectionRule,
    model: ModelFacts,
    excluded: pd.DataFrame | None = None,
) -> str:
    """The per-task evaluation report. `model`: the trained model's record (init, version...)."""
    s = ev.summary
    lines = [
        *_report_header(task, profile, s, rule, model),
        *_ap_section(s, rule),
        *_operating_section(ev, s, rule),
        *_froc_section(ev, s),
        *_size_section(s),
    ]
    if len(ev.subgroups):
        lines += [
            "## Subgroups (NIH test images)",
            "",
            "mAP50 (threshold-free) by sex, age band and view position, with patient-level bootstrap 95% "
            'intervals over the group\'s patients, or "too few test boxes (n)".',
            "",
            md_table(ev.subgroups),
            "",
        ]
    if excluded is not None and len(excluded):
        lines += _excluded_section(excluded)
    lines += power_markdown(s)
    lines += [
        "## Curves and examples",
        "",
        "![PR curves](pr_curves.png)",
        "",
        "![Confusion matrix at the operating point](confusion_matrix.png)",
        "",
        "![Labels | Predictions at the operating point](panels.png)",
        "",
    ]
    return "\n".join(lines)


def _report_header(task: str, profile: str, s: dict, rule: DetectionRule, model: ModelFacts):
    chosen = (
        f"rule (**not tuned: val could not choose it, so the study's own rule stands in**; served "
        f"as is): {rule.describe()}."
        if rule.fallback
        else f"rule (tuned on val, served as is): {rule.describe()}."
    )
    return [
        f"# Evaluation: {task}",
        "",
        f"Profile `{profile}`; model version {model.model_version} (init `{model.init}`"
        + (f", sha256 {model.init_sha256[:12]}" if model.init_sha256 else "")
        + ")"
        + ("; trained on the synthetic sample data" if model.trained_on_synthetic else "")
        + ".",
        f"Test split: {s['test_images']} images of {s['test_patients']} patients, {s['test_boxes']} boxes. Detection "
        + chosen,
        "",
    ]


def _ap_section(s: dict, rule: DetectionRule) -> list[str]:
    ap_ci = interval_clause(s["map50_ci_low"], s["map50_ci_high"], s.get("map50_ci_note", ""))
    who = f"the {s['test_patients']} test patients"
    return [
        "## Threshold-free AP",
        "",
        f"Over every detection above 0.001 after NMS at IoU {rule.iou:g} ({INTERPOLATION}):",
        f"- mAP50 **{s['map50']:.3f}** ({ap_ci})",
        f"- mAP@IoU0.4 {s['map_iou40']:.3f} (VinBigData's metric: AP at IoU 0.4)",
        f"- mAP50-95 {s['map50_95']:.3f}",
        "",
        f"Intervals: {intervals_sentence(s.get('resamples'), who, s.get('seed', 0))}. The mean is over the fixed "
        f"set of classes with test boxes; {ABSENT_CLASS_RULE}. A class with fewer than {s.get('min_test_boxes')} "
        'test boxes gets no interval ("too few test boxes (n)").',
        "",
    ]


def _operating_section(ev: TaskEvaluation, s: dict, rule: DetectionRule) -> list[str]:
    recall_ci = interval_clause(
        s["recall_macro_ci_low"], s["recall_macro_ci_high"], s.get("map50_ci_note", "")
    )
    return [
        "## Operating point",
        "",
        f"Detections with score > {rule.conf:g} (what the web app shows), IoU 0.5. Macro F1 is the mean of "
        'the per-class F1 (scikit-learn\'s `average="macro"`); micro F1 is computed from the pooled '
        "precision and recall.",
        "",
        f"- {AVERAGES['macro']}: precision {s['precision_macro']:.3f}, recall {s['recall_macro']:.3f} ("
        f"{recall_ci}), F1 {s['f1_macro']:.3f}",
        f"- {AVERAGES['micro']}: precision {s['precision_micro']:.3f}, recall {s['recall_micro']:.3f}, "
        f"F1 {s['f1_micro']:.3f}",
        "",
        md_table(ev.table),
        "",
    ]


def _froc_section(ev: TaskEvaluation, s: dict) -> list[str]:
    froc_rules = "; ".join(f"`{k}`: {v}" for k, v in HIT_RULES.items())
    return [
        "## FROC",
        "",
        f"Sensitivity at 1/8 to 8 false positives per image (all {s['test_images']} test images) and their mean, "
        f"the CPM, under two hit rules ({froc_rules}).",
        "",
        f"- CPM, LUNA16's rule (comparable with published CPMs): **{s['cpm_luna16']:.3f}** (all findings)",
        f"- CPM, the project's IoU rule: {s['cpm_iou']:.3f}",
        "",
        md_table(ev.froc),
        "",
        "![FROC](froc.png)",
        "",
    ]


def _size_section(s: dict) -> list[str]:
    if "boxes_small" not in s:
        return []
    rows = pd.DataFrame(
        [
            {
                "size": name,
                "test boxes": s[f"boxes_{name}"],
                "mAP50": s[f"map50_{name}"],
                "sensitivity at 1 FP/image (LUNA16)": s.get(f"sens1_luna16_{name}"),
                "sensitivity at 1 FP/image (IoU)": s.get(f"sens1_iou_{name}"),
            }
            for name in SIZE_STRATA
        ]
    )
    return [
        "## By box size",
        "",
        "Threshold-free mAP50 over the classes with boxes of each size, COCO's strata (small under 32², "
        "medium to 96², large above, in pixels² at the model's input scale) and COCOeval's rules: "
        "boxes of another size are neither misses nor hits. Per class in `by_size.parquet`. FROC "
        "sensitivity at 1 false positive per image: the share of the stratum's boxes found at the "
        "FROC's own threshold (false positives of every size count), under both hit rules.",
        "",
        md_table(rows),
        "",
    ]


def _excluded_section(excluded: pd.DataFrame) -> list[str]:
    counts = (
        excluded.groupby(["finding", "split"])
        .size()
        .unstack("split")
        .fillna(0)
        .astype(int)
        .reset_index()
    )
    return [
        "## Left out: unboxed findings",
        "",
        "NIH images whose Data_Entry lists a finding of this task with no box for it, left out of "
        "the test split (a correct detection there has no box to match; out of train and val too "
        "only where the profile sets `exclude_unboxed_findings`), by finding and split:",
        "",
        md_table(counts),
        "",
    ]


# -- the study report: comparisons on the same images ----------------------------------------------
