"""Test evaluation and the study report, computed from frames (no storage, no MLflow: `defs/` does that).

Per task, from the test split's ground truth and the detections of the task's rule at the AP floor:
- threshold-free AP (AP50, AP@IoU0.4, AP50-95; COCO 101-point interpolation) with 95% patient-level
  (cluster) bootstrap intervals, or "too few test boxes (n)", and the operating point (precision,
  recall, F1 at the tuned conf), macro and micro, each named;
- FROC (sensitivity at 1/8..8 false positives per image and their mean, the CPM) under the project's
  IoU rule and LUNA16's centre rule (the CPM comparable with published ones);
- on NIH test images, mAP50 by sex, age band and view position, with counts and intervals.

Across tasks, the study report compares figures only where they are measured on the same test images
and the same finding, with a paired patient-level bootstrap interval of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    enough_boxes,
    evaluate,
    froc,
    match_label,
    paired_bootstrap,
    pr_curve,
    subgroups,
    summarise,
    too_few,
)
from .report import md_table

if TYPE_CHECKING:  # the record's module reads and writes files; core only reads its fields
    from ..records import ModelRecord

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
    table = table.merge(
        ci.rename(columns={"ci_low": "ap50_ci_low", "ci_high": "ap50_ci_high", "note": "ci_note"})[
            ["label", "ap50_ci_low", "ap50_ci_high", "ci_note"]
        ],
        on="label",
        how="left",
    )
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
    froc_table = pd.concat(tables, ignore_index=True)
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
        groups_table = pd.DataFrame(
            columns=[
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
        )
    pr = {}
    for label in classes:
        s, tp, n = match_label(gt[gt.label == label], detections[detections.label == label], 0.5)
        if n:
            r, p, _ = pr_curve(s, tp, n)
            pr[label] = (r, p)
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
        pr_curves=pr,
        mean_ap_samples=mean_ap_samples,
    )


#: the operating point's figures, both averages
OPERATING_KEYS = tuple(f"{m}_{a}" for a in AVERAGES for m in ("precision", "recall", "f1"))


def _r4(x) -> float | None:
    return None if x is None or x != x else round(float(x), 4)


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
        f"{s['recall_macro']:.3f}, F1 {s['f1_macro']:.3f} (mean over classes)",
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


def table_row(task: str, s: dict, conf: float, iou: float, init: str | None) -> str:
    """A task's line in `make demo`'s per-task table."""
    if s.get("map50") is None or s["map50"] != s["map50"]:
        return f"  {task:22s} n/a (the test split has no boxes of this task)"
    low = s.get("map50_ci_low")
    ci = (
        f"{low:6.3f}-{s['map50_ci_high']:.3f}"
        if low is not None and low == low
        else f"{'too few (' + str(s['test_boxes']) + ')':>13s}"
        if "too few" in (s.get("map50_ci_note") or "")
        else f"{'n/a':>13s}"
    )
    return (
        f"  {task:22s} {s['map50']:6.3f} {ci} {s['map_iou40']:6.3f} {s['map50_95']:8.3f} "
        f"{s['cpm_luna16']:6.3f} {s['cpm_iou']:7.3f}   "
        f"{s['precision_macro']:.3f} / {s['recall_macro']:.3f}, {s['precision_micro']:.3f} / "
        f"{s['recall_micro']:.3f} at conf > {conf:g} (iou {iou:g})   "
        f"{init}  [{s['test_images']} images, {s['test_patients']} patients, "
        f"{s['test_boxes']} boxes]"
    )


def interval_text(low: float, high: float, note: str = "") -> str:
    """ "0.512-0.733", or the note ("too few test boxes (n)") where no interval is given."""
    if low == low and high == high:
        return f"{low:.3f}-{high:.3f}" + (f" ({note})" if note.startswith("every resample") else "")
    return note or "n/a"


def interval_clause(low: float, high: float, note: str = "") -> str:
    """ "95% interval 0.512-0.733", or "no interval: too few test boxes (n)"."""
    text = interval_text(low, high, note)
    return f"95% interval {text}" if low == low and high == high else f"no interval: {text}"


def power_markdown(summary: dict) -> list[str]:
    """What the champion gate can resolve on this test split, before any second model exists."""
    rate, resolvable = (
        summary.get("gate_null_rate_at_margin"),
        summary.get("gate_resolvable_margin"),
    )
    if rate is None or rate != rate:
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
            + (
                f" (one-sided p {gate['p_value']:.3f})."
                if gate["p_value"] == gate["p_value"]
                else "."
            ),
            "",
        ]
    return "\n".join(lines)


def report_markdown(
    task: str,
    profile: str,
    ev: TaskEvaluation,
    rule: DetectionRule,
    model: ModelRecord,
    excluded: pd.DataFrame | None = None,
    n_boot: int | None = None,
) -> str:
    """The per-task evaluation report. `model`: the trained model's record (init, version...)."""
    s = ev.summary
    n_boot = s.get("resamples", n_boot)
    init = model.init
    ap_ci = interval_clause(s["map50_ci_low"], s["map50_ci_high"], s.get("map50_ci_note", ""))
    who = f"the {s['test_patients']} test patients"
    froc_rules = "; ".join(f"`{k}`: {v}" for k, v in HIT_RULES.items())
    lines = [
        f"# Evaluation: {task}",
        "",
        f"Profile `{profile}`; model version {model.model_version} (init `{init}`"
        + (f", sha256 {model.init_sha256[:12]}" if model.init_sha256 else "")
        + ")"
        + ("; trained on the synthetic sample data" if model.trained_on_synthetic else "")
        + ".",
        f"Test split: {s['test_images']} images of {s['test_patients']} patients, {s['test_boxes']} boxes. Detection "
        f"rule (tuned on val, served as is): {rule.describe()}.",
        "",
        "## Threshold-free AP",
        "",
        f"Over every detection above 0.001 after NMS at IoU {rule.iou:g} ({INTERPOLATION}):",
        f"- mAP50 **{s['map50']:.3f}** ({ap_ci})",
        f"- mAP@IoU0.4 {s['map_iou40']:.3f} (VinBigData's metric: AP at IoU 0.4)",
        f"- mAP50-95 {s['map50_95']:.3f}",
        "",
        f"Intervals: {intervals_sentence(n_boot, who, s.get('seed', 0))}. The mean is over the fixed "
        f"set of classes with test boxes; {ABSENT_CLASS_RULE}. A class with fewer than {s.get('min_test_boxes')} "
        'test boxes gets no interval ("too few test boxes (n)").',
        "",
        "## Operating point",
        "",
        f"Detections with score > {rule.conf:g} (what the web app shows), IoU 0.5. Each F1 is computed from the "
        "precision and recall beside it.",
        "",
        f"- {AVERAGES['macro']}: precision {s['precision_macro']:.3f}, recall {s['recall_macro']:.3f} ("
        f"{interval_clause(s['recall_macro_ci_low'], s['recall_macro_ci_high'], s.get('map50_ci_note', ''))}), "
        f"F1 {s['f1_macro']:.3f}",
        f"- {AVERAGES['micro']}: precision {s['precision_micro']:.3f}, recall {s['recall_micro']:.3f}, "
        f"F1 {s['f1_micro']:.3f}",
        "",
        md_table(ev.table),
        "",
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
        counts = (
            excluded.groupby(["finding", "split"])
            .size()
            .unstack("split")
            .fillna(0)
            .astype(int)
            .reset_index()
        )
        lines += [
            "## Left out: unboxed findings",
            "",
            "NIH images whose Data_Entry lists a finding of this task with no box for it (they would be "
            "negatives for a visible finding), by finding and split:",
            "",
            md_table(counts),
            "",
        ]
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


# -- the study report: comparisons on the same images ----------------------------------------------
@dataclass
class TaskResult:
    """What the study report needs of one evaluated task."""

    name: str
    summary: dict
    model: ModelRecord
    rule: DetectionRule
    gt: pd.DataFrame  # test boxes (task labels)
    detections: pd.DataFrame  # the rule at the AP floor on every test image
    images: pd.DataFrame  # test images: image_id, source
    excluded: pd.DataFrame | None = None


#: (a, b, finding in a, finding in b, what the comparison asks)
ONE_CLASS_VS_MULTI = [
    ("united_cardiomegaly", "united_multi", "Cardiomegaly"),
    ("united_mass_nodule", "united_multi", "Mass/Nodule"),
]
#: NIH findings that are the same class in nih_multi and united_multi (Mass and Nodule are not: united merges them)
SHARED_NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Pneumonia",
    "Pneumothorax",
)


