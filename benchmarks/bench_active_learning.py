"""The annotation loop's claim, measured: does the project's acquisition pick the images a
radiologist should box better than random or plain max-entropy? And the unboxed-finding rule: is a
task better off leaving partially boxed NIH images out of training (the default) or keeping them?

A simulated world: NIH-layout sample data (`core/synthetic.write_nih`) with label-only images (3 per
box image) and partially boxed images at NIH's rate (65%), and the true box of every unboxed finding
in an oracle file beside the native layout (the pipeline never reads it). Patients are split by the
study's rule at (0.7, 0.1, 0.2), the larger test share so the test split has enough boxes; the test
split is fixed for the whole simulation and evaluated with its complete truth (box list + oracle), so
no test image is scored against a box that is missing.

Rounds (per seed, per strategy): queue a batch of K train/val images by the strategy; the oracle
answers as an NIH drop that `core/inbox.validate` accepts (boxes for existing label-only images, the
same path as a real drop); the task's dataset is rebuilt by `core/yolo_dataset` with the profile's
rule, the task retrained demo-sized (the demo profile's arguments, from scratch, last epoch's
weights), and scored on the fixed test split: threshold-free AP50 (`core/metrics.evaluate`) and the
CPM (`core/metrics.froc`, IoU rule), from detections at the AP floor through `core/detection`.

Strategies: `random` (a seeded draw), `max-entropy` (the model's mean binary entropy of its
detections only), `acquisition` (`core/acquisition` as the queue ranks under the profile's rule:
missed listed findings + 0.5 x entropy; partially boxed first only where the rule leaves them out of
training) and `partial-first` (the same score behind a partially-boxed-first tier whatever the rule:
the first design, kept to show why it is no longer the default). Every strategy takes at most one
image per patient (`acquisition.batch`).

Settings (environment): XRAY_BENCH_AL_STRATEGIES (all four, comma-separated), XRAY_BENCH_AL_SEEDS (3, from XRAY_BENCH_AL_FIRST_SEED, 0), XRAY_BENCH_AL_ROUNDS (3), XRAY_BENCH_AL_BATCH (16),
XRAY_BENCH_AL_SIZE (box images, 100), XRAY_BENCH_AL_TASK (nih_binary), XRAY_BENCH_AL_RULE_TASKS
(nih_multi,nih_binary; empty skips the rule's measurement), XRAY_BENCH_OUT (bench-results).
Prints both tables and writes `active_learning.png`, `active_learning.csv` and
`unboxed_rule.csv` into XRAY_BENCH_OUT.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

STRATEGIES = ("random", "max-entropy", "partial-first", "acquisition")
FRACTIONS = (0.7, 0.1, 0.2)
#: NMS IoU of the simulation's detections (ultralytics' default; no tuning per round)
NMS_IOU = 0.7


def _env(name: str, default):
    raw = os.environ.get(name)
    return type(default)(raw) if raw not in (None, "") else default


def _say(msg: str) -> None:
    print(f"[active-learning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class World:
    """The simulated NIH data: labels, the box list, the oracle, every image's path and split."""

    labels: pd.DataFrame
    boxes: pd.DataFrame
    oracle: pd.DataFrame
    paths: dict
    patient: dict
    background: list
    split_of: dict  # patient_id -> split


def make_world(root: Path, size: int, seed: int = 0) -> World:
    from xray_assets.core import synthetic
    from xray_assets.core.labels import read_nih_boxes, read_nih_labels
    from xray_assets.core.splits import assign_splits, nih_group

    oracle_path = root.joinpath(*synthetic.ORACLE)
    stats = synthetic.write_nih(root / "nih", size, seed, background_ratio=0.5, oracle=oracle_path)
    _say(f"world: {stats}")
    labels = read_nih_labels(root / "nih" / "Data_Entry_2017.csv")
    boxes = read_nih_boxes(root / "nih" / "BBox_List_2017.csv")
    oracle = read_nih_boxes(oracle_path)
    paths = {p.name: p for p in (root / "nih").rglob("*.png")}
    patient = dict(zip(labels["image_id"], labels["patient_id"]))
    no_finding = labels["findings"].map(lambda f: list(f) == ["No Finding"])
    pids = sorted(set(labels["patient_id"]))
    split = assign_splits([nih_group(p) for p in pids], FRACTIONS, 0)
    return World(
        labels,
        boxes,
        oracle,
        paths,
        patient,
        sorted(labels.loc[no_finding, "image_id"]),
        dict(zip(pids, split)),
    )


