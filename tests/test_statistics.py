"""How uncertain the figures are, on hand-made cases: the patient-level bootstrap, one estimand per
interval, small counts said plainly, macro and micro averages, LUNA16's FROC rule and the gate's
null rate (each against a direct computation)."""

import numpy as np
import pandas as pd
import pytest

from xray_assets.core import champion, study
from xray_assets.core import evaluation as core_eval
from xray_assets.core.detection import DetectionRule
from xray_assets.core.metrics import (
    Resamples,
    average_precision,
    bootstrap_ci,
    evaluate,
    froc,
    paired_bootstrap,
    summarise,
)
from xray_assets.records import ModelRecord

COLS = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]


def _gt(rows):
    return pd.DataFrame(rows, columns=COLS)


def _pred(rows):
    return pd.DataFrame(rows, columns=[*COLS, "score"])


def _model(rng, gt, ids, found=0.7, alarms=1.5):
    """Detections of a model that finds each box with probability `found` (jittered, random score) and
    raises false alarms at lower scores: two calls with one `rng` are two equally good models."""
    rows = []
    for r in gt.itertuples():
        if rng.random() < found:
            d = rng.normal(0, 3, 4)
            rows.append(
                (
                    r.image_id,
                    r.label,
                    r.x_min + d[0],
                    r.y_min + d[1],
                    r.x_max + d[2],
                    r.y_max + d[3],
                    rng.uniform(0.2, 1),
                )
            )
    for image_id in ids:
        for _ in range(rng.poisson(alarms)):
            x, y = rng.uniform(0, 200, 2)
            rows.append(
                (image_id, str(rng.choice(["A", "B"])), x, y, x + 20, y + 20, rng.uniform(0, 0.7))
            )
    return _pred(rows)


def _patients_case(seed=0, n_patients=25):
    """Test images of patients with one to three images each; boxes of A (common) and B (rarer)."""
    rng = np.random.default_rng(seed)
    ids, groups, rows = [], {}, []
    for p in range(n_patients):
        for k in range(rng.integers(1, 4)):
            image_id = f"p{p}_{k}"
            ids.append(image_id)
            groups[image_id] = f"nih:{p}"
            for _ in range(rng.integers(0, 3)):
                x, y = rng.uniform(0, 200, 2)
                w, h = rng.uniform(15, 60, 2)
                rows.append((image_id, "A" if rng.random() < 0.75 else "B", x, y, x + w, y + h))
    gt = _gt(rows)
    return gt, ids, groups, rng


def test_a_patients_images_move_together_in_every_resample():
    ids = ["a1", "a2", "b1", "c1", "c2", "c3", "vbd1"]
    groups = {
        "a1": "nih:1",
        "a2": "nih:1",
        "b1": "nih:2",
        "c1": "nih:3",
        "c2": "nih:3",
        "c3": "nih:3",
    }
    r = Resamples(ids, groups, n_boot=500, seed=4)
    assert r.n_patients == 4, "three NIH patients and a VinBigData image that is its own patient"
    w = r.weights
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, 0] == 0).any() and (w[:, 0] >= 2).any(), (
        "the pair is left out in some resamples, doubled in others"
    )
    # each resample draws as many patients as there are, keeping all of a drawn patient's images
    per_patient = np.stack([w[:, 0], w[:, 2], w[:, 3], w[:, 6]], axis=1)
    assert (per_patient.sum(axis=1) == 4).all()
    same = Resamples(ids, groups, n_boot=500, seed=4)
    assert (same.weights == w).all(), "seeded: the same draws again"
    # without groups every image is its own patient (the old image-level bootstrap)
    assert Resamples(ids, None, n_boot=10, seed=0).n_patients == len(ids)