def _paired_row(
    what: str,
    a: TaskResult,
    b: TaskResult,
    gt: pd.DataFrame,
    pa: pd.DataFrame,
    pb: pd.DataFrame,
    labels,
    ids,
    n_boot: int,
    seed: int,
    min_boxes: int = MIN_TEST_BOXES,
) -> dict:
    groups = {**(patients(a.images) or {}), **(patients(b.images) or {})} or None
    r = paired_bootstrap(gt, pa, pb, labels, ids, n_boot=n_boot, seed=seed, groups=groups)
    low, high = r["ci_low"], r["ci_high"]
    if r["a"] != r["a"]:
        verdict = "no test boxes of it on the shared images"
    elif not enough_boxes(r["boxes"], r["classes"], min_boxes):
        verdict = f"cannot tell: {too_few(r['boxes'], r['classes'], min_boxes)}"
        low, high = float("nan"), float("nan")
    elif low > 0 or high < 0:
        verdict = "the 95% interval of the difference excludes 0"
    else:
        verdict = "the 95% interval of the difference includes 0: this test set does not show a difference"
    return {
        "comparison": what,
        "a": a.name,
        "b": b.name,
        "findings": ", ".join(labels),
        "images": r["images"],
        "patients": r["patients"],
        "boxes": r["boxes"],
        "ap50_a": r["a"],
        "ap50_b": r["b"],
        "diff": r["diff"],
        "ci_low": low,
        "ci_high": high,
        "reading": verdict,
    }