def study_splits(world: World, boxes: pd.DataFrame) -> pd.DataFrame:
    """The study's image table (box and background images) with the simulation's split."""
    from xray_assets.core.splits import study_images

    vbd = pd.DataFrame(columns=["image_id", "path", "width", "height", "orig_width", "orig_height"])
    images, _ = study_images(
        boxes["image_id"], world.background, world.patient, world.paths, [], [], vbd
    )
    images["split"] = images["image_id"].map(world.patient).map(world.split_of)
    return images


def fixed_test(world: World, task) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every test patient's image (box, partially boxed, label-only, background) with its complete
    truth, in the task's classes."""
    from xray_assets.core.yolo_dataset import task_boxes

    test_ids = [i for i, p in world.patient.items() if world.split_of[p] == "test"]
    truth = pd.concat([world.boxes, world.oracle], ignore_index=True)
    truth = task_boxes(truth[truth["image_id"].isin(test_ids)], task)
    images = pd.DataFrame({"image_id": test_ids, "path": [str(world.paths[i]) for i in test_ids]})
    return images, truth


def oracle_drop(world: World, boxes: pd.DataFrame, image_ids, folder: Path) -> pd.DataFrame:
    """The oracle's boxes of `image_ids` written as an NIH drop and accepted by the inbox's own
    validation; returns the boxes the drop adds."""
    from xray_assets.core import inbox, synthetic

    rows = world.oracle[world.oracle["image_id"].isin(set(image_ids))]
    folder.mkdir(parents=True)
    lines = [synthetic.NIH_BBOX_HEADER] + [
        synthetic.nih_box_line(r.image_id, r.label, r.x_min, r.y_min, r.x_max, r.y_max)
        for r in rows.itertuples()
    ]
    (folder / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    (folder / inbox.READY).write_text("")
    known = inbox.Known(
        nih=set(world.labels["image_id"]),
        boxed=set(zip(boxes["image_id"], boxes["label"])),
        nih_size=lambda i: (1024, 1024) if i in world.paths else None,
    )
    drop = inbox.validate(folder, known)
    return drop.tables["boxes"]


def train_and_score(
    world: World,
    boxes: pd.DataFrame,
    task,
    exclude_unboxed: bool,
    seed: int,
    work: Path,
    test: tuple[pd.DataFrame, pd.DataFrame],
):
    """Build the task's dataset, train it demo-sized, score the fixed test split. Returns
    (figures, model, the rule it was scored by, imgsz)."""
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    from xray_assets import train as core_train
    from xray_assets.config import get_profile
    from xray_assets.core import detection, layout, metrics
    from xray_assets.core.yolo_dataset import build_dataset, task_inputs

    params = get_profile("demo").train
    params = replace(params, epochs=_env("XRAY_BENCH_AL_EPOCHS", params.epochs))
    splits = study_splits(world, boxes)
    vbd = pd.DataFrame(columns=["image_id", "united", "x_min", "y_min", "x_max", "y_max"])
    images, tboxes, excluded = task_inputs(
        splits, boxes, vbd, task, world.labels, exclude_unboxed=exclude_unboxed
    )
    images = images[images["split"] != "test"]
    built = build_dataset(work / "ds", task, images, tboxes)
    args, _ = core_train.ultralytics_train_args(params)
    args.update(seed=seed, deterministic=True, plots=False)
    SETTINGS.update({"mlflow": False})  # the simulation's trainings are not the registry's
    t0 = time.perf_counter()
    YOLO(params.model).train(
        data=str(work / "ds" / layout.DATA_YAML),
        project=str(work),
        name="train",
        exist_ok=True,
        verbose=False,
        **args,
    )
    seconds = time.perf_counter() - t0
    model = detection.load_model(work / "train" / "weights" / layout.LAST_WEIGHTS)
    test_images, truth = test
    rule = detection.DetectionRule(conf=detection.AP_FLOOR, iou=NMS_IOU, agnostic=task.agnostic_nms)
    dets = detection.detect_images(model, test_images, rule, params.imgsz, task.classes)
    summary = metrics.summarise(metrics.evaluate(truth, dets, task.classes))
    froc, _ = metrics.froc(truth, dets, task.classes, test_images["image_id"], rule="iou")
    figures = {
        "ap50": summary["map50"],
        "cpm": float(froc.iloc[-1]["cpm"]),
        "train_images": int((images["split"] == "train").sum()),
        "train_boxes": int(
            tboxes["image_id"].isin(set(images.loc[images["split"] == "train", "image_id"])).sum()
        ),
        "left_out": int(excluded["image_id"].nunique()),
        "train_s": round(seconds, 1),
        "dataset_boxes": len(built["boxes"]),
    }
    return figures, model, rule, params.imgsz


def pick(
    strategy: str,
    world: World,
    boxes: pd.DataFrame,
    task,
    model,
    rule,
    imgsz,
    k: int,
    seed: int,
    partial_first: bool,
) -> pd.DataFrame:
    """A batch of `k` train/val candidates by `strategy`."""
    from xray_assets.core import acquisition, detection
    from xray_assets.core.splits import stable_uniform

    cands = acquisition.candidates(world.labels, boxes, task)
    cands = cands[cands["patient_id"].map(world.split_of) != "test"].reset_index(drop=True)
    split = pd.Series(world.split_of)
    if strategy == "random":
        key = stable_uniform(cands["image_id"], seed, salt="random-strategy")
        scores = cands[["image_id"]].assign(score=1.0 - key, missed=np.nan, uncertainty=np.nan)
    else:
        images = pd.DataFrame(
            {
                "image_id": cands["image_id"],
                "path": [str(world.paths[i]) for i in cands["image_id"]],
            }
        )
        dets = detection.detect_images(
            model, images, rule.at(conf=detection.AP_FLOOR), imgsz, task.classes
        )
        scores = acquisition.score_images(cands, dets, "sim")
        if strategy == "max-entropy":
            scores["score"] = scores["uncertainty"]
    first = {"partial-first": True, "acquisition": partial_first}.get(strategy, False)
    queue = acquisition.rank(cands, scores, split, seed, partial_first=first)
    return acquisition.batch(queue, k, test_share=0.0)


def boxes_to_reach(curve: pd.DataFrame, target: float) -> float:
    """Boxes added when the curve (boxes, ap50; by round) first reaches `target`, interpolated
    linearly between rounds; NaN when it never does."""
    b, a = curve["boxes"].to_numpy(float), curve["ap50"].to_numpy(float)
    if a[0] >= target:
        return float(b[0])
    for i in range(1, len(a)):
        if a[i] >= target:
            return float(b[i - 1] + (b[i] - b[i - 1]) * (target - a[i - 1]) / (a[i] - a[i - 1]))
    return float("nan")


def active_learning(
    world, task, seeds, rounds, k, work: Path, strategies=STRATEGIES
) -> pd.DataFrame:
    """Rounds under the profile's unboxed-finding rule (the default the rule's measurement chose)."""
    from xray_assets.config import get_profile

    exclude = get_profile("demo").exclude_unboxed_findings
    test = fixed_test(world, task)
    _say(f"{task.name}: fixed test split {len(test[0])} images, {len(test[1])} boxes")
    rows = []
    for seed in seeds:
        base, model, rule, imgsz = train_and_score(
            world, world.boxes, task, exclude, seed, work / f"s{seed}-r0", test
        )
        _say(f"seed {seed} round 0: AP50 {base['ap50']:.3f} CPM {base['cpm']:.3f}")
        for strategy in strategies:
            rows.append({"seed": seed, "strategy": strategy, "round": 0, "boxes": 0, **base})
            boxes, m, added = world.boxes, model, 0
            for r in range(1, rounds + 1):
                batch = pick(
                    strategy, world, boxes, task, m, rule, imgsz, k, seed * 100 + r, exclude
                )
                drop = work / f"s{seed}-{strategy}-r{r}-drop"
                new = oracle_drop(world, boxes, batch["image_id"], drop)
                boxes = pd.concat([boxes, new[boxes.columns]], ignore_index=True)
                added += len(new)
                figs, m, _, _ = train_and_score(
                    world, boxes, task, exclude, seed, work / f"s{seed}-{strategy}-r{r}", test
                )
                partial = int((batch["kind"] == "partial").sum())
                rows.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "round": r,
                        "boxes": added,
                        "partial_in_batch": partial,
                        **figs,
                    }
                )
                _say(
                    f"seed {seed} {strategy} round {r}: +{len(new)} boxes ({partial} partially "
                    f"boxed images), AP50 {figs['ap50']:.3f} CPM {figs['cpm']:.3f}"
                )
    return pd.DataFrame(rows)


