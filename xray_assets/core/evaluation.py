"""Test evaluation and the study report, computed from frames (no storage, no MLflow: `defs/` does that).

Per task, from the test split's ground truth and the detections of the task's rule at the AP floor:
- threshold-free AP (AP50, AP@IoU0.4, AP50-95; COCO 101-point interpolation) with 95% bootstrap
  intervals over test images, and the operating point (precision, recall, F1 at the tuned conf);
- FROC (sensitivity at 1/8..8 false positives per image and their mean, the CPM);
- on NIH test images, mAP50 by sex, age band and view position, with counts and intervals.

Across tasks, the study report compares figures only where they are measured on the same test images
and the same finding, with a paired bootstrap interval of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .detection import DetectionRule
from .metrics import (bootstrap_ci, confusion_matrix, evaluate, froc, match_label, paired_bootstrap, pr_curve,
                      subgroups, summarise)
from .report import md_table

INTERPOLATION = "COCO 101-point interpolated precision, greedy matching by score, at most 100 detections per image"


@dataclass
class TaskEvaluation:
    table: pd.DataFrame                 # per class: AP (threshold-free) and the operating point
    summary: dict                       # means over classes with ground truth, plus intervals
    ci: pd.DataFrame                    # bootstrap intervals (threshold-free AP50; recall at the operating point)
    froc: pd.DataFrame
    froc_curves: dict
    subgroups: pd.DataFrame
    confusion: pd.DataFrame             # at the operating point
    pr_curves: dict = field(default_factory=dict)


def split(images: pd.DataFrame, boxes: pd.DataFrame, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, boxes) of one split of a task's dataset tables."""
    images = images[images["split"] == name].reset_index(drop=True)
    return images, boxes[boxes["image_id"].isin(images["image_id"])].reset_index(drop=True)


def evaluate_task(gt: pd.DataFrame, detections: pd.DataFrame, images: pd.DataFrame, classes, rule: DetectionRule,
                  nih_meta: pd.DataFrame | None = None, n_boot: int = 200, seed: int = 0) -> TaskEvaluation:
    """`detections`: the task's rule applied at the AP floor to every test image (`images`).
    `nih_meta`: image_id, sex, age, view of the NIH test images (subgroups); None skips them."""
    classes = list(classes)
    ids = list(images["image_id"])
    table = evaluate(gt, detections, classes, conf=rule.conf)
    summary = summarise(table)
    operating = detections[detections["score"] > rule.conf]
    ci_ap = bootstrap_ci(gt, detections, classes, ids, n_boot=n_boot, seed=seed)
    ci_op = bootstrap_ci(gt, operating, classes, ids, n_boot=n_boot, seed=seed)
    ci = pd.concat([ci_ap[ci_ap["label"] != "(mean recall)"],
                    ci_op[ci_op["label"] == "(mean recall)"].assign(label="(mean recall at the operating point)")],
                   ignore_index=True)
    cis = ci.set_index("label")
    summary.update(map50_ci_low=float(cis.loc["(mean AP50)", "ci_low"]), map50_ci_high=float(cis.loc["(mean AP50)", "ci_high"]),
                   recall_ci_low=float(cis.loc["(mean recall at the operating point)", "ci_low"]),
                   recall_ci_high=float(cis.loc["(mean recall at the operating point)", "ci_high"]))
    table = table.merge(ci_ap.rename(columns={"ci_low": "ap50_ci_low", "ci_high": "ap50_ci_high"})
                        [["label", "ap50_ci_low", "ap50_ci_high"]], on="label", how="left")
    froc_table, curves = froc(gt, detections, classes, ids)
    pooled = froc_table.iloc[-1]
    summary["cpm"] = float(pooled["cpm"])
    if nih_meta is not None and len(nih_meta):
        meta = nih_meta[nih_meta["image_id"].isin(ids)]
        groups = subgroups(gt[gt["image_id"].isin(meta["image_id"])],
                           detections[detections["image_id"].isin(meta["image_id"])], classes, meta,
                           n_boot=n_boot, seed=seed)
    else:
        groups = pd.DataFrame(columns=["attribute", "group", "images", "boxes", "map50", "ci_low", "ci_high"])
    pr = {}
    for label in classes:
        s, tp, n = match_label(gt[gt.label == label], detections[detections.label == label], 0.5)
        if n:
            r, p, _ = pr_curve(s, tp, n)
            pr[label] = (r, p)
    summary.update(test_images=len(ids), test_boxes=len(gt))
    return TaskEvaluation(table=table, summary=summary, ci=ci, froc=froc_table, froc_curves=curves,
                          subgroups=groups, confusion=confusion_matrix(gt, operating, classes), pr_curves=pr)


