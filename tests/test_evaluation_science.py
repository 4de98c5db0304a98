"""The study's figures on hand-made cases: threshold-free AP, the paired gate, FROC, subgroups, unboxed
findings left out (each against a direct computation)."""

import numpy as np
import pandas as pd
import pytest

from xray_assets.core import champion
from xray_assets.core.classes import TASKS
from xray_assets.core.metrics import (
    average_precision,
    evaluate,
    froc,
    paired_bootstrap,
    subgroups,
    summarise,
)
from xray_assets.core.yolo_dataset import task_inputs, unboxed_findings

COLS = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]


def _gt(rows):
    return pd.DataFrame(rows, columns=COLS)


def _pred(rows):
    return pd.DataFrame(rows, columns=[*COLS, "score"])


def _random_case(seed=0, n=40):
    rng = np.random.default_rng(seed)
    gt_rows, pred_rows = [], []
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(10, 60, 2)
            lab = str(rng.choice(["A", "B"]))
            gt_rows.append((f"i{i}", lab, x, y, x + w, y + h))
            if rng.random() < 0.7:  # found, with some jitter and a random score
                d = rng.normal(0, 4, 4)
                pred_rows.append(
                    (
                        f"i{i}",
                        lab,
                        x + d[0],
                        y + d[1],
                        x + w + d[2],
                        y + h + d[3],
                        rng.uniform(0, 1),
                    )
                )
        for _ in range(rng.integers(0, 3)):  # false alarms at low scores
            x, y = rng.uniform(0, 200, 2)
            pred_rows.append(
                (f"i{i}", str(rng.choice(["A", "B"])), x, y, x + 20, y + 20, rng.uniform(0, 0.6))
            )
    return _gt(gt_rows), _pred(pred_rows), [f"i{i}" for i in range(n)]


def test_ap_is_threshold_free_and_agrees_with_pycocotools():
    pytest.importorskip("pycocotools")
    gt, pred, _ = _random_case()
    low = evaluate(gt, pred, ["A", "B"], conf=0.03).set_index("label")
    high = evaluate(gt, pred, ["A", "B"], conf=0.5).set_index("label")
    for col in ("ap50", "ap_iou40", "ap50_95"):
        assert (low[col] == high[col]).all(), f"{col} moved with the operating confidence"
    assert (low["recall"] > high["recall"]).all() and (
        low["n_pred_op"] > high["n_pred_op"]
    ).all(), "the operating point does move with the confidence"
    from helpers import coco_ap50

    coco = coco_ap50(gt, pred, ["A", "B"])
    for label in ("A", "B"):
        assert abs(low.loc[label, "ap50"] - coco[label]) < 0.01, (
            label,
            low.loc[label, "ap50"],
            coco[label],
        )
    assert 0.2 < coco["A"] < 0.95, "a case where AP is neither trivial nor perfect"


def test_operating_point_counts_only_detections_above_conf():
    gt = _gt([("i1", "A", 0, 0, 10, 10), ("i2", "A", 0, 0, 10, 10)])
    pred = _pred(
        [
            ("i1", "A", 0, 0, 10, 10, 0.9),
            ("i2", "A", 0, 0, 10, 10, 0.2),
            ("i2", "A", 50, 50, 60, 60, 0.95),
        ]
    )
    row = evaluate(gt, pred, ["A"], conf=0.5).set_index("label").loc["A"]
    assert (row["precision"], row["recall"], row["n_pred_op"]) == (0.5, 0.5, 2)
    assert row["ap50"] == pytest.approx(average_precision(gt, pred)["A"])


def test_paired_difference_equals_a_direct_computation():
    gt, a, ids = _random_case(seed=1)
    _, b, _ = _random_case(seed=2)
    b = b[b["image_id"].isin(ids)]
    r = paired_bootstrap(gt, a, b, ["A", "B"], ids, n_boot=300, seed=0)
    direct_a = np.mean(list(average_precision(gt, a).values()))
    direct_b = np.mean(list(average_precision(gt, b).values()))
    assert r["a"] == pytest.approx(direct_a) and r["b"] == pytest.approx(direct_b)
    assert r["diff"] == pytest.approx(direct_a - direct_b)
    assert (
        r["ci_low"] < r["diff"] < r["ci_high"] and r["images"] == len(ids) and r["resamples"] == 300
    )
    same = paired_bootstrap(gt, a, a, ["A", "B"], ids, n_boot=100, seed=0)
    assert same["diff"] == 0 and same["ci_low"] == 0 == same["ci_high"], (
        "paired: one model against itself is 0"
    )