def _draws(gt, ids, groups, labels, n_boot, seed) -> Resamples:
    """The draws the evaluation makes: patients, redrawn until each class with test boxes has some."""
    counts = (
        gt.groupby(["image_id", "label"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=ids, fill_value=0)
    )
    present = [x for x in labels if x in counts.columns and counts[x].sum()]
    return Resamples(ids, groups, n_boot, seed, require=counts[present].to_numpy())


def _direct_mean_aps(gt, pred, resamples: Resamples, labels) -> np.ndarray:
    """Per resample, the mean AP50 over the fixed class set computed the long way: the drawn patients'
    images copied into one frame (a fresh id per copy), AP by `average_precision`."""
    fixed = [x for x in labels if (gt["label"] == x).any()]
    members = {
        c: [i for i, k in zip(resamples.ids, resamples.cluster_of) if k == c]
        for c in range(resamples.n_patients)
    }
    out = []
    for draw in resamples.draws:
        g_parts, p_parts = [], []
        for copy, c in enumerate(draw):
            for image_id in members[c]:
                g_parts.append(gt[gt.image_id == image_id].assign(image_id=f"{image_id}#{copy}"))
                p_parts.append(
                    pred[pred.image_id == image_id].assign(image_id=f"{image_id}#{copy}")
                )
        aps = average_precision(pd.concat(g_parts), pd.concat(p_parts))
        assert set(fixed) <= set(aps), "every resample holds boxes of each class of the fixed set"
        out.append(np.mean([aps[x] for x in fixed]))
    return np.array(out)


def test_paired_interval_equals_a_direct_cluster_bootstrap():
    gt, ids, groups, rng = _patients_case(seed=1, n_patients=15)
    a, b = _model(rng, gt, ids), _model(rng, gt, ids, found=0.6)
    r = paired_bootstrap(gt, a, b, ["A", "B"], ids, n_boot=40, seed=3, groups=groups)
    draws = _draws(gt, ids, groups, ["A", "B"], 40, 3)
    direct = _direct_mean_aps(gt, a, draws, ["A", "B"]) - _direct_mean_aps(gt, b, draws, ["A", "B"])
    np.testing.assert_allclose(r["diffs"], direct, rtol=0, atol=1e-12)
    lo, hi = np.quantile(direct, [0.025, 0.975])
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert (
        r["patients"] == 15 and r["images"] == len(ids) and r["boxes"] == len(gt) and r["seed"] == 3
    )
    # the image-level bootstrap of the same pairs draws differently
    flat = paired_bootstrap(gt, a, b, ["A", "B"], ids, n_boot=40, seed=3)
    assert flat["patients"] == len(ids) and not np.allclose(flat["diffs"], r["diffs"])


def test_mean_ap_interval_is_over_the_fixed_class_set_in_every_resample():
    gt, ids, groups, rng = _patients_case(seed=2, n_patients=15)
    gt = pd.concat(
        [gt[gt.label == "A"], gt[gt.label == "B"].head(2)]
    )  # B: two boxes, absent from many draws
    pred = _model(rng, gt, ids)
    table = bootstrap_ci(
        gt, pred, ["A", "B"], ids, n_boot=40, seed=5, groups=groups, min_boxes=1
    ).set_index("label")
    draws = _draws(gt, ids, groups, ["A", "B"], 40, 5)
    direct = _direct_mean_aps(gt, pred, draws, ["A", "B"])
    lo, hi = np.quantile(direct, [0.025, 0.975])
    assert table.loc["(mean AP50)", ["ci_low", "ci_high"]].tolist() == pytest.approx(
        [lo, hi], abs=1e-12
    )
    assert table.loc["B", "resamples"] == 40 < table.loc["B", "draws"], (
        "draws without B's boxes were drawn again: every resample averages A and B"
    )
    b_rows = gt.index[gt.label == "B"]
    assert all(
        w
        @ gt.loc[b_rows, "image_id"]
        .map({i: k for k, i in enumerate(draws.ids)})
        .pipe(lambda s: np.bincount(s, minlength=len(draws.ids)))
        > 0
        for w in draws.weights
    )
    # tiny per-class counts: the mean over 2 classes needs 2 x the minimum
    few = bootstrap_ci(
        gt, pred, ["A", "B"], ids, n_boot=40, seed=5, groups=groups, min_boxes=len(gt)
    ).set_index("label")
    assert (
        few.loc["(mean AP50)", "note"]
        == f"too few test boxes ({len(gt)} for 2 classes; {2 * len(gt)} needed)"
    )


def test_a_class_with_one_test_box_gets_too_few_test_boxes_and_no_interval():
    gt, ids, groups, rng = _patients_case(seed=3)
    gt = pd.concat([gt[gt.label == "A"], gt[gt.label == "B"].head(1)])
    pred = _model(rng, gt, ids)
    table = bootstrap_ci(gt, pred, ["A", "B"], ids, n_boot=50, seed=0, groups=groups).set_index(
        "label"
    )
    assert table.loc["B", "note"] == "too few test boxes (1)"
    assert np.isnan(table.loc["B", "ci_low"]) and np.isnan(table.loc["B", "ci_high"])
    assert table.loc["A", "note"] == "" and table.loc["A", "ci_low"] <= table.loc["A", "ci_high"]
    images = pd.DataFrame({"image_id": ids, "group": [groups[i] for i in ids]})
    ev = core_eval.evaluate_task(
        gt, pred, images, ["A", "B"], DetectionRule(conf=0.5, iou=0.6), n_boot=50
    )
    text = core_eval.report_markdown(
        "t", "smoke", ev, DetectionRule(conf=0.5, iou=0.6), ModelRecord("t", model_version="1")
    )
    assert (
        "too few test boxes (1)" in text
        and ev.table.set_index("label").loc["B", "ci_note"] == "too few test boxes (1)"
    )
    # a comparison resting on that one box reads "cannot tell", not "does not show a difference"
    result = study.TaskResult(
        name="united_cardiomegaly",
        summary={},
        model={},
        rule={},
        gt=gt[gt.label == "B"].assign(label="Cardiomegaly"),
        detections=pred.assign(label="Cardiomegaly"),
        images=images.assign(source="nih"),
    )
    multi = study.TaskResult(
        name="united_multi",
        summary={},
        model={},
        rule={},
        gt=result.gt,
        detections=result.detections,
        images=result.images,
    )
    rows, _ = study.fair_comparisons(
        {"united_cardiomegaly": result, "united_multi": multi}, n_boot=50
    )
    row = rows.iloc[0]
    assert row["reading"] == "cannot tell: too few test boxes (1)" and np.isnan(row["ci_low"]), (
        row.to_dict()
    )


def test_evaluation_intervals_are_patient_level():
    gt, ids, groups, rng = _patients_case(seed=6)
    pred = _model(rng, gt, ids)
    images = pd.DataFrame({"image_id": ids, "group": [groups[i] for i in ids]})
    ev = core_eval.evaluate_task(
        gt, pred, images, ["A", "B"], DetectionRule(conf=0.4, iou=0.6), n_boot=100, seed=2
    )
    direct = bootstrap_ci(
        gt, pred, ["A", "B"], ids, n_boot=100, seed=2, groups=groups, conf=0.4
    ).set_index("label")
    assert ev.summary["map50_ci_low"] == direct.loc["(mean AP50)", "ci_low"]
    assert ev.summary["recall_macro_ci_high"] == direct.loc["(mean recall)", "ci_high"]
    assert ev.summary["test_patients"] == 25 and ev.summary["resamples"] == 100


def test_micro_and_macro_operating_points_equal_direct_computations():
    gt = _gt([("i1", "A", 0, 0, 10, 10), ("i2", "A", 0, 0, 10, 10), ("i3", "B", 0, 0, 10, 10)])
    pred = _pred(
        [
            ("i1", "A", 0, 0, 10, 10, 0.9),  # A: 1 TP of 2 boxes
            ("i3", "B", 0, 0, 10, 10, 0.9),
            ("i1", "B", 50, 50, 60, 60, 0.8),  # B: 1 TP, 3 FP
            ("i2", "B", 50, 50, 60, 60, 0.7),
            ("i3", "B", 50, 50, 60, 60, 0.6),
            ("i2", "C", 0, 0, 10, 10, 0.9),  # C: no test boxes, 1 FP
            ("i2", "A", 30, 30, 40, 40, 0.1),
        ]
    )  # below conf
    s = summarise(evaluate(gt, pred, ["A", "B", "C"], conf=0.5))
    macro_p, macro_r = (1.0 + 0.25) / 2, (0.5 + 1.0) / 2
    assert s["precision_macro"] == pytest.approx(macro_p) and s["recall_macro"] == pytest.approx(
        macro_r
    )
    f1_a, f1_b = 2 * 1.0 * 0.5 / 1.5, 2 * 0.25 * 1.0 / 1.25
    assert s["f1_macro"] == pytest.approx((f1_a + f1_b) / 2), "the mean of per-class F1"
    assert s["f1_of_macro_precision_recall"] == pytest.approx(
        2 * macro_p * macro_r / (macro_p + macro_r)
    )
    micro_p, micro_r = 2 / 6, 2 / 3  # 2 TP of 6 detections above conf (C's counts), 2 of 3 boxes
    assert s["precision_micro"] == pytest.approx(micro_p) and s["recall_micro"] == pytest.approx(
        micro_r
    )
    assert s["f1_micro"] == pytest.approx(2 * micro_p * micro_r / (micro_p + micro_r))
    assert s["precision_macro"] != pytest.approx(s["precision_micro"])


def test_luna16_cpm_equals_a_hand_computation_with_a_duplicate_and_a_centre_only_hit():
    gt = _gt([("i1", "A", 0, 0, 10, 10), ("i1", "A", 20, 20, 30, 30), ("i2", "A", 0, 0, 10, 10)])
    pred = _pred(
        [
            ("i3", "A", 0, 0, 10, 10, 0.95),  # false positive on an image without boxes
            ("i1", "A", 0, 0, 10, 10, 0.9),  # hits box 1
            ("i1", "A", 2, 2, 12, 12, 0.8),  # a duplicate on box 1 (IoU 0.47): LUNA16 ignores it
            ("i1", "A", 15, 15, 35, 35, 0.7),  # centre in box 2 at IoU 0.25: a hit for LUNA16 only
            ("i2", "A", 40, 40, 50, 50, 0.6),
        ]
    )  # false positive; box 3 is missed
    ids = ["i1", "i2", "i3", "i4"]
    luna = froc(gt, pred, ["A"], ids, rule="luna16")[0].iloc[0]
    # LUNA16 by score: FP .95 (fppi 1/4), hit .9 (1/3), hit .7 (2/3), FP .6 (fppi 1/2)
    expected = {0.125: 0.0, 0.25: 2 / 3, 0.5: 2 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    for rate, sens in expected.items():
        assert luna[f"sens@{rate:g}"] == pytest.approx(sens), rate
    assert luna["cpm"] == pytest.approx(4 / 7) and luna["hit_rule"] == "luna16"
    # the IoU rule: the duplicate and the centre-only detection are false positives
    iou = froc(gt, pred, ["A"], ids, rule="iou")[0].iloc[0]
    assert iou["cpm"] == pytest.approx(2 / 7) and iou["hit_rule"] == "iou"
    with pytest.raises(ValueError, match="hit rule"):
        froc(gt, pred, ["A"], ids, rule="centre")


def test_gate_null_rate_on_equally_good_models_is_within_the_stated_rate():
    """Many test splits, each with two equally good models (the same detector, independent noise):
    the gate decides by chance (keeps out an equal model where the split resolves the margin, lets
    one replace the champion where it does not) at about the stated rate or less; the old point
    rule (d >= -margin) flips a coin on the same splits."""
    rate, margin, chance, old_rule_out, reported = 0.2, 0.01, 0, 0, []
    n = 120
    for s in range(n):
        gt, ids, groups, rng = _patients_case(seed=100 + s, n_patients=20)
        x, y = _model(rng, gt, ids), _model(rng, gt, ids)
        paired = paired_bootstrap(gt, x, y, ["A", "B"], ids, n_boot=200, seed=s, groups=groups)
        g = champion.gate_record(paired, margin, "2", "1", rate=rate, min_boxes=10)
        chance += (
            (g["decision"] == "challenger")
            if g["split_resolves_margin"]
            else (g["decision"] == "champion")
        )
        old_rule_out += paired["diff"] < -margin
        reported.append(g["null_rate"])
    assert max(reported) <= rate, "the rate the gate records never exceeds the stated one"
    se = np.sqrt(rate * (1 - rate) / n)
    assert chance / n <= rate + 2 * se, (chance, n)
    assert old_rule_out / n > 0.3, "the point rule keeps out an equal model far more often"


def test_gate_on_identical_models_and_small_splits():
    gt, ids, groups, rng = _patients_case(seed=7)
    x = _model(rng, gt, ids)
    same = paired_bootstrap(gt, x, x, ["A", "B"], ids, n_boot=100, seed=0, groups=groups)
    g = champion.gate_record(same, 0.01, "2", "1")
    assert g["decision"] == "champion" and g["null_rate"] == 0 and g["split_resolves_margin"]
    few = paired_bootstrap(gt.head(4), x, x, ["A", "B"], ids, n_boot=100, seed=0, groups=groups)
    g = champion.gate_record(few, 0.01, "2", "1", min_boxes=10)
    assert g["decision"] == "challenger" and g["reason"].startswith(
        "cannot tell: too few test boxes (4"
    )
    assert g["null_probability_of_decision"] == 1.0, "the champion stays by rule, not by chance"
    # a clearly better model replaces the champion even where the split cannot resolve the margin
    worse = _model(rng, gt, ids, found=0.2, alarms=4)
    clear = paired_bootstrap(gt, x, worse, ["A", "B"], ids, n_boot=200, seed=0, groups=groups)
    g = champion.gate_record(clear, 0.01, "2", "1")
    assert g["decision"] == "champion" and g["p_value"] < 0.05, g["reason"]
    back = champion.gate_record(
        {
            **clear,
            "diff": -clear["diff"],
            "diffs": -clear["diffs"],
            "a": clear["b"],
            "b": clear["a"],
        },
        0.01,
        "2",
        "1",
    )
    assert back["decision"] == "challenger", back["reason"]
    for key in ("rule", "stated_null_rate", "null_rate", "test_boxes", "resamples", "seed"):
        assert key in g, key


def test_macro_f1_is_scikit_learns_on_the_matched_boxes():
    """Each class's boxes and detections above conf as scikit-learn sees a detector: a matched pair
    (c, c), a false positive (background, c), a missed box (c, background); macro over the classes
    with test boxes. Two classes of unequal size, where the F1 of the macro means differs."""
    from sklearn.metrics import f1_score as sk_f1

    gt = _gt(
        [(f"i{k}", "A", 0, 0, 10, 10) for k in range(6)]
        + [("i0", "B", 50, 50, 60, 60), ("i3", "B", 50, 50, 60, 60)]
    )
    pred = _pred(
        [(f"i{k}", "A", 0, 0, 10, 10, 0.9) for k in range(5)]  # A: 5 of 6 found
        + [("i1", "B", 50, 50, 60, 60, 0.8), ("i2", "B", 50, 50, 60, 60, 0.8)]  # B: 2 FP
        + [("i3", "B", 50, 50, 60, 60, 0.8)]  # B: 1 of 2 found
        + [("i0", "A", 80, 80, 90, 90, 0.7)]  # A: 1 FP
    )
    s = summarise(evaluate(gt, pred, ["A", "B"], conf=0.5))
    y_true = ["A"] * 5 + ["bg"] + ["A"] + ["B"] + ["B"] + ["bg"] * 2
    y_pred = ["A"] * 5 + ["A"] + ["bg"] + ["bg"] + ["B"] + ["B"] * 2
    want = sk_f1(y_true, y_pred, labels=["A", "B"], average="macro", zero_division=0)
    assert s["f1_macro"] == pytest.approx(want)
    assert s["f1_of_macro_precision_recall"] != pytest.approx(want)
    assert s["f1_micro"] == pytest.approx(
        sk_f1(y_true, y_pred, labels=["A", "B"], average="micro", zero_division=0)
    )