def fair_comparisons(
    results: dict[str, TaskResult],
    n_boot: int = 1000,
    seed: int = 0,
    min_boxes: int = MIN_TEST_BOXES,
) -> tuple[pd.DataFrame, list[str]]:
    """Paired comparisons on the same test images and findings; and the comparisons that cannot be
    made fairly, said plainly. AP50 here is threshold-free, on the shared images only."""
    rows, unfair = [], []
    for one, multi, finding in ONE_CLASS_VS_MULTI:
        if one in results and multi in results:
            a, b = results[one], results[multi]
            ids = sorted(set(a.images["image_id"]) & set(b.images["image_id"]))
            gt = a.gt[a.gt["image_id"].isin(ids)]
            pb = b.detections[
                (b.detections["label"] == finding) & b.detections["image_id"].isin(ids)
            ]
            rows.append(
                _paired_row(
                    f"one-class {finding} model vs the same class inside the multi-class model",
                    a,
                    b,
                    gt,
                    a.detections[a.detections["image_id"].isin(ids)],
                    pb,
                    [finding],
                    ids,
                    n_boot,
                    seed,
                    min_boxes,
                )
            )
    for united, nih, labels in (
        ("united_multi", "nih_multi", SHARED_NIH_FINDINGS),
        ("united_binary", "nih_binary", ("abnormality",)),
    ):
        if united in results and nih in results:
            a, b = results[united], results[nih]
            nih_a = a.images.loc[a.images["source"] == "nih", "image_id"]
            ids = sorted(set(nih_a) & set(b.images["image_id"]))
            gt = b.gt[b.gt["image_id"].isin(ids) & b.gt["label"].isin(labels)]
            present = [x for x in labels if (gt["label"] == x).any()]
            pa = a.detections[
                a.detections["image_id"].isin(ids) & a.detections["label"].isin(present)
            ]
            pb = b.detections[
                b.detections["image_id"].isin(ids) & b.detections["label"].isin(present)
            ]
            rows.append(
                _paired_row(
                    "adding VinBigData, on the NIH test images both models saw (findings named alike)",
                    a,
                    b,
                    gt,
                    pa,
                    pb,
                    present,
                    ids,
                    n_boot,
                    seed,
                    min_boxes,
                )
            )
    unfair += [
        "nih_* against united_* as whole-task figures: different test images (united adds VinBigData's) and, for the "
        "multi-class tasks, different classes (Mass and Nodule vs Mass/Nodule); only the NIH images and the findings "
        "named alike are compared above.",
        "binary against multi-class models: 'abnormality' is not a finding of the multi-class models, so their AP "
        "measures different things; no paired comparison exists.",
    ]
    cols = [
        "comparison",
        "a",
        "b",
        "findings",
        "images",
        "patients",
        "boxes",
        "ap50_a",
        "ap50_b",
        "diff",
        "ci_low",
        "ci_high",
        "reading",
    ]
    return pd.DataFrame(rows, columns=cols), unfair