def test_gate_decides_on_the_paired_difference_and_its_margin():
    # a split that resolves the margin: the resampled differences sit within 0.005 of the observed one
    narrow = -0.02 + np.linspace(-0.005, 0.005, 201)
    paired = {
        "a": 0.60,
        "b": 0.62,
        "diff": -0.02,
        "ci_low": -0.025,
        "ci_high": -0.015,
        "images": 500,
        "patients": 400,
        "boxes": 800,
        "diffs": narrow,
        "resamples": 201,
        "seed": 0,
    }
    assert (
        champion.gate_record(paired, 0.03, "2", "1")["decision"] == "champion"
    )  # within the margin
    worse = champion.gate_record(paired, 0.01, "2", "1")
    assert (
        worse["decision"] == "challenger"
        and worse["compared_with"] == "1"
        and not worse["non_inferior"]
    )
    assert worse["split_resolves_margin"] and worse["null_rate"] == 0.0
    assert (
        champion.gate_record(None, 0.01, "1", None)["decision"] == "champion"
    )  # the first version
    again = champion.gate_record(None, 0.01, "2", "2")  # the champion re-evaluated
    assert again["decision"] == "champion" and "itself" in again["reason"]
    assert champion.decide({**paired, "diff": float("nan")}, 1.0)[0] == "challenger"


