"""Tuning, test evaluation and the study report, on files under the storage root."""

from __future__ import annotations

import time
from typing import Callable

import pandas as pd

from ..config import Profile
from ..storage import Storage
from . import plots
from .classes import SERVED_TASKS, TaskSpec
from .labels import load_gray
from .metrics import bootstrap_ci, confusion_matrix, evaluate, match_label, pr_curve, summarise
from .report import markdown_to_html, md_table
from .train import predict
from .tuning import apply_nms, best_pair, tune_grid


def _split(st: Storage, task: TaskSpec, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    images = st.read_parquet("datasets", task.name, "images.parquet")
    boxes = st.read_parquet("datasets", task.name, "boxes.parquet")
    images = images[images["split"] == split].reset_index(drop=True)
    return images, boxes[boxes["image_id"].isin(images["image_id"])].reset_index(drop=True)


def raw_predictions(st: Storage, task: TaskSpec, profile: Profile, images: pd.DataFrame, info: dict
                    ) -> tuple[pd.DataFrame, float]:
    """One forward pass over a split at the grid's lowest confidence, no suppression (IoU 1.0).
    `info`: the model's model.json."""
    weights = st.local("models", task.name, "best.pt")
    st.localise(images["path"])
    t0 = time.time()
    raw = predict(weights, images, list(task.classes),
                  imgsz=int(info["imgsz"]), conf=min(profile.conf_grid), iou=1.0)
    return raw, time.time() - t0


def tune_task(st: Storage, task: TaskSpec, profile: Profile, log: Callable[[str], None] = print) -> dict:
    images, gt = _split(st, task, "val")
    if gt.empty:
        log(f"{task.name}: WARNING the val split has no boxes of this task; every grid point scores 0")
    info = st.read_json("models", task.name, "model.json")
    grid, timing = tune_grid(st.local("models", task.name, "best.pt"), st.local("datasets", task.name) / "data.yaml",
                             profile.conf_grid, profile.iou_grid, imgsz=int(info["imgsz"]),
                             log=lambda m: log(f"{task.name}: {m}"))
    best = best_pair(grid)
    st.write_parquet(grid, "tuning", task.name, "grid.parquet")
    st.write_json({**best, **timing}, "tuning", task.name, "best.json")
    st.write_bytes(plots.grid_heatmap(grid, best), "tuning", task.name, "grid.png")
    log(f"{task.name}: best conf={best['conf']:g} iou={best['iou']:g} objective={best['objective']:.3f}")
    return {"best": best, "grid": grid, "predict_seconds": timing["pass_seconds"],
            "score_seconds": timing["score_seconds"]}


def evaluate_task(st: Storage, task: TaskSpec, profile: Profile, tracking_uri: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    best = st.read_json("tuning", task.name, "best.json")
    info = st.read_json("models", task.name, "model.json")
    images, gt = _split(st, task, "test")
    raw, t_pred = raw_predictions(st, task, profile, images, info)
    pred = apply_nms(raw, best["conf"], best["iou"])
    table = evaluate(gt, pred, task.classes)
    summary = summarise(table)
    log(f"{task.name}: test mAP50={summary['map50']:.3f} recall={summary['recall']:.3f} "
        f"({len(images)} images, {len(gt)} boxes)" + ("; no test boxes: metrics undefined" if gt.empty else ""))
    ci = bootstrap_ci(gt, pred, task.classes, images["image_id"], n_boot=profile.bootstrap_resamples,
                      seed=profile.seed)
    cm = confusion_matrix(gt, pred, task.classes)
    cis = ci.set_index("label")
    summary["map50_ci_low"], summary["map50_ci_high"] = (float(cis.loc["(mean AP50)", "ci_low"]),
                                                       float(cis.loc["(mean AP50)", "ci_high"]))
    table = table.merge(ci.rename(columns={"ci_low": "ap50_ci_low", "ci_high": "ap50_ci_high"})
                        [["label", "ap50_ci_low", "ap50_ci_high"]], on="label", how="left")
    base = ("reports", task.name)
    st.write_parquet(ci, *base, "bootstrap_ci.parquet")
    st.write_parquet(cm.reset_index(names="true"), *base, "confusion_matrix.parquet")
    st.write_bytes(plots.confusion_heatmap(cm, f"{task.name}: test, conf {best['conf']:g}, iou {best['iou']:g}"),
                   *base, "confusion_matrix.png")
    st.write_parquet(raw, *base, "raw_test.parquet")
    st.write_parquet(pred, *base, "predictions.parquet")
    st.write_parquet(table, *base, "metrics.parquet")
    st.write_json({**{k: (None if v != v else v) for k, v in summary.items()}, "conf": best["conf"],
                   "iou": best["iou"], "test_images": len(images), "test_boxes": len(gt)}, *base, "summary.json")
    curves = {}
    for label in task.classes:
        s, tp, n = match_label(gt[gt.label == label], raw[raw.label == label], 0.5)
        if n:
            r, p, _ = pr_curve(s, tp, n)
            curves[label] = (r, p)
    st.write_bytes(plots.pr_curves(curves, f"{task.name}: PR on test (IoU 0.5)"), *base, "pr_curves.png")
    with_boxes = [i for i in gt["image_id"].drop_duplicates()][: profile.report_panels]
    panels = []
    for image_id in with_boxes:
        path = images.set_index("image_id").loc[image_id, "path"]
        panels.append((load_gray(path), gt[gt.image_id == image_id], pred[pred.image_id == image_id], image_id[:16]))
    st.write_bytes(plots.gt_vs_pred(panels, task.classes), *base, "panels.png")
    md = [
        f"# Evaluation: {task.name}",
        "",
        f"Profile `{profile.name}`; test split: {len(images)} images, {len(gt)} boxes; tuned on val: "
        f"conf {best['conf']:g}, iou {best['iou']:g}.",
        "",
        f"mAP50 {summary['map50']:.3f} (95% bootstrap CI {summary['map50_ci_low']:.3f}-{summary['map50_ci_high']:.3f}, "
        f"{profile.bootstrap_resamples} resamples of test images), mAP50-95 {summary['map50_95']:.3f}, "
        f"mAP40 {summary['map40']:.3f}, "
        f"precision {summary['precision']:.3f}, recall {summary['recall']:.3f}, F1 {summary['f1']:.3f}.",
        "",
        md_table(table),
        "",
        "![PR curves](pr_curves.png)",
        "",
        "![Confusion matrix](confusion_matrix.png)",
        "",
        "![Labels | Predictions](panels.png)",
    ]
    text = "\n".join(md)
    st.write_text(text, *base, "report.md")
    st.write_text(markdown_to_html(text, f"Evaluation {task.name}"), *base, "report.html")
    if tracking_uri:
        _log_to_run(st, info["run_id"], tracking_uri, summary, base)
    return {"table": table, "summary": summary, "predict_seconds": t_pred, "best": best, "info": info}


def serving_tags(task: TaskSpec, best: dict, info: dict) -> dict[str, str]:
    """What a server needs beside the weights, tagged on the registered version at the gate.
    `best`: the tuned pair (tuning/<task>/best.json); `info`: the model's model.json."""
    return {"nms_conf": f"{best['conf']:g}", "nms_iou": f"{best['iou']:g}", "imgsz": str(info["imgsz"]),
            "classes": ",".join(task.classes)}


def _log_to_run(st: Storage, run_id: str, tracking_uri: str, summary: dict, base: tuple) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    for k, v in summary.items():
        client.log_metric(run_id, f"test_{k}", float(v))
    for name in ("report.md", "report.html", "pr_curves.png", "panels.png", "confusion_matrix.png", "metrics.parquet"):
        client.log_artifact(run_id, str(st.local(*base, name)), artifact_path="evaluation")


def _boxes_per_class_and_split(st: Storage, tasks: list[str]) -> pd.DataFrame:
    rows = []
    for t in tasks:
        if not (st.exists("datasets", t, "images.parquet") and st.exists("datasets", t, "boxes.parquet")):
            continue
        images = st.read_parquet("datasets", t, "images.parquet")
        boxes = st.read_parquet("datasets", t, "boxes.parquet").merge(images[["image_id", "split"]], on="image_id")
        n_img = boxes.groupby(["label", "split"])["image_id"].nunique()
        n_box = boxes.groupby(["label", "split"]).size()
        for label in sorted(boxes["label"].unique()):
            row = {"task": t, "class": label}
            for split in ("train", "val", "test"):
                row[split] = f"{n_box.get((label, split), 0)} ({n_img.get((label, split), 0)})"
            rows.append(row)
        rows.append({"task": t, "class": "(background images)",
                     **{sp: str(int(((images["split"] == sp) & ~images["image_id"].isin(boxes["image_id"])).sum()))
                        for sp in ("train", "val", "test")}})
    return pd.DataFrame(rows)


def study_report(st: Storage, profile: Profile, tasks: list[str]) -> dict:
    rows, missing = [], []
    for t in tasks:
        if not st.exists("reports", t, "summary.json"):
            missing.append(t)
            continue
        s = st.read_json("reports", t, "summary.json")
        info = st.read_json("models", t, "model.json")
        s = {k: (float("nan") if v is None else v) for k, v in s.items()}
        rows.append({"task": t, "test_map50": s["map50"], "map50_ci_low": s.get("map50_ci_low", float("nan")),
                     "map50_ci_high": s.get("map50_ci_high", float("nan")),
                     "test_map50_95": s["map50_95"], "test_recall": s["recall"],
                     "test_precision": s["precision"], "conf": s["conf"], "iou": s["iou"],
                     "test_images": s["test_images"], "test_boxes": s["test_boxes"],
                     "model_version": info.get("model_version")})
    table = pd.DataFrame(rows)
    md = [f"# Chest X-ray abnormality detection: study report ({profile.name} profile)", "",
          f"Regenerated {time.strftime('%Y-%m-%d %H:%M')} from this materialisation's data.", ""]
    md += ["## Data", ""]
    if st.exists("datasets", "splits.parquet"):
        splits = st.read_parquet("datasets", "splits.parquet")
        sm = splits.groupby(["source", "kind", "split"]).size().unstack("split").fillna(0).astype(int).reset_index()
        md += ["Images per source and split (patient-grouped):", "", md_table(sm), ""]
    if st.exists("vinbigdata", "annotations.parquet") and st.exists("vinbigdata", "boxes.parquet"):
        from .consensus import to_united

        before = to_united(st.read_parquet("vinbigdata", "annotations.parquet"))["united"].value_counts()
        after = st.read_parquet("vinbigdata", "boxes.parquet")["united"].value_counts()
        cons = pd.DataFrame({"all_readers": before, "consensus": after}).fillna(0).astype(int)
        md += ["VinBigData boxes before and after consensus:", "",
               md_table(cons.rename_axis("class").reset_index()), ""]
    per_task = _boxes_per_class_and_split(st, tasks)
    if not per_task.empty:
        md += ["Boxes per class and split in each task's dataset (images in brackets):", "", md_table(per_task), ""]
    md += ["## Results on the test split (tuned thresholds)", ""]
    if not table.empty:
        md += [md_table(table), ""]
        st.write_bytes(plots.bar_compare(table, "test_map50", "test mAP50 per task"), "reports", "study", "map50.png")
        md += ["![test mAP50 per task](map50.png)", "", "## Comparisons", ""]
        m = table.set_index("task")["test_map50"]

        ci = table.set_index("task")[["map50_ci_low", "map50_ci_high"]]

        def cmp(a, b, what):
            if a in m and b in m:
                verdict = "higher" if m[a] > m[b] else ("lower" if m[a] < m[b] else "equal")
                overlap = ci.loc[a, "map50_ci_low"] <= ci.loc[b, "map50_ci_high"] and \
                    ci.loc[b, "map50_ci_low"] <= ci.loc[a, "map50_ci_high"]
                note = "; the 95% intervals overlap, so this test set cannot tell them apart" if overlap else \
                    "; the 95% intervals do not overlap"
                md.append(f"- {what}: {a} mAP50 {m[a]:.3f} vs {b} {m[b]:.3f} ({a} is {verdict}{note}).")

        cmp("united_multi", "nih_multi", "Adding VinBigData (united vs NIH only, multi-class)")
        cmp("united_binary", "nih_binary", "Adding VinBigData (united vs NIH only, binary)")
        cmp("nih_binary", "nih_multi", "Binary vs multi-class on NIH")
        cmp("united_binary", "united_multi", "Binary vs multi-class on the united data")
        if st.exists("reports", "united_multi", "metrics.parquet"):
            per_class = st.read_parquet("reports", "united_multi", "metrics.parquet").set_index("label")["ap50"]
            for one, cls in (("united_cardiomegaly", "Cardiomegaly"), ("united_mass_nodule", "Mass/Nodule")):
                if one in m and cls in per_class and per_class[cls] == per_class[cls]:
                    verdict = "higher" if m[one] > per_class[cls] else ("lower" if m[one] < per_class[cls] else "equal")
                    md.append(f"- One-class {cls} vs the same class inside the multi-class model: {one} AP50 "
                              f"{m[one]:.3f} vs united_multi's {cls} AP50 {per_class[cls]:.3f} ({one} is {verdict}).")
        md.append("")
    md += ["## The served panel", "",
           "The study's demo shows " + ", ".join(SERVED_TASKS) + " side by side, each at its tuned thresholds "
           "(united_multi with class-agnostic NMS). Labels | predictions on test images:", ""]
    for t in SERVED_TASKS:
        if st.exists("reports", t, "panels.png"):
            st.copy_in(st.local("reports", t, "panels.png"), "reports", "study", f"panels_{t}.png")
            md += [f"### {t}", "", f"![{t}](panels_{t}.png)", ""]
    if missing:
        md += [f"Not yet evaluated: {', '.join(missing)}.", ""]
    text = "\n".join(md)
    md_path = st.write_text(text, "reports", "study", "report.md")
    html_path = st.write_text(markdown_to_html(text, "Study report"), "reports", "study", "report.html")
    st.write_parquet(table, "reports", "study", "tasks.parquet")
    return {"md": md_path, "html": html_path, "table": table, "missing": missing}