def report_markdown(task: str, profile: str, ev: TaskEvaluation, rule: DetectionRule, model: dict,
                    excluded: pd.DataFrame | None = None, n_boot: int = 200) -> str:
    """The per-task evaluation report. `model`: model.json (init, version...)."""
    s = ev.summary
    init = model.get("init", "unknown")
    lines = [
        f"# Evaluation: {task}",
        "",
        f"Profile `{profile}`; model version {model.get('model_version')} (init `{init}`"
        + (f", sha256 {model['init_sha256'][:12]}" if model.get("init_sha256") else "") + ")"
        + ("; trained on the synthetic sample data" if model.get("trained_on_synthetic") else "") + ".",
        f"Test split: {s['test_images']} images, {s['test_boxes']} boxes. Detection rule (tuned on val, served as is): "
        f"{rule.describe()}.",
        "",
        "## Threshold-free AP",
        "",
        f"Over every detection above 0.001 after NMS at IoU {rule.iou:g} ({INTERPOLATION}):",
        f"- mAP50 **{s['map50']:.3f}** (95% bootstrap CI {s['map50_ci_low']:.3f}-{s['map50_ci_high']:.3f}, "
        f"{n_boot} resamples of test images)",
        f"- mAP@IoU0.4 {s['map_iou40']:.3f} (VinBigData's metric: AP at IoU 0.4)",
        f"- mAP50-95 {s['map50_95']:.3f}",
        "",
        "## Operating point",
        "",
        f"Detections with score > {rule.conf:g} (what the web app shows), IoU 0.5: precision {s['precision']:.3f}, "
        f"recall {s['recall']:.3f} (95% CI {s['recall_ci_low']:.3f}-{s['recall_ci_high']:.3f}), F1 {s['f1']:.3f}.",
        "",
        md_table(ev.table),
        "",
        "## FROC",
        "",
        f"Sensitivity at 1/8 to 8 false positives per image (IoU 0.5, all {s['test_images']} test images) and their "
        f"mean, the CPM: **{s['cpm']:.3f}** (all findings).",
        "",
        md_table(ev.froc),
        "",
        "![FROC](froc.png)",
        "",
    ]
    if len(ev.subgroups):
        lines += ["## Subgroups (NIH test images)", "",
                  "mAP50 (threshold-free) by sex, age band and view position, with 95% bootstrap intervals over the "
                  "group's images. A group with few boxes has a wide interval.", "", md_table(ev.subgroups), ""]
    if excluded is not None and len(excluded):
        counts = excluded.groupby(["finding", "split"]).size().unstack("split").fillna(0).astype(int).reset_index()
        lines += ["## Left out: unboxed findings", "",
                  "NIH images whose Data_Entry lists a finding of this task with no box for it (they would be "
                  "negatives for a visible finding), by finding and split:", "", md_table(counts), ""]
    lines += ["## Curves and examples", "", "![PR curves](pr_curves.png)", "",
              "![Confusion matrix at the operating point](confusion_matrix.png)", "",
              "![Labels | Predictions at the operating point](panels.png)", ""]
    return "\n".join(lines)


# -- the study report: comparisons on the same images ----------------------------------------------
@dataclass
class TaskResult:
    """What the study report needs of one evaluated task."""

    name: str
    summary: dict
    model: dict
    rule: dict
    gt: pd.DataFrame              # test boxes (task labels)
    detections: pd.DataFrame      # the rule at the AP floor on every test image
    images: pd.DataFrame          # test images: image_id, source
    excluded: pd.DataFrame | None = None


#: (a, b, finding in a, finding in b, what the comparison asks)
ONE_CLASS_VS_MULTI = [("united_cardiomegaly", "united_multi", "Cardiomegaly"),
                      ("united_mass_nodule", "united_multi", "Mass/Nodule")]
#: NIH findings that are the same class in nih_multi and united_multi (Mass and Nodule are not: united merges them)
SHARED_NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Pneumonia", "Pneumothorax")