def unboxed_rule(world, tasks, seeds, work: Path) -> pd.DataFrame:
    """Each task trained with the rule's two settings per seed, on the same fixed test split."""
    from xray_assets.core.classes import TASKS

    rows = []
    for name in tasks:
        task = TASKS[name]
        test = fixed_test(world, task)
        for seed in seeds:
            for exclude in (True, False):
                figs, *_ = train_and_score(
                    world, world.boxes, task, exclude, seed, work / f"{name}-{exclude}-{seed}", test
                )
                rule = "leave out" if exclude else "keep"
                rows.append({"task": name, "rule": rule, "seed": seed, **figs})
                _say(f"{name} {rule} seed {seed}: AP50 {figs['ap50']:.3f} CPM {figs['cpm']:.3f}")
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, out: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ap50", "cpm")):
        for strategy in [s for s in STRATEGIES if s in set(table["strategy"])]:
            t = table[table["strategy"] == strategy].groupby("round")
            mean, lo, hi = t[metric].mean(), t[metric].min(), t[metric].max()
            ax.plot(mean.index, mean.values, marker="o", label=strategy)
            ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
        ax.set_xticks(sorted(set(table["round"])))
        ax.set_xlabel("round (one batch of K images each)")
        ax.set_ylabel({"ap50": "test AP50 (threshold-free)", "cpm": "test CPM (IoU rule)"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Active-learning simulation, {task}: mean over seeds, band = min..max")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summarise(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per (strategy, round): mean and spread of AP50 and CPM and mean boxes; and the claim's two
    figures."""
    agg = (
        table.groupby(["strategy", "round"])
        .agg(
            boxes=("boxes", "mean"),
            ap50=("ap50", "mean"),
            ap50_sd=("ap50", "std"),
            ap50_min=("ap50", "min"),
            ap50_max=("ap50", "max"),
            cpm=("cpm", "mean"),
            cpm_sd=("cpm", "std"),
        )
        .reset_index()
    )
    by = {s: agg[agg["strategy"] == s].sort_values("round") for s in STRATEGIES}
    rnd, acq = by["random"], by["acquisition"]
    if rnd.empty or acq.empty:
        return agg, {}
    at_least = bool((acq["ap50"].to_numpy() >= rnd["ap50"].to_numpy() - 1e-12).all())
    target = float(rnd["ap50"].iloc[-1])
    need = boxes_to_reach(acq, target)
    return agg, {
        "acquisition >= random's mean every round": at_least,
        "random's final AP50": target,
        "random's boxes": float(rnd["boxes"].iloc[-1]),
        "acquisition's boxes to reach it": need,
        "share of random's boxes": need / float(rnd["boxes"].iloc[-1])
        if rnd["boxes"].iloc[-1]
        else float("nan"),
    }


def main() -> list[dict]:
    import torch

    from xray_assets.config import configure_ultralytics
    from xray_assets.core.classes import TASKS

    configure_ultralytics()
    torch.set_num_threads(os.cpu_count() or 1)
    first = _env("XRAY_BENCH_AL_FIRST_SEED", 0)
    seeds = list(range(first, first + _env("XRAY_BENCH_AL_SEEDS", 3)))
    rounds, k = _env("XRAY_BENCH_AL_ROUNDS", 3), _env("XRAY_BENCH_AL_BATCH", 16)
    size, task = _env("XRAY_BENCH_AL_SIZE", 100), TASKS[_env("XRAY_BENCH_AL_TASK", "nih_binary")]
    # set and empty: the rule's measurement is skipped
    rule_tasks = [
        t
        for t in os.environ.get("XRAY_BENCH_AL_RULE_TASKS", "nih_multi,nih_binary").split(",")
        if t
    ]
    out = Path(_env("XRAY_BENCH_OUT", "bench-results"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = make_world(tmp / "world", size)
        rule = unboxed_rule(world, rule_tasks, seeds, tmp / "rule") if rule_tasks else None
        strategies = _env("XRAY_BENCH_AL_STRATEGIES", ",".join(STRATEGIES)).split(",")
        table = active_learning(world, task, seeds, rounds, k, tmp / "al", strategies)
    table.to_csv(out / "active_learning.csv", index=False)
    plot(table, out / "active_learning.png", task.name)
    agg, claim = summarise(table)
    pd.set_option("display.width", 160)
    print(f"\nActive-learning simulation, {task.name}, seeds {seeds}, K={k}, {size} box images")
    print(agg.round(3).to_string(index=False))
    for key, value in claim.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"  plot: {out / 'active_learning.png'}")
    if rule is not None:
        rule.to_csv(out / "unboxed_rule.csv", index=False)
        r = (
            rule.groupby(["task", "rule"])
            .agg(
                ap50=("ap50", "mean"),
                ap50_sd=("ap50", "std"),
                cpm=("cpm", "mean"),
                train_images=("train_images", "mean"),
                left_out=("left_out", "mean"),
            )
            .reset_index()
        )
        print("\nUnboxed-finding rule (training only; the fixed test split has complete truth)")
        print(r.round(3).to_string(index=False))
    seconds = time.perf_counter() - t0
    if not claim:
        return []
    share = claim["share of random's boxes"]
    return [
        {
            "benchmark": "active learning: boxes",
            "ours_s": claim["acquisition's boxes to reach it"],
            "baseline_s": claim["random's boxes"],
            "speedup": 1 / share if share == share and share > 0 else float("nan"),
            "unit": "boxes",
            "baseline": f"random's boxes for its final AP50 (goal: ratio >= 1.43, i.e. <= 70%); {seconds:.0f} s",
        }
    ]


if __name__ == "__main__":
    for row in main():
        print(row)
