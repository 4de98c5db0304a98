"""The study report across tasks, computed from each task's stored evaluation (no storage, no
MLflow: `defs/` reads and writes).

Figures are compared only where they are measured on the same test images and the same finding,
with a paired patient-level bootstrap interval of the difference; the tasks' headline table, the
gate's decisions, what the unboxed-finding rule left out, NIH subgroups and the data's counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .detection import DetectionRule
from .evaluation import (
    INTERPOLATION,
    SUBGROUP_COLUMNS,
    ModelFacts,
    interval_text,
    intervals_sentence,
    patients,
)
from .metrics import AVERAGES, MIN_TEST_BOXES, enough_boxes, paired_bootstrap, too_few
from .report import md_table


@dataclass
class TaskResult:
    """What the study report needs of one evaluated task."""

    name: str
    summary: dict
    model: ModelFacts
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


@dataclass
class Shared:
    """What two models are compared on: the shared test images, their boxes of the findings both
    name alike, and each model's detections of those findings there."""

    gt: pd.DataFrame
    pa: pd.DataFrame
    pb: pd.DataFrame
    labels: list
    ids: list


def _paired_row(what: str, a: TaskResult, b: TaskResult, shared: Shared, resampling: tuple) -> dict:
    """One comparison's row: the paired bootstrap of a - b on the shared images, read in words.
    `resampling`: (resamples, seed, the minimum count of test boxes)."""
    n_boot, seed, min_boxes = resampling
    groups = {**(patients(a.images) or {}), **(patients(b.images) or {})} or None
    r = paired_bootstrap(
        shared.gt,
        shared.pa,
        shared.pb,
        shared.labels,
        shared.ids,
        n_boot=n_boot,
        seed=seed,
        groups=groups,
    )
    low, high = r["ci_low"], r["ci_high"]
    if math.isnan(r["a"]):
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
        "findings": ", ".join(shared.labels),
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


#: a comparison row's columns
COMPARISON_COLUMNS = [
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
#: what cannot be compared fairly, said plainly in the report
UNFAIR = [
    "nih_* against united_* as whole-task figures: different test images (united adds VinBigData's) and, for the "
    "multi-class tasks, different classes (Mass and Nodule vs Mass/Nodule); only the NIH images and the findings "
    "named alike are compared above.",
    "binary against multi-class models: 'abnormality' is not a finding of the multi-class models, so their AP "
    "measures different things; no paired comparison exists.",
]


def fair_comparisons(
    results: dict[str, TaskResult],
    n_boot: int = 1000,
    seed: int = 0,
    min_boxes: int = MIN_TEST_BOXES,
) -> tuple[pd.DataFrame, list[str]]:
    """Paired comparisons on the same test images and findings; and the comparisons that cannot be
    made fairly, said plainly. AP50 here is threshold-free, on the shared images only."""
    rows, resampling = [], (n_boot, seed, min_boxes)
    for one, multi, finding in ONE_CLASS_VS_MULTI:
        if one in results and multi in results:
            a, b = results[one], results[multi]
            ids = sorted(set(a.images["image_id"]) & set(b.images["image_id"]))
            on_ids = b.detections["image_id"].isin(ids)
            shared = Shared(
                a.gt[a.gt["image_id"].isin(ids)],
                a.detections[a.detections["image_id"].isin(ids)],
                b.detections[(b.detections["label"] == finding) & on_ids],
                [finding],
                ids,
            )
            what = f"one-class {finding} model vs the same class inside the multi-class model"
            rows.append(_paired_row(what, a, b, shared, resampling))
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

            def mine(d: pd.DataFrame) -> pd.DataFrame:
                return d[d["image_id"].isin(ids) & d["label"].isin(present)]

            shared = Shared(gt, mine(a.detections), mine(b.detections), present, ids)
            what = (
                "adding VinBigData, on the NIH test images both models saw (findings named alike)"
            )
            rows.append(_paired_row(what, a, b, shared, resampling))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS), list(UNFAIR)


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
                # small boxes (COCO's under 32² at the model's input): what the study says it misses
                "small_boxes": s.get("boxes_small"),
                "map50_small": s.get("map50_small"),
                "sens1_luna16_small": s.get("sens1_luna16_small"),
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
    cols = ["task", *SUBGROUP_COLUMNS]
    return pd.concat(parts, ignore_index=True).reindex(columns=cols) if parts else pd.DataFrame()


@dataclass
class StudyReport:
    """What the study report says: the evaluated tasks and the missing ones, the data section,
    the fair comparisons (and the pairs without one), the subgroups, the gates, and how the
    intervals were drawn."""

    profile: str
    results: dict[str, TaskResult]
    missing: list[str]
    data_sections: list[str]
    comparisons: pd.DataFrame
    unfair: list[str]
    subgroup_rows: pd.DataFrame
    n_boot: int
    served: list[str]
    when: str
    seed: int = 0
    min_boxes: int = MIN_TEST_BOXES
    gates: pd.DataFrame | None = None