def test_froc_sensitivities_equal_a_hand_computation():
    gt = _gt([("i1", "A", 0, 0, 10, 10), ("i1", "A", 20, 20, 30, 30), ("i2", "A", 0, 0, 10, 10)])
    pred = _pred(
        [
            ("i3", "A", 0, 0, 10, 10, 0.95),  # a false positive on an empty image
            ("i1", "A", 0, 0, 10, 10, 0.9),
            ("i1", "A", 50, 50, 60, 60, 0.8),
            ("i1", "A", 20, 20, 30, 30, 0.7),
            ("i2", "A", 40, 40, 50, 50, 0.6),
            ("i2", "A", 0, 0, 10, 10, 0.5),
        ]
    )
    table, curves = froc(gt, pred, ["A"], ["i1", "i2", "i3", "i4"])
    row = table.set_index("label").loc["A"]
    # by score: FP .95 (fppi .25), TP .9 (1/3), FP .8 (.5), TP .7 (2/3), FP .6 (.75), TP .5 (1 at .75)
    expected = {0.125: 0.0, 0.25: 1 / 3, 0.5: 2 / 3, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    for rate, sens in expected.items():
        assert row[f"sens@{rate:g}"] == pytest.approx(sens), rate
    assert row["cpm"] == pytest.approx(5 / 7)
    fppi, sens = curves["A"]
    assert fppi[-1] == pytest.approx(0.75) and sens[-1] == pytest.approx(1.0)


def test_subgroup_ap_equals_ap_on_the_group_alone():
    gt, pred, ids = _random_case(seed=3, n=60)
    meta = pd.DataFrame(
        {
            "image_id": ids,
            "sex": ["M" if i % 2 else "F" for i in range(60)],
            "age": [25 + i for i in range(60)],
            "view": ["PA" if i % 3 else "AP" for i in range(60)],
        }
    )
    table = subgroups(gt, pred, ["A", "B"], meta, n_boot=50, min_boxes=1).set_index(
        ["attribute", "group"]
    )
    for attr, value, mask in (
        ("sex", "M", meta["sex"] == "M"),
        ("age_band", "<40", meta["age"] < 40),
        ("age_band", "40-60", meta["age"].between(40, 60)),
        ("view", "AP", meta["view"] == "AP"),
    ):
        keep = set(meta.loc[mask, "image_id"])
        g, p = gt[gt.image_id.isin(keep)], pred[pred.image_id.isin(keep)]
        direct = summarise(evaluate(g, p, ["A", "B"]))["map50"]
        row = table.loc[(attr, value)]
        assert row["map50"] == pytest.approx(direct), (attr, value)
        assert row["images"] == len(keep) and row["boxes"] == len(g)
        assert row["ci_low"] <= row["map50"] <= row["ci_high"]


def _splits(ids):
    return pd.DataFrame(
        {
            "image_id": ids,
            "source": "nih",
            "split": "train",
            "group": ids,
            "path": ids,
            "width": 1024,
            "height": 1024,
            "orig_width": 1024,
            "orig_height": 1024,
        }
    )


def test_image_listing_cardiomegaly_without_a_box_leaves_the_test_split_always_and_training_by_config():
    boxes = _gt([("a.png", "Mass", 1, 1, 50, 50), ("b.png", "Cardiomegaly", 1, 1, 50, 50)])
    labels = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "t.png"],
            "findings": [
                ["Mass", "Cardiomegaly"],
                ["Cardiomegaly"],
                ["No Finding"],
                ["Cardiomegaly"],
            ],
        }
    )
    splits = _splits(["a.png", "b.png", "c.png", "t.png"])
    splits.loc[splits["image_id"] == "t.png", "split"] = "test"
    empty = pd.DataFrame(columns=["image_id", "united", "x_min", "y_min", "x_max", "y_max"])
    cardio = TASKS["united_cardiomegaly"]
    # the default keeps a for training (a negative for its unboxed Cardiomegaly); t, a test image
    # listing Cardiomegaly without a box, leaves the test split whatever the profile says
    kept, _, excluded = task_inputs(splits, boxes, empty, cardio, nih_labels=labels)
    assert {"a.png", "b.png", "c.png"} <= set(kept["image_id"]) and "t.png" not in set(
        kept["image_id"]
    )
    assert excluded[["image_id", "finding", "split"]].values.tolist() == [
        ["t.png", "Cardiomegaly", "test"]
    ]
    # leaving them out of training too, by config
    images, _, excluded = task_inputs(
        splits, boxes, empty, cardio, nih_labels=labels, exclude_unboxed=True
    )
    assert set(images["image_id"]) == {"b.png", "c.png"}
    assert sorted(excluded["image_id"]) == ["a.png", "t.png"]
    # a's Mass is boxed: the Mass/Nodule task keeps it either way
    mass, _, _ = task_inputs(
        splits, boxes, empty, TASKS["united_mass_nodule"], nih_labels=labels, exclude_unboxed=True
    )
    assert "a.png" in set(mass["image_id"])


def test_findings_compare_in_the_tasks_own_vocabulary():
    boxes = _gt([("n.png", "Nodule", 1, 1, 20, 20)])
    labels = pd.DataFrame({"image_id": ["n.png"], "findings": [["Mass", "Nodule"]]})
    assert unboxed_findings(labels, boxes, TASKS["united_mass_nodule"]).empty, (
        "Mass/Nodule has its box"
    )
    assert unboxed_findings(labels, boxes, TASKS["nih_multi"])["finding"].tolist() == ["Mass"]


def test_real_box_list_unboxed_counts(real_data):
    from xray_assets.core.labels import read_nih_boxes, read_nih_labels

    boxes = read_nih_boxes(real_data / "nih" / "BBox_List_2017.csv")
    labels = read_nih_labels(real_data / "nih" / "Data_Entry_2017_subset_reconstructed.csv")
    ids = set(boxes["image_id"]) & set(labels["image_id"])
    assert len(ids) == 765
    assert unboxed_findings(labels, boxes, TASKS["nih_multi"], ids)["image_id"].nunique() == 494
    assert (
        unboxed_findings(labels, boxes, TASKS["united_cardiomegaly"], ids)["image_id"].nunique()
        == 39
    )
    assert (
        unboxed_findings(labels, boxes, TASKS["united_mass_nodule"], ids)["image_id"].nunique()
        == 80
    )
