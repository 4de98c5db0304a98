import numpy as np
import pandas as pd
import pytest

from xray_assets.core.consensus import majority_radiologist
from xray_assets.core.metrics import average_precision, evaluate
from xray_assets.core.sampling import sample_background
from xray_assets.core.splits import assign_splits


def _ann(rows):
    return pd.DataFrame(
        rows,
        columns=["image_id", "label", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"],
    )


def test_majority_radiologist_rule():
    ann = _ann(
        [
            ("a", "Nodule/Mass", 8, "R9", 0, 0, 10, 10),
            ("a", "Nodule/Mass", 8, "R9", 20, 20, 30, 30),
            ("a", "Nodule/Mass", 8, "R8", 0, 0, 11, 11),
            ("a", "Cardiomegaly", 3, "R8", 5, 5, 50, 50),  # tie R8/R10 -> "R10" < "R8"
            ("a", "Cardiomegaly", 3, "R10", 6, 6, 51, 51),
            ("a", "Aortic enlargement", 0, "R8", 1, 1, 2, 2),  # outside the six
            ("b", "No finding", 14, "R1", np.nan, np.nan, np.nan, np.nan),
        ]
    )
    kept = majority_radiologist(ann)
    assert list(kept.columns) == list(ann.columns)
    got = sorted(zip(kept.label, kept.rad_id))
    assert got == [("Cardiomegaly", "R10"), ("Nodule/Mass", "R9"), ("Nodule/Mass", "R9")]


def test_real_table_majority(real_data):
    from xray_assets.core.labels import read_vinbigdata_annotations

    ann = read_vinbigdata_annotations(real_data / "vinbigdata" / "train_reconstructed.csv")
    kept = majority_radiologist(ann)
    per = kept.groupby(["image_id", "class_id"])["rad_id"].nunique()
    assert (per == 1).all() and set(kept.class_id) == {1, 3, 6, 8, 10, 12}


def test_splits_are_stable_grouped_and_proportional():
    ids = pd.Series([f"p{i}" for i in range(3000)])
    s = assign_splits(ids, seed=0)
    frac = s.value_counts(normalize=True)
    assert (
        abs(frac["train"] - 0.8) < 0.02
        and abs(frac["val"] - 0.1) < 0.02
        and abs(frac["test"] - 0.1) < 0.02
    )
    more = assign_splits(
        pd.concat([ids, pd.Series(["new1", "new2", "p5"])], ignore_index=True), seed=0
    )
    assert (more.iloc[:3000].to_numpy() == s.to_numpy()).all()
    assert more.iloc[-1] == s.iloc[5]
    assert not (assign_splits(ids, seed=1).to_numpy() == s.to_numpy()).all()
    with pytest.raises(ValueError):
        assign_splits(ids, fractions=(0.5, 0.2, 0.2))


def test_background_sample_grows_without_dropping_picks():
    cand = pd.DataFrame({"image_id": [f"{i:08d}_000.png" for i in range(500)]})
    a = sample_background(cand, 50, seed=0)
    b = sample_background(cand, 80, seed=0)
    assert len(a) == 50 and set(a.image_id) <= set(b.image_id)


def _frame(rows, score=False):
    cols = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"] + (["score"] if score else [])
    return pd.DataFrame(rows, columns=cols)


def test_average_precision_known_answers():
    gt = _frame([("i1", "A", 0, 0, 10, 10), ("i1", "A", 20, 20, 30, 30), ("i2", "B", 0, 0, 10, 10)])
    perfect = _frame(
        [
            ("i1", "A", 0, 0, 10, 10, 0.9),
            ("i1", "A", 20, 20, 30, 30, 0.8),
            ("i2", "B", 0, 0, 10, 10, 0.7),
        ],
        score=True,
    )
    assert average_precision(gt, perfect) == {"A": 1.0, "B": 1.0}
    half = _frame([("i1", "A", 0, 0, 10, 10, 0.9), ("i2", "B", 50, 50, 60, 60, 0.7)], score=True)
    ap = average_precision(gt, half)
    assert ap["B"] == 0.0 and abs(ap["A"] - 51 / 101) < 1e-9
    table = evaluate(gt, half, ["A", "B"])
    assert table.set_index("label").loc["A", "recall"] == 0.5


def test_average_precision_agrees_with_pycocotools():
    pytest.importorskip("pycocotools")

    rng = np.random.default_rng(0)
    gt_rows, pred_rows = [], []
    for i in range(30):
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(10, 60, 2)
            lab = str(rng.choice(["A", "B"]))
            gt_rows.append((f"i{i}", lab, x, y, x + w, y + h))
            kind = rng.integers(5)
            if kind == 0:
                pred_rows.append((f"i{i}", lab, x, y, x + w, y + h, rng.uniform(0.5, 1)))  # perfect
            elif kind == 1:
                pred_rows.append(
                    (f"i{i}", lab, x + w * 0.2, y, x + w * 1.2, y + h, rng.uniform(0, 1))
                )  # shifted
            elif kind == 2:
                pred_rows += [
                    (f"i{i}", lab, x, y, x + w, y + h, 0.6),
                    (f"i{i}", lab, x + 1, y, x + w, y + h, 0.55),
                ]
            elif kind == 3:
                pred_rows.append(
                    (f"i{i}", "A" if lab == "B" else "B", x, y, x + w, y + h, 0.7)
                )  # wrong class
            # kind 4: missed
    gt, pred = _frame(gt_rows), _frame(pred_rows, score=True)
    ours = average_precision(gt, pred, iou_thr=0.5)
    from helpers import coco_ap50

    for name, theirs in coco_ap50(gt, pred, ["A", "B"]).items():
        assert abs(ours[name] - theirs) < 0.01, (name, ours[name], theirs)


def test_weighted_boxes_fusion_fuses_readers():
    from xray_assets.core.consensus import reader_agreement, weighted_boxes_fusion

    ann = _ann(
        [
            ("a", "Cardiomegaly", 3, "R1", 100, 100, 200, 200),
            ("a", "Cardiomegaly", 3, "R2", 110, 100, 210, 200),
            ("a", "Nodule/Mass", 8, "R1", 10, 10, 20, 20),
            ("a", "Aortic enlargement", 0, "R1", 1, 1, 5, 5),
        ]
    )
    sizes = pd.DataFrame({"image_id": ["a"], "width": [1000], "height": [800]})
    fused = weighted_boxes_fusion(ann, sizes, iou_thr=0.4)
    assert list(fused.columns) == list(ann.columns)
    card = fused[fused.class_id == 3]
    assert (
        len(card) == 1
        and abs(card.x_min.item() - 105) < 1e-3
        and abs(card.x_max.item() - 205) < 1e-3
    )
    assert len(fused[fused.class_id == 8]) == 1 and not (fused.class_id == 0).any()
    with pytest.raises(KeyError):
        weighted_boxes_fusion(ann.assign(image_id="b"), sizes)
    agree = reader_agreement(ann).set_index("class")
    assert abs(agree.loc["Cardiomegaly", "mean_pairwise_iou"] - 90 * 100 / (110 * 100)) < 1e-9


def test_bootstrap_interval_and_confusion_matrix():
    from xray_assets.core.metrics import bootstrap_ci, confusion_matrix

    gt = _frame([(f"i{i}", "A" if i % 2 else "B", 0, 0, 10, 10) for i in range(20)])
    pred = _frame(
        [(f"i{i}", "A" if i % 2 else "B", 0, 0, 10, 10, 0.9) for i in range(10)]
        + [("i15", "B", 0, 0, 10, 10, 0.4)],
        score=True,
    )  # i10..i19 missed, i15 called B
    ci = bootstrap_ci(gt, pred, ["A", "B"], gt.image_id, n_boot=100, seed=1).set_index("label")
    lo, hi = ci.loc["(mean AP50)", ["ci_low", "ci_high"]]
    assert 0 < lo < 0.5 < hi < 1
    cm = confusion_matrix(gt, pred, ["A", "B"])
    assert cm.loc["A", "A"] == 5 and cm.loc["B", "B"] == 5 and cm.loc["A", "B"] == 1
    assert cm.loc["A", "background"] == 4 and cm.loc["B", "background"] == 5


def _agreement_per_group(annotations: pd.DataFrame) -> pd.DataFrame:
    """The reference: greedy best-IoU matching one (image, class) group and one reader pair at a
    time, on the IoU matrix (the implementation before it was vectorised)."""
    from itertools import combinations

    from xray_assets.core.classes import UNITED_CLASSES
    from xray_assets.core.consensus import COORDS, to_united
    from xray_assets.core.metrics import box_iou

    ious = {c: [] for c in UNITED_CLASSES}
    for (_, united), g in to_united(annotations).groupby(["image_id", "united"], sort=False):
        readers = {r: b[COORDS].to_numpy(float) for r, b in g.groupby("rad_id")}
        for a, b in combinations(sorted(readers), 2):
            m = box_iou(readers[a], readers[b])
            while m.size and m.max() > 0:
                i, j = np.unravel_index(m.argmax(), m.shape)
                ious[united].append(float(m[i, j]))
                m[i, :] = 0
                m[:, j] = 0
    return pd.DataFrame(
        {
            "class": list(UNITED_CLASSES),
            "mean_pairwise_iou": [float(np.mean(v)) if v else np.nan for v in ious.values()],
            "matched_pairs": [len(v) for v in ious.values()],
        }
    )


def test_reader_agreement_equals_the_per_group_greedy_matching(real_data):
    """Catches: the vectorised matching taking a box twice, breaking a tie another way than the
    matrix's argmax, pairing a reader with itself or across images or classes."""
    from xray_assets.core.consensus import reader_agreement
    from xray_assets.core.labels import read_vinbigdata_annotations

    ties = _ann(
        [  # R1's two boxes equally overlap R2's one box; R3 matches nothing; another image
            ("a", "Nodule/Mass", 8, "R1", 0, 0, 10, 10),
            ("a", "Nodule/Mass", 8, "R1", 10, 0, 20, 10),
            ("a", "Nodule/Mass", 8, "R2", 5, 0, 15, 10),
            ("a", "Nodule/Mass", 8, "R2", 0, 0, 10, 10),
            ("a", "Nodule/Mass", 8, "R3", 50, 50, 60, 60),
            ("b", "Nodule/Mass", 8, "R1", 0, 0, 10, 10),
            ("b", "Cardiomegaly", 3, "R2", 0, 0, 10, 10),
        ]
    )
    got = reader_agreement(ties)
    pd.testing.assert_frame_equal(got, _agreement_per_group(ties))
    assert got.set_index("class").loc["Mass/Nodule", "matched_pairs"] == 2
    ann = read_vinbigdata_annotations(real_data / "vinbigdata" / "train_reconstructed.csv")
    some = ann[ann["image_id"].isin(ann["image_id"].drop_duplicates().iloc[:1500])]
    pd.testing.assert_frame_equal(reader_agreement(some), _agreement_per_group(some), rtol=1e-12)