def study_markdown(report: StudyReport) -> str:
    r = report
    md = [
        f"# Chest X-ray abnormality detection: study report ({r.profile} profile)",
        "",
        f"Regenerated {r.when} from this materialisation's data.",
        "",
    ]
    if any(t.model.trained_on_synthetic for t in r.results.values()):
        md += [
            "> These models learned from the synthetic sample data: the figures show the pipeline works, not how "
            "a model reads real radiographs.",
            "",
        ]
    md += ["## Data", "", *r.data_sections]
    ex = excluded_counts(r.results)
    if not ex.empty:
        md += [
            "NIH images left out per task because Data_Entry lists a finding of the task without a box: "
            "from the test split always (a correct detection there has no box to match), from train "
            "and val only where the profile sets `exclude_unboxed_findings`:",
            "",
            md_table(ex),
            "",
        ]
    md += _results_section(r) + _comparisons_section(r)
    if len(r.subgroup_rows):
        md += [
            "## Subgroups (NIH test images)",
            "",
            "Threshold-free mAP50 by sex, age band (<40, 40-60, >60) and view position, with patient-level 95% "
            'intervals or "too few test boxes (n)"; a gap between groups whose intervals barely overlap deserves a look on real data.',
            "",
            md_table(r.subgroup_rows),
            "",
        ]
    if r.gates is not None and len(r.gates):
        md += [
            "## Champion gate",
            "",
            "Per task, the latest gate decision (`champion_gate`): the new version against the champion re-scored "
            "on the same test images, with the paired difference, its patient-level interval, the null rate of "
            "the rule on that split and any blocking check that held the promotion.",
            "",
            md_table(r.gates),
            "",
        ]
    md += _panel_section(r)
    if r.missing:
        md += [f"Not evaluated yet (left out above): {', '.join(r.missing)}.", ""]
    return "\n".join(md)


def _results_section(r: StudyReport) -> list[str]:
    table = tasks_table(r.results)
    md = [
        "## Results on the test split",
        "",
        "`map50`, `map_iou40` (AP at IoU 0.4, VinBigData's metric), `map50_95`: threshold-free, over every detection "
        f"above 0.001 after NMS ({INTERPOLATION}); 95% intervals from a {intervals_sentence(r.n_boot, 'the test patients', r.seed)} "
        "(no interval below the minimum count of test boxes). `cpm_luna16`: mean FROC sensitivity at 1/8-8 false "
        "positives per image under LUNA16's centre rule (comparable with published CPMs); `cpm_iou`: the same "
        "under the project's stricter IoU 0.5 rule. `small_boxes`, `map50_small`, `sens1_luna16_small`: the test "
        "boxes under 32² pixels at the model's input (COCO's small), their mAP50 and FROC sensitivity at 1 false "
        "positive per image (each task's report has every size and both hit rules). `op_*`: the operating point, "
        "detections above the tuned conf, "
        f"as served; {AVERAGES['macro']}; {AVERAGES['micro']}. `init`: the starting weights.",
        "",
    ]
    if not table.empty:
        md += [md_table(table), "", "![test mAP50 per task](map50.png)", ""]
    return md


def _comparisons_section(r: StudyReport) -> list[str]:
    md = [
        "## Comparisons on the same images",
        "",
        f"Each line compares two models on the test images both were evaluated on and the findings both name "
        f"alike: the difference a - b of threshold-free AP50 (mean over those findings) with a paired 95% interval "
        f"({intervals_sentence(r.n_boot, 'the patients of the shared images', r.seed)}, both models scored on each). Below "
        f"{r.min_boxes} test "
        'boxes a comparison reads "cannot tell".',
        "",
    ]
    md += (
        [md_table(r.comparisons), "", "![paired differences](comparisons.png)", ""]
        if len(r.comparisons)
        else ["No pair of tasks evaluated yet.", ""]
    )
    return md + ["No fair comparison exists for:", "", *[f"- {u}" for u in r.unfair], ""]


def _panel_section(r: StudyReport) -> list[str]:
    md = [
        "## The served panel",
        "",
        "The study's demo shows "
        + ", ".join(r.served)
        + " side by side, each with its own detection rule (tuned "
        "conf and IoU; united_multi class-agnostic). Labels | predictions on test images:",
        "",
    ]
    for t in r.served:
        if t in r.results:
            md += [f"### {t}", "", f"![{t}](panels_{t}.png)", ""]
    return md


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