def _paired_row(what: str, a: TaskResult, b: TaskResult, gt: pd.DataFrame, pa: pd.DataFrame, pb: pd.DataFrame,
                labels, ids, n_boot: int, seed: int) -> dict:
    r = paired_bootstrap(gt, pa, pb, labels, ids, n_boot=n_boot, seed=seed)
    verdict = ("no test boxes of it on the shared images" if r["a"] != r["a"] else
               "the 95% interval of the difference excludes 0" if (r["ci_low"] > 0 or r["ci_high"] < 0)
               else "the 95% interval of the difference includes 0: this test set does not show a difference")
    return {"comparison": what, "a": a.name, "b": b.name, "findings": ", ".join(labels), "images": r["images"],
            "boxes": int(gt["image_id"].isin(ids).sum()), "ap50_a": r["a"], "ap50_b": r["b"], "diff": r["diff"],
            "ci_low": r["ci_low"], "ci_high": r["ci_high"], "reading": verdict}


def fair_comparisons(results: dict[str, TaskResult], n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Paired comparisons on the same test images and findings; and the comparisons that cannot be
    made fairly, said plainly. AP50 here is threshold-free, on the shared images only."""
    rows, unfair = [], []
    for one, multi, finding in ONE_CLASS_VS_MULTI:
        if one in results and multi in results:
            a, b = results[one], results[multi]
            ids = sorted(set(a.images["image_id"]) & set(b.images["image_id"]))
            gt = a.gt[a.gt["image_id"].isin(ids)]
            pb = b.detections[(b.detections["label"] == finding) & b.detections["image_id"].isin(ids)]
            rows.append(_paired_row(f"one-class {finding} model vs the same class inside the multi-class model",
                                    a, b, gt, a.detections[a.detections["image_id"].isin(ids)], pb, [finding], ids,
                                    n_boot, seed))
    for united, nih, labels in (("united_multi", "nih_multi", SHARED_NIH_FINDINGS),
                                ("united_binary", "nih_binary", ("abnormality",))):
        if united in results and nih in results:
            a, b = results[united], results[nih]
            nih_a = a.images.loc[a.images["source"] == "nih", "image_id"]
            ids = sorted(set(nih_a) & set(b.images["image_id"]))
            gt = b.gt[b.gt["image_id"].isin(ids) & b.gt["label"].isin(labels)]
            present = [x for x in labels if (gt["label"] == x).any()]
            pa = a.detections[a.detections["image_id"].isin(ids) & a.detections["label"].isin(present)]
            pb = b.detections[b.detections["image_id"].isin(ids) & b.detections["label"].isin(present)]
            rows.append(_paired_row("adding VinBigData, on the NIH test images both models saw (findings named alike)",
                                    a, b, gt, pa, pb, present, ids, n_boot, seed))
    unfair += [
        "nih_* against united_* as whole-task figures: different test images (united adds VinBigData's) and, for the "
        "multi-class tasks, different classes (Mass and Nodule vs Mass/Nodule); only the NIH images and the findings "
        "named alike are compared above.",
        "binary against multi-class models: 'abnormality' is not a finding of the multi-class models, so their AP "
        "measures different things; no paired comparison exists.",
    ]
    cols = ["comparison", "a", "b", "findings", "images", "boxes", "ap50_a", "ap50_b", "diff", "ci_low", "ci_high",
            "reading"]
    return pd.DataFrame(rows, columns=cols), unfair


def tasks_table(results: dict[str, TaskResult]) -> pd.DataFrame:
    rows = []
    for name, r in results.items():
        s = r.summary
        rows.append({"task": name, "test_images": s.get("test_images"), "test_boxes": s.get("test_boxes"),
                     "map50": s.get("map50"), "map50_ci_low": s.get("map50_ci_low"),
                     "map50_ci_high": s.get("map50_ci_high"), "map_iou40": s.get("map_iou40"),
                     "map50_95": s.get("map50_95"), "cpm": s.get("cpm"),
                     "op_conf": r.rule.get("conf"), "op_iou": r.rule.get("iou"), "op_precision": s.get("precision"),
                     "op_recall": s.get("recall"), "op_f1": s.get("f1"), "version": r.model.get("model_version"),
                     "init": r.model.get("init"), "excluded_images": 0 if r.excluded is None else
                     int(r.excluded["image_id"].nunique())})
    return pd.DataFrame(rows)


def excluded_counts(results: dict[str, TaskResult]) -> pd.DataFrame:
    """Images left out of each task for an unboxed finding, by finding (an image may count twice)."""
    rows = []
    for name, r in results.items():
        if r.excluded is None or r.excluded.empty:
            continue
        for finding, g in r.excluded.groupby("finding"):
            rows.append({"task": name, "finding": finding, "images": int(g["image_id"].nunique()),
                         **{sp: int((g["split"] == sp).sum()) for sp in ("train", "val", "test")}})
    return pd.DataFrame(rows, columns=["task", "finding", "images", "train", "val", "test"])


def subgroup_table(results: dict[str, TaskResult], per_task: dict[str, pd.DataFrame]) -> pd.DataFrame:
    parts = [df.assign(task=name) for name, df in per_task.items() if name in results and len(df)]
    return pd.concat(parts, ignore_index=True)[["task", "attribute", "group", "images", "boxes", "map50", "ci_low",
                                                "ci_high"]] if parts else pd.DataFrame()


def study_markdown(profile: str, results: dict[str, TaskResult], missing: list[str], data_sections: list[str],
                   comparisons: pd.DataFrame, unfair: list[str], subgroup_rows: pd.DataFrame, n_boot: int,
                   served: list[str], when: str) -> str:
    table = tasks_table(results)
    md = [f"# Chest X-ray abnormality detection: study report ({profile} profile)", "",
          f"Regenerated {when} from this materialisation's data.", ""]
    if any(r.model.get("trained_on_synthetic") for r in results.values()):
        md += ["> These models learned from the synthetic sample data: the figures show the pipeline works, not how "
               "a model reads real radiographs.", ""]
    md += ["## Data", "", *data_sections]
    ex = excluded_counts(results)
    if not ex.empty:
        md += ["NIH images left out per task because Data_Entry lists a finding of the task without a box "
               "(they would teach the model that a visible finding is nothing):", "", md_table(ex), ""]
    md += ["## Results on the test split", "",
           "`map50`, `map_iou40` (AP at IoU 0.4, VinBigData's metric), `map50_95`: threshold-free, over every detection "
           f"above 0.001 after NMS ({INTERPOLATION}); 95% bootstrap intervals over test images. `cpm`: mean FROC "
           "sensitivity at 1/8-8 false positives per image. `op_*`: the operating point, detections above the tuned "
           "conf, as served. `init`: the starting weights.", ""]
    if not table.empty:
        md += [md_table(table), "", "![test mAP50 per task](map50.png)", ""]
    md += ["## Comparisons on the same images", "",
           f"Each line compares two models on the test images both were evaluated on and the findings both name "
           f"alike: the difference a - b of threshold-free AP50 (mean over those findings) with a paired bootstrap 95% "
           f"interval ({n_boot} resamples of the shared images, both models scored on each).", ""]
    md += ([md_table(comparisons), "", "![paired differences](comparisons.png)", ""] if len(comparisons)
           else ["No pair of tasks evaluated yet.", ""])
    md += ["No fair comparison exists for:", "", *[f"- {u}" for u in unfair], ""]
    if len(subgroup_rows):
        md += ["## Subgroups (NIH test images)", "",
               "Threshold-free mAP50 by sex, age band (<40, 40-60, >60) and view position, with 95% bootstrap "
               "intervals; a gap between groups whose intervals barely overlap deserves a look on real data.", "",
               md_table(subgroup_rows), ""]
    md += ["## The served panel", "",
           "The study's demo shows " + ", ".join(served) + " side by side, each with its own detection rule (tuned "
           "conf and IoU; united_multi class-agnostic). Labels | predictions on test images:", ""]
    for t in served:
        if t in results:
            md += [f"### {t}", "", f"![{t}](panels_{t}.png)", ""]
    if missing:
        md += [f"Not evaluated yet (left out above): {', '.join(missing)}.", ""]
    return "\n".join(md)


def nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def split_counts(splits: pd.DataFrame) -> pd.DataFrame:
    return splits.groupby(["source", "kind", "split"]).size().unstack("split").fillna(0).astype(int).reset_index()


def consensus_counts(annotations: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    from .consensus import to_united

    before = to_united(annotations)["united"].value_counts()
    after = boxes["united"].value_counts()
    return pd.DataFrame({"all_readers": before, "consensus": after}).fillna(0).astype(int).rename_axis("class").reset_index()


def boxes_per_class_and_split(datasets: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
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
        rows.append({"task": t, "class": "(images without its findings)",
                     **{sp: str(int(((images["split"] == sp) & ~images["image_id"].isin(boxes["image_id"])).sum()))
                        for sp in ("train", "val", "test")}})
    return pd.DataFrame(rows)