def tasks_table(results: dict[str, TaskResult]) -> pd.DataFrame:
    rows = []
    for name, r in results.items():
        s = r.summary
        rows.append(
            {
                "task": name,
                "test_images": s.get("test_images"),
                "test_patients": s.get("test_patients"),
                "test_boxes": s.get("test_boxes"),
                "map50": s.get("map50"),
                "map50_ci_low": s.get("map50_ci_low"),
                "map50_ci_high": s.get("map50_ci_high"),
                "map_iou40": s.get("map_iou40"),
                "map50_95": s.get("map50_95"),
                "cpm_luna16": s.get("cpm_luna16"),
                "cpm_iou": s.get("cpm_iou"),
                "op_conf": r.rule.conf,
                "op_iou": r.rule.iou,
                **{
                    f"op_{k}": s.get(k)
                    for k in (
                        "precision_macro",
                        "recall_macro",
                        "f1_macro",
                        "precision_micro",
                        "recall_micro",
                        "f1_micro",
                    )
                },
                "version": r.model.model_version,
                "init": r.model.init,
                "excluded_images": 0
                if r.excluded is None
                else int(r.excluded["image_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def gate_table(gates: dict[str, dict]) -> pd.DataFrame:
    """One line per task from its `champion.json`."""
    rows = [
        {
            "task": t,
            "version": g.get("version"),
            "decision": g.get("decision"),
            "compared_with": g.get("compared_with"),
            "diff": g.get("diff"),
            "interval": interval_text(
                *(
                    float("nan") if g.get(k) is None else g[k]
                    for k in ("diff_ci_low", "diff_ci_high")
                )
            )
            if g.get("compared_with")
            else "",
            "null_rate": g.get("null_rate"),
            "held_by": ", ".join(g.get("held_by", [])) or "none",
        }
        for t, g in gates.items()
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "version",
            "decision",
            "compared_with",
            "diff",
            "interval",
            "null_rate",
            "held_by",
        ],
    )


def excluded_counts(results: dict[str, TaskResult]) -> pd.DataFrame:
    """Images left out of each task for an unboxed finding, by finding (an image may count twice)."""
    rows = []
    for name, r in results.items():
        if r.excluded is None or r.excluded.empty:
            continue
        for finding, g in r.excluded.groupby("finding"):
            rows.append(
                {
                    "task": name,
                    "finding": finding,
                    "images": int(g["image_id"].nunique()),
                    **{sp: int((g["split"] == sp).sum()) for sp in ("train", "val", "test")},
                }
            )
    return pd.DataFrame(rows, columns=["task", "finding", "images", "train", "val", "test"])


def subgroup_table(
    results: dict[str, TaskResult], per_task: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    parts = [df.assign(task=name) for name, df in per_task.items() if name in results and len(df)]
    cols = [
        "task",
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
    return pd.concat(parts, ignore_index=True).reindex(columns=cols) if parts else pd.DataFrame()


def study_markdown(
    profile: str,
    results: dict[str, TaskResult],
    missing: list[str],
    data_sections: list[str],
    comparisons: pd.DataFrame,
    unfair: list[str],
    subgroup_rows: pd.DataFrame,
    n_boot: int,
    served: list[str],
    when: str,
    seed: int = 0,
    min_boxes: int = MIN_TEST_BOXES,
    gates: pd.DataFrame | None = None,
) -> str:
    table = tasks_table(results)
    md = [
        f"# Chest X-ray abnormality detection: study report ({profile} profile)",
        "",
        f"Regenerated {when} from this materialisation's data.",
        "",
    ]
    if any(r.model.trained_on_synthetic for r in results.values()):
        md += [
            "> These models learned from the synthetic sample data: the figures show the pipeline works, not how "
            "a model reads real radiographs.",
            "",
        ]
    md += ["## Data", "", *data_sections]
    ex = excluded_counts(results)
    if not ex.empty:
        md += [
            "NIH images left out per task because Data_Entry lists a finding of the task without a box "
            "(they would teach the model that a visible finding is nothing):",
            "",
            md_table(ex),
            "",
        ]
    md += [
        "## Results on the test split",
        "",
        "`map50`, `map_iou40` (AP at IoU 0.4, VinBigData's metric), `map50_95`: threshold-free, over every detection "
        f"above 0.001 after NMS ({INTERPOLATION}); 95% intervals from a {intervals_sentence(n_boot, 'the test patients', seed)} "
        "(no interval below the minimum count of test boxes). `cpm_luna16`: mean FROC sensitivity at 1/8-8 false "
        "positives per image under LUNA16's centre rule (comparable with published CPMs); `cpm_iou`: the same "
        "under the project's stricter IoU 0.5 rule. `op_*`: the operating point, detections above the tuned conf, "
        f"as served; {AVERAGES['macro']}; {AVERAGES['micro']}. `init`: the starting weights.",
        "",
    ]
    if not table.empty:
        md += [md_table(table), "", "![test mAP50 per task](map50.png)", ""]
    md += [
        "## Comparisons on the same images",
        "",
        f"Each line compares two models on the test images both were evaluated on and the findings both name "
        f"alike: the difference a - b of threshold-free AP50 (mean over those findings) with a paired 95% interval "
        f"({intervals_sentence(n_boot, 'the patients of the shared images', seed)}, both models scored on each). Below "
        f"{min_boxes} test "
        'boxes a comparison reads "cannot tell".',
        "",
    ]
    md += (
        [md_table(comparisons), "", "![paired differences](comparisons.png)", ""]
        if len(comparisons)
        else ["No pair of tasks evaluated yet.", ""]
    )
    md += ["No fair comparison exists for:", "", *[f"- {u}" for u in unfair], ""]
    if len(subgroup_rows):
        md += [
            "## Subgroups (NIH test images)",
            "",
            "Threshold-free mAP50 by sex, age band (<40, 40-60, >60) and view position, with patient-level 95% "
            'intervals or "too few test boxes (n)"; a gap between groups whose intervals barely overlap deserves a look on real data.',
            "",
            md_table(subgroup_rows),
            "",
        ]
    if gates is not None and len(gates):
        md += [
            "## Champion gate",
            "",
            "Per task, the latest gate decision (`champion_gate`): the new version against the champion re-scored "
            "on the same test images, with the paired difference, its patient-level interval, the null rate of "
            "the rule on that split and any blocking check that held the promotion.",
            "",
            md_table(gates),
            "",
        ]
    md += [
        "## The served panel",
        "",
        "The study's demo shows "
        + ", ".join(served)
        + " side by side, each with its own detection rule (tuned "
        "conf and IoU; united_multi class-agnostic). Labels | predictions on test images:",
        "",
    ]
    for t in served:
        if t in results:
            md += [f"### {t}", "", f"![{t}](panels_{t}.png)", ""]
    if missing:
        md += [f"Not evaluated yet (left out above): {', '.join(missing)}.", ""]
    return "\n".join(md)


def split_counts(splits: pd.DataFrame) -> pd.DataFrame:
    return (
        splits.groupby(["source", "kind", "split"])
        .size()
        .unstack("split")
        .fillna(0)
        .astype(int)
        .reset_index()
    )


def consensus_counts(annotations: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    from .consensus import to_united

    before = to_united(annotations)["united"].value_counts()
    after = boxes["united"].value_counts()
    return (
        pd.DataFrame({"all_readers": before, "consensus": after})
        .fillna(0)
        .astype(int)
        .rename_axis("class")
        .reset_index()
    )


def boxes_per_class_and_split(
    datasets: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
) -> pd.DataFrame:
    """Per task and class: boxes (images) per split, and the images without boxes of the task."""
    rows = []
    for t, (images, boxes) in datasets.items():
        boxes = boxes.merge(images[["image_id", "split"]], on="image_id")
        n_img = boxes.groupby(["label", "split"])["image_id"].nunique()
        n_box = boxes.groupby(["label", "split"]).size()
        for label in sorted(boxes["label"].unique()):
            row = {"task": t, "class": label}
            for sp in ("train", "val", "test"):
                row[sp] = f"{n_box.get((label, sp), 0)} ({n_img.get((label, sp), 0)})"
            rows.append(row)
        rows.append(
            {
                "task": t,
                "class": "(images without its findings)",
                **{
                    sp: str(
                        int(
                            (
                                (images["split"] == sp)
                                & ~images["image_id"].isin(boxes["image_id"])
                            ).sum()
                        )
                    )
                    for sp in ("train", "val", "test")
                },
            }
        )
    return pd.DataFrame(rows)
